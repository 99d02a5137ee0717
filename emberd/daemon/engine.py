"""Encoder strategies for the live worker: how a hop's embedding is computed.

``streaming`` (default) feeds only the new frames to
:class:`~emberd.models.streaming.StreamingEncoder` (aiSFX only; other models run
windowed), which keeps the windowed network's activations across hops and recomputes
only the rows the hop changes: each embedding equals the windowed one on the 100 frames
ending at the newest complete 8-frame step, with no look-ahead (exact edges).
``windowed`` runs the ONNX :class:`~emberd.models.runtime.Encoder` on the latest
``window_frames`` mel frames of every channel, all channels as one batch, every hop.
Both implement :class:`HopEncoder`, and the worker does not care which one it holds.

An :class:`Engine` bundles the strategy with one :class:`StreamingFrontEnd` per channel;
``set_model`` builds a new Engine on the control thread and hands it to the worker.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from emberd.errors import EmberdError

log = logging.getLogger(__name__)

ENCODER_STRATEGIES = ("windowed", "streaming")
STREAMING_MODELS = ("aisfx",)  # models with a streaming implementation; others run windowed
FRAME_CAPACITY_MIN = 512  # mel frames kept per channel (12 s at 23 ms), more than any window
SILENCE_PRIME_S = 0.2  # s of zeros pushed through a scratch front end to learn the silence frame


class HopEncoder(Protocol):
    """What the worker needs from an encoder strategy."""

    kind: str
    model: str
    provider: str
    dim: int
    window_frames: int

    def embed_hop(self, fronts: list[Any], end_frame: int) -> np.ndarray | None:
        """Embedding ``[C, dim]`` of the audio up to frame ``end_frame`` (exclusive), or None."""
        ...


def silence_frame(config: Any) -> np.ndarray:
    """The mel frame a front end produces for digital silence (pads the first windows)."""
    from emberd.dsp.frontend import StreamingFrontEnd

    fe = StreamingFrontEnd(config)
    fe.push(np.zeros(int(SILENCE_PRIME_S * config.sr) + config.n_fft, dtype=np.float32))
    out = np.zeros((1, config.n_mels), dtype=np.float32)
    if fe.frames.latest(1, out) != 1:  # pragma: no cover - 0.2 s always gives frames
        raise EmberdError("front end: no frame from silence")
    return out[0]


class WindowedEncoder:
    """ONNX encoder on the latest window of every channel, one batch per hop."""

    kind = "windowed"

    def __init__(self, encoder: Any, channels: int, silence: np.ndarray) -> None:
        manifest = encoder.manifest
        self.encoder = encoder
        self.model: str = manifest.name
        self.provider: str = encoder.provider
        self.dim: int = int(manifest.dim)
        self.window_frames: int = int(manifest.window_frames)
        self._window = np.empty((channels, self.window_frames, manifest.n_mels), np.float32)
        self._silence = silence

    def embed_hop(self, fronts: list[Any], end_frame: int) -> np.ndarray | None:
        for c, fe in enumerate(fronts):
            oldest = fe.frames.total - fe.frames.available  # oldest frame still held
            n = max(0, min(self.window_frames, end_frame - oldest, end_frame))
            pad = self.window_frames - n
            if pad:
                self._window[c, :pad] = self._silence  # before the stream began: silence
            if n:
                fe.frames.copy_range(end_frame - n, self._window[c, pad:])
        return np.asarray(self.encoder.embed(self._window), dtype=np.float32)


class StreamingHopEncoder:
    """:class:`StreamingEncoder` fed with each hop's new frames (aiSFX only)."""

    kind = "streaming"

    def __init__(self, streaming: Any, model: str, channels: int, n_mels: int,
                 silence: np.ndarray) -> None:  # fmt: skip
        self.streaming = streaming
        self.model = model
        self.provider = str(streaming.provider)  # numpy (exact edges, default) or ONNX step graph
        self.dim = int(streaming.dim)
        self.window_frames = int(streaming.window_frames)
        self._fed = 0
        self._buf = np.empty((channels, streaming.chunk_frames * 4, n_mels), np.float32)
        self._last: np.ndarray | None = None
        # Embeddings come every chunk_frames frames, ending on multiples of it. Leading
        # silence frames (what the window holds before the stream anyway) shift that
        # grid so one window starts exactly on the input's first frame: a one-shot file
        # played from its onset is analysed in the very window the library indexed.
        align = (-self.window_frames) % int(streaming.chunk_frames)
        if align:
            lead = np.broadcast_to(silence, (channels, align, n_mels))
            list(streaming.push(np.ascontiguousarray(lead, dtype=np.float32)))

    def embed_hop(self, fronts: list[Any], end_frame: int) -> np.ndarray | None:
        while self._fed < end_frame:
            n = min(end_frame - self._fed, self._buf.shape[1])
            for c, fe in enumerate(fronts):
                fe.frames.copy_range(self._fed, self._buf[c, :n])
            for _end, emb in self.streaming.push(self._buf[:, :n]):
                self._last = emb.copy()
            self._fed += n
        return self._last


