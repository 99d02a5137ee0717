"""Front-end settings: one frozen dataclass and the two named presets.

``librosa`` reproduces ``librosa.feature.melspectrogram`` with its defaults;
``aisfx`` reproduces the Essentia chain the aiSFX encoder (Ma & Lerch,
ISMIR 2022) was trained on: FrameCutter (first frame centred on sample 0)
-> Windowing(hann, normalized=False) -> Spectrum -> MelBands(96, htkMel,
'warping', 'unit_sum', power) -> log10(1e4 x + 1) -> min-max scaling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from emberd.errors import EmberdError

#: Largest value of log10(1e4 * mel + 1) in the aiSFX training set; the model
#: expects features scaled by (x - 0) / (AISFX_SCALE_MAX - 0).
AISFX_SCALE_MAX = 9.457798957824707  # log10 units

WINDOWS = ("hann", "hann_symmetric")
FILTERBANKS = ("librosa", "aisfx")
COMPRESSIONS = ("none", "db", "log10_1e4")
FRAMINGS = ("librosa", "essentia")
PAD_MODES = ("constant",)
NORMS = ("slaney", None)


@dataclass(frozen=True)
class FrontEndConfig:
    """Everything that decides the mel frames, hashable (used as a cache key).

    Parameters
    ----------
    sr : int
        Sample rate in Hz the front end expects.
    n_fft : int
        FFT size in samples.
    win_length : int
        Window length in samples (<= n_fft; centred in the FFT frame like librosa).
    hop_length : int
        Hop between frames in samples (<= n_fft).
    window : str
        ``"hann"`` (periodic, librosa/scipy) or ``"hann_symmetric"`` (N-1 denominator, Essentia).
    center : bool
        Frame ``k`` is centred on sample ``k * hop_length`` (zero padding of n_fft // 2 at
        the start); otherwise frame ``k`` starts there.
    pad_mode : str
        Padding for ``center``; only ``"constant"`` (zeros: librosa >= 0.10 default, Essentia).
    power : float
        1.0 magnitude spectrum, 2.0 power spectrum.
    n_mels : int
        Number of mel bands.
    fmin, fmax : float
        Filterbank frequency range in Hz; ``fmax=None`` means ``sr / 2``.
    htk : bool
        HTK mel formula (librosa filterbank only; the aisfx filterbank is always HTK).
    norm : str or None
        ``"slaney"`` area normalisation or ``None`` (librosa filterbank only).
    filterbank : str
        ``"librosa"`` (``librosa.filters.mel``) or ``"aisfx"`` (Essentia 'warping'/'unit_sum').
    compression : str
        ``"none"``; ``"db"``: ``10 log10(max(x, 1e-10))`` (``librosa.power_to_db`` with
        ``ref=1, amin=1e-10, top_db=None``); ``"log10_1e4"``: ``log10(1e4 x + 1)``.
    scale_min, scale_max : float
        After compression ``(x - scale_min) / (scale_max - scale_min)``; (0, 1) is identity.
    framing : str
        How the end of the stream is framed when ``center`` is set: ``"librosa"`` emits
        frames whose centre is <= the last sample index + 1 (``1 + n // hop`` frames),
        ``"essentia"`` emits every frame that starts before the end of the signal
        (FrameCutter ``startFromZero=False``: ``ceil((n + n_fft // 2) / hop)`` frames).
    """

    sr: int = 22050
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    power: float = 2.0
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    htk: bool = False
    norm: str | None = "slaney"
    filterbank: str = "librosa"
    compression: str = "none"
    scale_min: float = 0.0
    scale_max: float = 1.0
    framing: str = "librosa"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_bins(self) -> int:
        """Number of rfft bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def fmax_hz(self) -> float:
        """Upper filterbank edge in Hz (``fmax`` or ``sr / 2``)."""
        return float(self.sr) / 2.0 if self.fmax is None else float(self.fmax)

    @property
    def hop_seconds(self) -> float:
        """Hop duration in seconds."""
        return self.hop_length / self.sr

    def validate(self) -> None:
        """Raise :class:`EmberdError` naming the first bad field."""

        def bad(field: str, problem: str) -> EmberdError:
            return EmberdError(f"front end {field}={getattr(self, field)!r}: {problem}")

        for name in ("sr", "n_fft", "win_length", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise bad(name, "must be a positive integer")
        if self.win_length > self.n_fft:
            raise bad("win_length", f"must be <= n_fft ({self.n_fft})")
        if self.hop_length > self.n_fft:
            raise bad("hop_length", f"must be <= n_fft ({self.n_fft})")
        if self.window not in WINDOWS:
            raise bad("window", f"must be one of {WINDOWS}")
        if self.pad_mode not in PAD_MODES:
            raise bad("pad_mode", f"must be one of {PAD_MODES}")
        if self.power not in (1.0, 2.0):
            raise bad("power", "must be 1.0 or 2.0")
        if self.filterbank not in FILTERBANKS:
            raise bad("filterbank", f"must be one of {FILTERBANKS}")
        if self.compression not in COMPRESSIONS:
            raise bad("compression", f"must be one of {COMPRESSIONS}")
        if self.norm not in NORMS:
            raise bad("norm", f"must be one of {NORMS}")
        if self.framing not in FRAMINGS:
            raise bad("framing", f"must be one of {FRAMINGS}")
        if self.framing == "essentia" and not self.center:
            raise bad("framing", "'essentia' framing needs center=True")
        if not 0.0 <= self.fmin < self.fmax_hz <= self.sr / 2.0:
            raise bad("fmin", f"need 0 <= fmin < fmax <= sr/2 (fmax {self.fmax_hz})")
        if not self.scale_max > self.scale_min:
            raise bad("scale_max", "must be greater than scale_min")


PRESETS: dict[str, FrontEndConfig] = {
    # librosa.feature.melspectrogram(y, sr=22050) with every default.
    "librosa": FrontEndConfig(),
    # The aiSFX training front end (Essentia streaming MelBands), see module docstring.
    "aisfx": FrontEndConfig(
        sr=44100,
        n_fft=2048,  # 46.4 ms at 44.1 kHz
        win_length=2048,
        hop_length=1024,  # 23.2 ms at 44.1 kHz
        window="hann_symmetric",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=96,
        fmin=0.0,
        fmax=22050.0,
        htk=True,
        norm=None,
        filterbank="aisfx",
        compression="log10_1e4",
        scale_min=0.0,
        scale_max=AISFX_SCALE_MAX,
        framing="essentia",
    ),
}


def preset(name: str, **overrides: Any) -> FrontEndConfig:
    """Return the named preset, optionally with some fields replaced.

    Parameters
    ----------
    name : str
        ``"librosa"`` or ``"aisfx"``.
    **overrides
        FrontEndConfig fields to replace (e.g. ``sr=44100, compression="db"``).

    Returns
    -------
    FrontEndConfig

    Raises
    ------
    EmberdError
        Unknown preset, unknown field or invalid value.
    """
    try:
        base = PRESETS[name]
    except KeyError:
        raise EmberdError(
            f"front end preset {name!r}: unknown (choose from {', '.join(PRESETS)})"
        ) from None
    fields = {f.name for f in dataclasses.fields(FrontEndConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise EmberdError(f"front end preset {name!r}: unknown field(s) {', '.join(unknown)}")
    return dataclasses.replace(base, **overrides)
