"""The mix-down assistant's live analysis: class, loudness, balance and masking per stem.

The worker thread owns one :class:`MixdownAnalyser` and calls it from two places
only: :meth:`MixdownAnalyser.push` with the samples it has just drained from the
ring (all analysed channels at once), and :meth:`MixdownAnalyser.on_hop` with the
hop's embeddings.  Nothing of this runs in the audio callback.

Work is done on a fixed cadence, not per call: every :data:`TICK_S` of audio
the loudness meters take the new samples and the masking model and the
spectral balance measure the newest window; every :data:`LOUDNESS_PERIOD_S`
(loudness, on even ticks) and :data:`MASKING_PERIOD_S` (class and masking, on
odd ticks, so that no tick does both) of audio a :class:`MixdownResult` is
handed to the publishers, so receivers get a few
messages per second whatever the hop rate, and the cost per second of audio is
the same for any block size.

Shared attributes: none.  Created, written and read by the worker thread; the
results it returns are read-only after.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from emberd.clients import osc_format as fmt
from emberd.clients import wire
from emberd.dsp.bands import SpectralBalance, band_matrix, spectrum_power
from emberd.dsp.loudness import LoudnessMeter
from emberd.dsp.masking import TICK_S, MaskingTracker, Suggestion
from emberd.errors import EmberdError
from emberd.library.classes import CLASS_LABELS
from emberd.library.classifier import ClassHead, head_path

LOUDNESS_PERIOD_S = 0.2  # loudness messages: 5 per second (every other 100 ms tick)
MASKING_PERIOD_S = 0.4  # class and masking messages: 2.5 per second (every other loudness)
SIGNAL_FLOOR_LUFS = -70.0  # momentary loudness below this is "no signal" (BS.1770 absolute gate)
SILENT_RMS_DB = -70.0  # a hop quieter than this (dBFS RMS) is silent in the similarity matrix
MIN_CLASS_CONFIDENCE = 0.0  # classes are sent with their confidence; receivers choose a floor


@dataclass
class MixdownResult:
    """One rate-limited mix-down update for every analysed channel (read-only after).

    ``classes``, ``masking`` and ``suggestions`` are None on loudness-only updates.
    """

    seq: int
    capture_time: float
    stream_s: float
    model: str
    channels: list[int]
    signal: list[bool]  # the channel is above SIGNAL_FLOOR_LUFS (momentary)
    momentary: np.ndarray  # [C] LUFS
    short_term: np.ndarray  # [C] LUFS
    integrated: np.ndarray  # [C] LUFS
    true_peak: np.ndarray  # [C] dBTP
    crest: np.ndarray  # [C] dB
    balance_hz: np.ndarray  # [B3] 1/3-octave centres
    balance_db: np.ndarray  # [C, B3] dB re each stem's total
    reference_db: np.ndarray | None  # [B3] target curve (same normalisation) or None
    classes: list[tuple[str | None, float]] | None = None  # (class or None, confidence)
    masking: np.ndarray | None = None  # [C, C, Bc] fraction masked (masker, maskee, band)
    margin_db: np.ndarray | None = None  # [C, C, Bc]
    band_edges_hz: np.ndarray | None = None  # [Bc + 1] critical-band edges
    suggestions: list[Suggestion] = field(default_factory=list)
    loudness_fresh: bool = True  # False: a class/masking update repeating the last loudness


class MixdownAnalyser:
    """Per-stem live analysis (see module docstring).

    Parameters
    ----------
    sr : int
        Sample rate in Hz.
    channels : list of int
        Published channel numbers, one per analysed stem.
    head : ClassHead, optional
        The library's class head (no head: classes stay None).
    reference_db : numpy.ndarray, optional
        A target 1/3-octave curve on :class:`~emberd.dsp.bands.SpectralBalance`'s
        bands (``emberd.dsp.bands.reference_curve`` / ``reference_from_audio``).
    model : str
        Embedding model name, put on the ZeroMQ messages.
    """

    def __init__(
        self,
        *,
        sr: int,
        channels: Sequence[int],
        head: ClassHead | None = None,
        reference_db: np.ndarray | None = None,
        model: str = "",
    ) -> None:
        self.sr = int(sr)
        self.model = model
        self.channels = list(channels)
        c = len(self.channels)
        self.head = head
        self.reference_db = reference_db
        self.loudness = LoudnessMeter(sr=self.sr, channels=c)
        self.masking = MaskingTracker(sr=self.sr, channels=c)
        self.balance = SpectralBalance(sr=self.sr, channels=c)
        self.tick = round(TICK_S * self.sr)
        self._history = self.balance.n_fft
        # Newest audio: the FFT windows read its end; new samples wait at [hist: hist + pending].
        self._buf = np.zeros((c, self._history + self.tick), np.float32)
        self._pending = 0
        self._samples = 0  # samples analysed since start
        self._next_loudness = round(LOUDNESS_PERIOD_S * self.sr)
        self._next_masking = round((MASKING_PERIOD_S + TICK_S) * self.sr)  # on odd ticks
        self._last: MixdownResult | None = None  # the latest loudness update
        self._classes: list[tuple[str | None, float]] = [(None, 0.0)] * c
        self._seq = 0

    # ------------------------------------------------------------------ input

    def push(self, block: np.ndarray, capture_time: float) -> list[MixdownResult]:
        """Take ``block`` ``[C, n]`` (the worker's newest samples); return the updates now due.

        ``capture_time`` is the Unix time of the block's first sample.
        """
        out: list[MixdownResult] = []
        n = block.shape[1]
        done = 0
        while done < n:
            take = min(n - done, self.tick - self._pending)
            start = self._history + self._pending
            self._buf[:, start : start + take] = block[:, done : done + take]
            self._pending += take
            done += take
            if self._pending == self.tick:
                result = self._run_tick(capture_time + (done - 1) / self.sr)
                if result is not None:
                    out.append(result)
        return out

    def on_hop(self, embeddings: np.ndarray) -> None:
        """Classify the hop's embeddings ``[C, dim]`` (kept until the next class update)."""
        if self.head is None or embeddings.shape[1] != self.head.mean.shape[0]:
            return
        self._classes = [(cls, conf) for cls, conf in self.head.predict(embeddings)]

    # ------------------------------------------------------------------ work

    def _run_tick(self, capture_time: float) -> MixdownResult | None:
        new = self._buf[:, self._history :]
        self.loudness.push(new)
        # Shift the history left by one tick: the newest samples end at the buffer's end.
        self._buf[:, : self._history] = self._buf[:, self.tick :]
        self._pending = 0
        self._samples += self.tick
        # One FFT per tick serves both band sets (the masking bands at a 186 ms window).
        n = self.balance.n_fft
        spec = spectrum_power(self._buf[:, self._history - n : self._history], n_fft=n)
        self.masking.update(spec @ band_matrix(sr=self.sr, n_fft=n, edges=self.masking.edges).T)
        self.balance.update_power(
            spec @ band_matrix(sr=self.sr, n_fft=n, edges=self.balance.edges).T, TICK_S
        )
        # Loudness updates fall on even ticks and masking updates on odd ones, so no tick
        # carries both (the worker's hop that gets a tick does one of the two).
        if self._samples >= self._next_loudness:
            self._next_loudness += round(LOUDNESS_PERIOD_S * self.sr)
            self._last = self._result(capture_time)
            return self._last
        if self._samples >= self._next_masking and self._last is not None:
            self._next_masking += round(MASKING_PERIOD_S * self.sr)
            result = replace(self._last, seq=self._seq, capture_time=capture_time,
                             stream_s=self._samples / self.sr, loudness_fresh=False)  # fmt: skip
            self._seq += 1
            self._add_masking(result)
            return result
        return None

    def _result(self, capture_time: float) -> MixdownResult:
        momentary = self.loudness.momentary()
        result = MixdownResult(
            seq=self._seq,
            capture_time=capture_time,
            stream_s=self._samples / self.sr,
            model=self.model,
            channels=self.channels,
            signal=[bool(m > SIGNAL_FLOOR_LUFS) for m in momentary],
            momentary=momentary,
            short_term=self.loudness.short_term(),
            integrated=self.loudness.integrated(),
            true_peak=self.loudness.true_peak_db(),
            crest=self.loudness.crest_db(),
            balance_hz=self.balance.centres,
            balance_db=self.balance.relative_db(),
            reference_db=self.reference_db,
        )
        self._seq += 1
        return result

    def names(self, signal: Sequence[bool]) -> list[str]:
        """Display names for suggestions: the class when known, else ``ch N``."""
        out = []
        for ch, (cls, _conf), _live in zip(self.channels, self._classes, signal, strict=True):
            out.append(f"{CLASS_LABELS[cls]} (ch {ch})" if cls else f"ch {ch}")
        return out

    def _add_masking(self, result: MixdownResult) -> None:
        result.classes = [
            (cls if live else None, conf if live else 0.0)
            for (cls, conf), live in zip(self._classes, result.signal, strict=True)
        ]
        fraction, margin = self.masking.scores()
        result.masking = fraction
        result.margin_db = margin
        result.band_edges_hz = self.masking.edges
        result.suggestions = self.masking.suggestions(self.names(result.signal))


def load_reference(spec: str, *, sr: int) -> np.ndarray:
    """A target 1/3-octave curve for ``--mix-reference`` (dB, same bands as the balance).

    ``pink`` is flat per 1/3 octave (pink noise); a ``.csv`` file holds ``Hz,dB``
    lines; any other file is audio whose long-term balance becomes the target.

    Raises
    ------
    EmberdError
        The file cannot be read (one line, the CLI exits 2).
    """
    from emberd.dsp.bands import reference_curve, reference_from_audio, third_octave_centres
    from emberd.dsp.sources import load_audio

    centres = third_octave_centres(sr=sr)
    if spec == "pink":
        return reference_curve([(20.0, 0.0), (20000.0, 0.0)], centres=centres)
    if spec.lower().endswith(".csv"):
        try:
            rows = [line.split(",") for line in Path(spec).read_text().splitlines() if line.strip()]
            points = [(float(r[0]), float(r[1])) for r in rows if not r[0].strip().startswith("#")]
            return reference_curve(points, centres=centres)
        except (OSError, ValueError, IndexError) as exc:
            raise EmberdError(f"--mix-reference {spec}: need lines of Hz,dB ({exc})") from None
    y, _info = load_audio(spec, sr=sr, mono=True)
    return reference_from_audio(y, sr=sr)


def class_data(library: Any, model: str) -> tuple[ClassHead | None, np.ndarray | None]:
    """The library's class head for ``model`` and its mean unit vector (the similarity centre).

    Either is None when the library has none (not indexed with this emberd, no
    labelled sounds, no vectors for ``model``).
    """
    path = getattr(library, "path", None)
    head = ClassHead.load(head_path(path, model)) if path is not None else None
    store = getattr(library, "store", None)
    centre = None
    if store is not None and hasattr(store, "file_vectors"):
        _ids, matrix = store.file_vectors(model)
        if len(matrix):
            unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            centre = unit.mean(axis=0).astype(np.float64)
    return head, centre


def centred_similarity(
    embeddings: np.ndarray, centre: np.ndarray | None, silent: Sequence[bool]
) -> np.ndarray:
    """Channel cosine similarity after subtracting ``centre`` (the library's mean vector).

    Raw embeddings of any two sounds share a large common component, so raw
    cosines sit near 0.8 for unrelated stems; centring removes it, leaving 0 for
    "as alike as two library sounds on average" and 1 for the same sound.
    Silent channels get NaN rows and columns (shown as silent, never as 1.00).

    Parameters
    ----------
    embeddings : numpy.ndarray
        ``[C, dim]``.
    centre : numpy.ndarray or None
        ``[dim]`` mean of the library's unit vectors; None: no centring.
    silent : sequence of bool
        Per channel.

    Returns
    -------
    numpy.ndarray
        ``[C, C]`` float32 in [-1, 1], NaN for silent channels.
    """
    x = np.asarray(embeddings, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if centre is not None and centre.shape == x.shape[1:]:
        x = x - centre
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = np.clip(unit @ unit.T, -1.0, 1.0)
    dead = np.asarray(silent, bool)
    sim[dead, :] = np.nan
    sim[:, dead] = np.nan
    return sim.astype(np.float32)


def _r(x: float, nd: int = 2) -> float:
    return round(float(x), nd)


def zmq_messages(
    result: MixdownResult,
) -> Iterator[tuple[str, int | None, dict[str, Any], np.ndarray | None]]:
    """``(kind, channel, header fields, array)`` of every ZeroMQ message for ``result``.

    See :mod:`emberd.clients.wire` for the ``class``, ``loudness`` and ``masking`` kinds.
    """
    common = {"stream_s": round(result.stream_s, 6)}
    ref = None if result.reference_db is None else [_r(v) for v in result.reference_db]
    bands = [_r(f, 1) for f in result.balance_hz]
    for c, ch in enumerate(result.channels if result.loudness_fresh else ()):
        live = result.signal[c]
        yield wire.KIND_LOUDNESS, ch, {
            "momentary": _r(result.momentary[c]), "short_term": _r(result.short_term[c]),
            "integrated": _r(result.integrated[c]), "true_peak": _r(result.true_peak[c]),
            "crest_db": _r(result.crest[c]), "signal": live, "bands_hz": bands,
            "reference_db": ref, **common,
        }, result.balance_db[c].astype(np.float32)  # fmt: skip
    if result.classes is not None:
        for c, ch in enumerate(result.channels):
            cls, conf = result.classes[c]
            yield wire.KIND_CLASS, ch, {
                "class": cls, "confidence": _r(conf, 4), "signal": result.signal[c], **common,
            }, None  # fmt: skip
    if result.masking is not None and result.band_edges_hz is not None:
        chans = result.channels
        yield wire.KIND_MASKING, None, {
            "channels": list(chans),
            "band_edges_hz": [_r(e, 1) for e in result.band_edges_hz],
            "suggestions": [
                {"masker": chans[s.masker], "maskee": chans[s.maskee], "lo_hz": _r(s.lo_hz, 1),
                 "hi_hz": _r(s.hi_hz, 1), "margin_db": _r(s.margin_db, 1),
                 "fraction": _r(s.fraction, 3), "text": s.text}
                for s in result.suggestions
            ],
            **common,
        }, result.masking.astype(np.float32)  # fmt: skip


def osc_datagrams(
    header: dict[str, Any], array: np.ndarray | None, times: tuple[int, int, int], max_bytes: int
) -> Iterator[bytes]:
    """The OSC datagrams of one ``class``, ``loudness`` or ``masking`` wire message.

    ``/emberd/class`` and ``/emberd/loudness`` are one datagram per channel; ``masking``
    becomes one ``/emberd/masking`` datagram per suggestion, or one with ``count`` 0
    (see :mod:`emberd.clients.osc_format`).
    """
    kind = header.get("kind")
    if kind == wire.KIND_CLASS:
        yield fmt.encode_class(times, channel=int(header["channel"]), cls=header["class"],
                               confidence=float(header["confidence"]))  # fmt: skip
    elif kind == wire.KIND_LOUDNESS:
        figures = (header["momentary"], header["short_term"], header["integrated"],
                   header["true_peak"], header["crest_db"])  # fmt: skip
        balance = np.zeros(0, np.float32) if array is None else np.asarray(array)
        yield fmt.encode_loudness(times, channel=int(header["channel"]), figures=figures,
                                  signal=bool(header["signal"]), balance_db=balance,
                                  max_bytes=max_bytes)  # fmt: skip
    elif kind == wire.KIND_MASKING:
        found = header.get("suggestions") or []
        if not found:
            yield fmt.encode_masking(times, index=0, count=0, masker=-1, maskee=-1, lo_hz=0.0,
                                     hi_hz=0.0, margin_db=0.0, fraction=0.0, text="",
                                     max_bytes=max_bytes)  # fmt: skip
        for i, s in enumerate(found):
            yield fmt.encode_masking(times, index=i, count=len(found), masker=s["masker"],
                                     maskee=s["maskee"], lo_hz=s["lo_hz"], hi_hz=s["hi_hz"],
                                     margin_db=s["margin_db"], fraction=s["fraction"],
                                     text=s["text"], max_bytes=max_bytes)  # fmt: skip