@dataclass
class Engine:
    """A hop encoder plus one front end per channel, built together for one model."""

    manifest: Any
    fronts: list[Any]
    encoder: HopEncoder
    hop_frames: int  # mel frames between two hops

    @property
    def config(self) -> Any:
        return self.manifest.frontend()


def build_engine(
    model: Any,
    *,
    channels: int,
    device: str,
    hop_ms: float | None,
    strategy: str = "streaming",
    threads: int = 2,
) -> Engine:
    """Build an Engine for ``model``: a manifest, a name, or None (aiSFX, falling back
    loudly to dsp-baseline). ``strategy="streaming"`` runs windowed for models without
    a streaming implementation (everything but aiSFX).

    Raises
    ------
    EmberdError
        Unknown model or strategy, or a strategy the model does not support.
    """
    from emberd.dsp.frontend import StreamingFrontEnd
    from emberd.models.registry import resolve_default

    if strategy not in ENCODER_STRATEGIES:
        raise EmberdError(f"encoder {strategy!r}: choose from {', '.join(ENCODER_STRATEGIES)}")
    manifest = model if hasattr(model, "window_frames") else resolve_default(model)
    config = manifest.frontend()
    frame_s = config.hop_length / config.sr
    hop_frames = 1 if hop_ms is None else hop_frames_for(hop_ms, frame_s, manifest)
    capacity = max(FRAME_CAPACITY_MIN, 4 * manifest.window_frames)
    fronts = [StreamingFrontEnd(config, frame_capacity=capacity) for _ in range(channels)]
    encoder: HopEncoder
    if strategy == "streaming" and manifest.name not in STREAMING_MODELS:
        log.info("encoder streaming: not available for %s, running windowed", manifest.name)
        strategy = "windowed"
    if strategy == "streaming":
        encoder = _streaming(manifest, channels=channels, hop_frames=hop_frames, threads=threads,
                             device=device, silence=silence_frame(config))  # fmt: skip
    else:
        from emberd.models.plugin import load_encoder

        onnx = load_encoder(manifest, device=device, threads=threads)
        encoder = WindowedEncoder(onnx, channels, silence_frame(config))
    log.info(
        "encoder %s (%s) on %s, hop %d frame(s) = %.1f ms",
        manifest.name, encoder.kind, encoder.provider, hop_frames, hop_frames * frame_s * 1000,
    )  # fmt: skip
    return Engine(manifest=manifest, fronts=fronts, encoder=encoder, hop_frames=hop_frames)


def hop_frames_for(hop_ms: float, frame_s: float, manifest: Any) -> int:
    """``--hop-ms`` in whole mel frames, or EmberdError when it cannot be honoured.

    A hop is a whole number of mel frames (rounded to the nearest), from one frame up to
    one encoder window: shorter cannot be computed, longer would leave audio unanalysed.
    """
    frame_ms = frame_s * 1000.0
    window = int(manifest.window_frames)
    if not math.isfinite(hop_ms) or hop_ms <= 0:
        raise EmberdError(f"--hop-ms {hop_ms:g}: must be a number above 0")
    frames = round(hop_ms / frame_ms)
    if frames < 1:
        raise EmberdError(f"--hop-ms {hop_ms:g}: shorter than one mel frame of {manifest.name} "
                          f"({frame_ms:.2f} ms), the shortest hop")
    if frames > window:
        raise EmberdError(f"--hop-ms {hop_ms:g}: longer than one {manifest.name} window "
                          f"({window * frame_ms:.0f} ms); audio between windows would never be "
                          "analysed")
    return int(frames)


def _streaming(
    manifest: Any, *, channels: int, hop_frames: int, threads: int, device: str,
    silence: np.ndarray,
) -> HopEncoder:
    """Build the streaming aiSFX encoder from the fetched checkpoint."""
    if manifest.name != "aisfx":
        raise EmberdError(f"encoder streaming: only for aisfx, not {manifest.name}")
    from emberd.models import aisfx
    from emberd.models.streaming import StreamingEncoder
    from emberd.paths import cache_dir

    state, _ = aisfx.load_checkpoint(aisfx.fetch_wheel(cache_dir()))
    enc = StreamingEncoder(
        aisfx.folded_weights(state),
        hop_frames=hop_frames,
        window_frames=manifest.window_frames,
        channels=channels,
        threads=threads,
        pad_frame=silence,  # before the stream: silence, as the windowed path pads
        device=device,
    )
    return StreamingHopEncoder(enc, manifest.name, channels, manifest.n_mels, silence)
