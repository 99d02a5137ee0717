"""``--precision fp32|int8``: choose a model's float or int8 variant by name.

A quantized model is its own model (its own manifest, ``.onnx`` and stored
vectors): ``aisfx-int8`` is aiSFX quantized by :mod:`emberd.models.quantize`.
Its manifest says which float model it quantizes with ``"int8_of": "aisfx"``
(user models may declare the same). ``--precision`` maps the model a command
was given to the variant of that precision, so ``emberd index --precision
int8`` indexes with ``aisfx-int8``, and ``query``/``run --precision int8``
use that library's ``aisfx-int8`` vectors.

The default is fp32: int8 costs 3.4x less CPU per full window on this
repository's 2-core box, its whole-pipeline identification figures
(``bench/identify.py``) stay within 0.5 points, but its embeddings alone lost
1.2 points of top-1 on held-out kits, outside the 0.5-point bound (README,
"Silence skipping and int8").
"""

from __future__ import annotations

from typing import Any

from emberd.errors import EmberdError

PRECISIONS = ("fp32", "int8")
DEFAULT_PRECISION = "fp32"  # int8 embeddings-alone top-1 -1.2 points on held-out kits (README)
INT8_KEY = "int8_of"  # manifest key of an int8 model: the name of the float model it quantizes


def int8_of(manifest: Any) -> str | None:
    """The float model that ``manifest`` quantizes, or None for a float model."""
    name = manifest.extra.get(INT8_KEY)
    if isinstance(name, str):
        return name
    skip = manifest.extra.get("silence_skip")  # older int8 manifests said it only here
    if isinstance(skip, dict) and isinstance(skip.get(INT8_KEY), str):
        return str(skip[INT8_KEY])
    return None


def model_for(model: str | None, precision: str | None, *, default: str = "aisfx") -> str | None:
    """The name of ``model``'s variant in ``precision``.

    Parameters
    ----------
    model : str or None
        The model a command was given; None: ``default`` (when a precision is asked for)
        or None (left to the command's own default and fallback).
    precision : {"fp32", "int8"} or None
        None: ``model`` unchanged.
    default : str
        The model ``None`` stands for.

    Returns
    -------
    str or None

    Raises
    ------
    EmberdError
        Unknown precision, or a model without a variant of that precision (one line
        naming the models that have one).
    """
    if precision is None:
        return model
    if precision not in PRECISIONS:
        raise EmberdError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "fp32" and model is None:
        return None  # the default model, with its usual fallback when it is not available
    from emberd.models.registry import list_models

    name = model if model is not None else default
    known = {m.name: m for m in list_models()}
    if name not in known:
        return name  # resolving it later names the problem (unknown, not fetched, ...)
    base = int8_of(known[name])
    if precision == "fp32":
        return base if base is not None else name
    if base is not None:
        return name  # already int8
    variants = [m.name for m in known.values() if int8_of(m) == name]
    if variants:
        return variants[0]
    having = sorted({b for m in known.values() if (b := int8_of(m)) is not None})
    raise EmberdError(
        f"model {name} has no int8 variant (--precision int8 works with: "
        f"{', '.join(having) or 'none installed'})"
    )
