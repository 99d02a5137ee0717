"""From audio to embeddings: cut mel frames into windows, run the encoder, pool.

Windowing follows aiSFX's ``preprocessing.blocking``: windows of
``window_frames`` frames every ``hop_frames`` frames, starting at frame 0;
a sound shorter than one window is zero-padded to one window (0 is silence in
the ``aisfx`` preset's scaled log domain). ``tail="drop"`` (aiSFX's
``drop_partial_block=True``) ignores a last partial window; ``tail="pad"``
keeps it, zero-padded.

Pooling over the windows of one file:

* ``mean`` - average embedding;
* ``max`` - element-wise maximum;
* ``energy`` - average weighted by each window's signal energy (mean square of
  the samples it covers), so silent tails and pre-roll count little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emberd.errors import EmberdError

POOLS = ("mean", "max", "energy")
TAILS = ("drop", "pad")
DEFAULT_BATCH = 32  # windows per encoder call when indexing


def window_starts(
    n_frames: int, *, window_frames: int, hop_frames: int, tail: str = "drop"
) -> np.ndarray:
    """First frame of each window.

    Parameters
    ----------
    n_frames : int
        Frames in the signal.
    window_frames, hop_frames : int
        Window length and hop in frames.
    tail : {"drop", "pad"}
        What to do with a last partial window.

    Returns
    -------
    numpy.ndarray
        int64 start frames; always at least one (a short sound gives ``[0]``).
    """
    if tail not in TAILS:
        raise EmberdError(f"tail={tail!r}: choose from {', '.join(TAILS)}")
    if window_frames < 1 or hop_frames < 1:
        raise EmberdError("window_frames and hop_frames must be positive")
    if n_frames <= window_frames:
        return np.zeros(1, dtype=np.int64)
    full = (n_frames - window_frames) // hop_frames + 1
    count = full
    if tail == "pad" and (n_frames - window_frames) % hop_frames:
        count += 1
    return np.arange(count, dtype=np.int64) * hop_frames


def frame_windows(
    mel: np.ndarray, *, window_frames: int, hop_frames: int, tail: str = "drop"
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``[frames, n_mels]`` matrix into windows.

    Returns
    -------
    windows : numpy.ndarray
        float32 ``[W, window_frames, n_mels]`` (zero-padded where needed).
    starts : numpy.ndarray
        int64 ``[W]`` first frame of each window.
    """
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2:
        raise EmberdError(f"mel frames shape {mel.shape}: expected [frames, n_mels]")
    starts = window_starts(
        mel.shape[0], window_frames=window_frames, hop_frames=hop_frames, tail=tail
    )
    need = int(starts[-1]) + window_frames
    if need > mel.shape[0]:
        mel = np.concatenate([mel, np.zeros((need - mel.shape[0], mel.shape[1]), np.float32)])
    view = np.lib.stride_tricks.sliding_window_view(mel, window_frames, axis=0)[starts]
    return np.ascontiguousarray(view.transpose(0, 2, 1)), starts


def embed_windows(
    windows: np.ndarray, encoder: Any, *, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """Run ``encoder.embed`` over windows in batches; returns float32 ``[W, dim]``."""
    out = np.empty((windows.shape[0], encoder.dim), dtype=np.float32)
    for i in range(0, windows.shape[0], batch_size):
        out[i : i + batch_size] = encoder.embed(windows[i : i + batch_size])
    return out


def embed_signal(
    y: np.ndarray,
    encoder: Any,
    *,
    hop_frames: int | None = None,
    tail: str = "drop",
    batch_size: int = DEFAULT_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-window embeddings of a mono signal at the model's sample rate.

    Parameters
    ----------
    y : numpy.ndarray
        Mono float samples at ``encoder.manifest.frontend().sr``.
    encoder : Encoder
        From :mod:`emberd.models.runtime`.
    hop_frames : int, optional
        Window hop (default: the manifest's).
    tail : {"drop", "pad"}
        Last partial window policy.
    batch_size : int
        Windows per encoder call.

    Returns
    -------
    embeddings : numpy.ndarray
        float32 ``[W, dim]``.
    starts_s : numpy.ndarray
        float64 ``[W]`` window start times in seconds.
    """
    from emberd.dsp.frontend import melspectrogram

    manifest = encoder.manifest
    config = manifest.frontend()
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise EmberdError(f"audio shape {y.shape}: expected non-empty mono samples")
    mel = melspectrogram(y, config)
    windows, starts = frame_windows(
        mel,
        window_frames=manifest.window_frames,
        hop_frames=hop_frames or manifest.hop_frames,
        tail=tail,
    )
    return embed_windows(windows, encoder, batch_size=batch_size), starts * config.hop_seconds


def window_energy(y: np.ndarray, starts_s: np.ndarray, *, sr: int, window_s: float) -> np.ndarray:
    """Mean square of the samples each window covers (0 for a window past the end)."""
    y = np.asarray(y, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(y * y)])
    lo = np.clip(np.round(starts_s * sr).astype(np.int64), 0, y.size)
    hi = np.clip(lo + round(window_s * sr), 0, y.size)
    span = np.maximum(hi - lo, 1)
    return np.asarray((csum[hi] - csum[lo]) / span)


def pool(
    embeddings: np.ndarray, mode: str = "mean", weights: np.ndarray | None = None
) -> np.ndarray:
    """Pool ``[W, dim]`` window embeddings into one ``[dim]`` vector.

    Parameters
    ----------
    embeddings : numpy.ndarray
        ``[W, dim]``, W >= 1.
    mode : {"mean", "max", "energy"}
    weights : numpy.ndarray, optional
        ``[W]`` non-negative window energies, required for ``energy``; all-zero
        weights (digital silence) fall back to the mean.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise EmberdError(f"embeddings shape {emb.shape}: expected [windows >= 1, dim]")
    if mode == "mean":
        return emb.mean(axis=0)
    if mode == "max":
        return emb.max(axis=0)
    if mode == "energy":
        if weights is None or np.shape(weights) != (emb.shape[0],):
            raise EmberdError("energy pooling needs one weight per window")
        w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
        total = w.sum()
        if total <= 0.0 or not np.isfinite(total):
            return emb.mean(axis=0)
        return np.asarray((w / total) @ emb, dtype=np.float32)
    raise EmberdError(f"pool={mode!r}: choose from {', '.join(POOLS)}")


def embed_file_windows(
    path: str | Path, encoder: Any, *, tail: str = "drop", batch_size: int = DEFAULT_BATCH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load a file at the model's rate and embed it window by window.

    Returns
    -------
    embeddings : numpy.ndarray
        float32 ``[W, dim]``.
    starts_s : numpy.ndarray
        ``[W]`` window start times in seconds.
    energy : numpy.ndarray
        ``[W]`` window energies (for ``pool(..., "energy", energy)``).
    """
    from emberd.dsp.sources import load_audio

    config = encoder.manifest.frontend()
    y, _info = load_audio(path, sr=config.sr, mono=True)
    emb, starts = embed_signal(y, encoder, tail=tail, batch_size=batch_size)
    window_s = encoder.manifest.window_frames * config.hop_seconds
    return emb, starts, window_energy(y, starts, sr=config.sr, window_s=window_s)


def embed_file(path: str | Path, encoder: Any, *, pool_mode: str = "mean") -> np.ndarray:
    """One pooled float32 ``[dim]`` embedding for an audio file."""
    if pool_mode not in POOLS:
        raise EmberdError(f"pool={pool_mode!r}: choose from {', '.join(POOLS)}")
    emb, _starts, energy = embed_file_windows(path, encoder)
    return pool(emb, pool_mode, energy)
