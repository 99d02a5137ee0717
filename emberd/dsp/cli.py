"""``emberd features`` (streaming mel frames of a file) and ``emberd devices``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from emberd.errors import EmberdError

DEFAULT_FEATURE_BLOCK = 256  # samples per push, as a device callback would deliver


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    return value  # range checked by the handler, so it reports as EmberdError


def register(subparsers: Any) -> None:
    """Add ``features`` and ``devices`` to the ``emberd`` parser."""
    p = subparsers.add_parser(
        "features",
        help="write the mel frames of an audio file (streaming front end) to .npy",
        description="Compute mel frames with the streaming front end, feeding the file in "
        "blocks of N samples, and write them as float32 [frames, bands] .npy.",
    )
    p.add_argument("file", metavar="FILE", help="audio file (anything libsndfile reads)")
    p.add_argument("--preset", choices=("librosa", "aisfx"), default="aisfx",
                   help="mel front end: aisfx (the encoder's, default) or librosa")
    p.add_argument(
        "--block-size", type=_positive_int, default=DEFAULT_FEATURE_BLOCK, metavar="N",
        help=f"samples per push (default {DEFAULT_FEATURE_BLOCK})",
    )
    p.add_argument("--out", required=True, metavar="OUT.npy", help="output file (atomic write)")
    p.set_defaults(func=features_main)

    d = subparsers.add_parser(
        "devices",
        help="list audio devices (host API, channels, default rate)",
        description="List PortAudio devices like `python -m sounddevice`; with DEVICE, "
        "show the input device that name or index selects.",
    )
    d.add_argument("device", nargs="?", metavar="DEVICE", help="input device name or index")
    d.set_defaults(func=devices_main)


def features_main(args: argparse.Namespace) -> int:
    """Handler of ``emberd features``."""
    import numpy as np

    from emberd.atomic import atomic_open
    from emberd.dsp.config import preset
    from emberd.dsp.frontend import StreamingFrontEnd
    from emberd.dsp.sources import FileSource, check_block_size

    block = check_block_size(args.block_size)
    out_path = Path(args.out)
    if not out_path.parent.is_dir():
        raise EmberdError(f"{out_path}: folder {out_path.parent} does not exist")
    if out_path.is_dir():
        raise EmberdError(f"{out_path}: is a folder")
    config = preset(args.preset)
    source = FileSource(args.file, sr=config.sr, mono=True, block_size=block, pace="fast")
    # The ring must hold every frame one push can complete, since we read after each push.
    capacity = max(1024, block // config.hop_length + 2)
    frontend = StreamingFrontEnd(config, frame_capacity=capacity)
    chunks: list[np.ndarray] = []

    def collect(n: int) -> None:
        if n:
            buf = np.empty((n, config.n_mels), dtype=np.float32)
            frontend.frames.latest(n, buf)
            chunks.append(buf)

    with source:
        for b in source:
            collect(frontend.push(b.data[:, 0]))
    collect(frontend.flush())
    frames = (
        np.concatenate(chunks) if chunks else np.zeros((0, config.n_mels), dtype=np.float32)
    )
    with atomic_open(out_path, "wb") as fh:
        np.save(fh, frames, allow_pickle=False)
    print(
        f"{out_path}: {frames.shape[0]} frames x {frames.shape[1]} bands "
        f"(preset {args.preset}, {config.sr} Hz, block {block})"
    )
    return 0


def devices_main(args: argparse.Namespace) -> int:
    """Handler of ``emberd devices``."""
    from emberd.dsp.device import list_devices, resolve_input_device

    if args.device is not None:
        devices = [resolve_input_device(args.device)]
    else:
        devices = list_devices()
    if not devices:
        print("no audio devices found (is a sound server such as JACK running?)")
        return 0
    for d in devices:
        mark = (">" if d.default_input else " ") + ("<" if d.default_output else " ")
        print(
            f"{mark} {d.index:3d} {d.name}, {d.hostapi} ({d.max_input_channels} in, "
            f"{d.max_output_channels} out) {d.default_samplerate:g} Hz"
        )
    return 0
