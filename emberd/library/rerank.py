"""Identification re-ranking: which of a few hundred candidate files is this sound?

Candidate generation (in :meth:`emberd.library.query.Library.identify`) is
cheap and wide: embedding neighbours, landmark matches and the nearest
*attack vectors* (:func:`attack_vectors`, the first 16 onset-aligned frames of
each file's stored template, compared by one matrix product like exact
embedding search).  This module then compares the query's onset-aligned
log-band spectrogram with each candidate's stored template
(:func:`emberd.library.fingerprint.template`) in several robust ways
(:func:`features`) and combines them with a logistic rule (:data:`WEIGHTS`)
fitted by ``bench/fit_identify.py`` on kits A of hydrogen-drumkits.

Each comparison targets one way a query differs from its source:

* ``ncc``: Pearson correlation of dB patches, best over +-LAG_HOPS hops; the
  template is raised to the query's per-band noise floor first (added noise);
* ``nccb``: the same with each band's mean over time removed (gain, low-pass
  tilt and a stationary noise floor drop out);
* ``ncca``: the same over the attack only (reverb and a second sound's decay
  add energy after the onset);
* ``cont``: containment, the share of the template's strong cells the query
  covers after a gain fit (mixing and reverb only add energy);
* ``expl``: the share of the query's strong cells the template explains;
* ``gain``: the fitted gain in dB (query minus template, both relative to their
  maxima): in a mix the louder sound's template sits near 0 dB, the other below;
* ``tv``: attack-vector cosine; ``cur``: whole-template correlation;
* ``cos`` / ``llm``: embedding cosine and log(1 + aligned landmarks).

Each feature also enters relative to its best value among the candidates
(``r`` prefix): what matters is which candidate stands out for this query.
"""

from __future__ import annotations

import numpy as np

from emberd.dsp.resample import mono_at
from emberd.library import fingerprint as fp
from emberd.library import fitted

LAG_HOPS = 2  # +-23 ms of onset misalignment searched
ATTACK_FRAMES = 16  # 186 ms from the onset: the attack vector and its candidate search
ATTACK_NCC_FRAMES = 12  # 139 ms: the attack-only correlation
STRONG_DB = 30.0  # cells within this of the patch maximum count as "the sound"
ABOVE_FLOOR_DB = 3.0  # ... and must clear the query's noise floor by this
CONTAIN_TOL_DB = 6.0  # the query may fall this far below a fitted template cell
EXPLAIN_TOL_DB = 10.0  # a query cell is explained when the template reaches within this

BASE_FEATURES = ("cos", "llm", "tv", "ncc", "nccb", "ncca", "cont", "expl", "gain", "cur")
FEATURES = BASE_FEATURES + tuple("r" + f for f in BASE_FEATURES)

#: Logistic-regression weights on raw feature values and the bias, fitted by
#: ``bench/fit_identify.py`` (numpy Newton steps, L2 on standardised features, one row per
#: candidate, label = is the source or a level copy of it) on kits A of hydrogen-drumkits;
#: bench/identify.py reports them on the held-out kits B. Mostly the ranking they induce
#: matters, plus :data:`EXACT_PROBABILITY` for ``kind``.
WEIGHTS: dict[str, float] = {f: float(fitted.params()["weights"][f]) for f in FEATURES}
BIAS = float(fitted.params()["bias"])
#: A re-ranked answer at least this likely is ``"exact"`` (fitted on kits A for precision).
EXACT_PROBABILITY = float(fitted.params()["exact_probability"])

#: What :func:`confidence` weighs: the stage that answered and what it measured (see
#: :func:`answer_features`).
CONFIDENCE_FEATURES = ("bias", "wave", "wave_rho", "wave_mix", "wave_margin", "tmpl",
                       "tmpl_logit", "tmpl_margin", "lm", "lm_count", "variant", "logit")
_LOGIT_CLIP = 8.0


def _conf_params() -> tuple[dict[str, float], float]:
    conf = fitted.params().get("confidence")
    if not conf:  # a fit file older than confidences: only the waveform stage is sure
        return {"bias": -2.0, "wave": 4.0}, 0.9
    return {f: float(conf["weights"].get(f, 0.0)) for f in CONFIDENCE_FEATURES}, float(
        conf["exact_confidence"])


#: Logistic weights of :func:`confidence` and the confidence at or above which an answer is
#: ``"exact"``, fitted by ``bench/fit_identify.py`` on kits A (exact precision >= 0.99 there).
CONFIDENCE_WEIGHTS, EXACT_CONFIDENCE = _conf_params()


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.clip(np.log(p / (1 - p)), -_LOGIT_CLIP, _LOGIT_CLIP))


def answer_features(
    stage: str, *, prob: float = 0.0, runner_up: float = 0.0, rho: float = 0.0,
    runner_up_rho: float = 0.0, mixed: bool = False, landmarks: int = 0, variant: bool = False,
) -> dict[str, float]:
    """What an identification answer's confidence is computed from.

    Parameters
    ----------
    stage : {"waveform", "template", "landmarks"}
        The stage that answered.
    prob, runner_up : float
        The re-ranker's probability of the answer and of the best other candidate.
    rho : float
        The waveform correlation (waveform answers).
    runner_up_rho : float
        The best waveform correlation of any other recording (waveform answers).
    mixed : bool
        The waveform stage explained the query as a mix.
    landmarks : int
        Time-consistent landmark matches of the answer.
    variant : bool
        The query was identified as resampled or reversed (a speed/direction variant).
    """
    wave, tmpl, lm = float(stage == "waveform"), float(stage == "template"), float(
        stage == "landmarks")
    lp, lr = _logit(prob), _logit(runner_up)
    return {"bias": 1.0, "wave": wave, "wave_rho": wave * rho, "wave_mix": wave * float(mixed),
            "wave_margin": wave * (rho - runner_up_rho),
            "tmpl": tmpl, "tmpl_logit": tmpl * lp, "tmpl_margin": tmpl * (lp - lr),
            "lm": lm, "lm_count": lm * float(np.log1p(landmarks)), "variant": float(variant),
            "logit": (1.0 - lm) * lp}


def confidence(feats: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """Calibrated probability (0..1) that an answer with :func:`answer_features` is right."""
    w = CONFIDENCE_WEIGHTS if weights is None else weights
    z = sum(w.get(f, 0.0) * feats[f] for f in CONFIDENCE_FEATURES)
    return float(1.0 / (1.0 + np.exp(-z)))


def _band_db(y: np.ndarray, sr: int) -> np.ndarray:
    """Log-band power [frames, TEMPLATE_BANDS] in dB, as :func:`fingerprint.template` computes."""
    # Only the first seconds matter: the window ends TEMPLATE_FRAMES + LAG_HOPS after the onset.
    max_frames = 4 * fp.TEMPLATE_FRAMES
    y = mono_at(y, sr, fp.FP_SR)[: fp.FP_N_FFT + fp.FP_HOP * (max_frames - 1)]
    power = np.abs(fp.stft(y)) ** 2
    return np.asarray(10.0 * np.log10(power @ fp._band_matrix().T + 1e-12), np.float32)


class QueryPatch:
    """A query's onset-aligned dB window (+-LAG_HOPS), noise floor and useful length.

    Parameters
    ----------
    y : float array [n] or [n, channels]
        Query audio.
    sr : int
        Its sample rate in Hz.
    """

    def __init__(self, y: np.ndarray, sr: int) -> None:
        spec = _band_db(y, sr)
        loud = spec.max(axis=1)
        onset = int(np.argmax(loud > loud.max() - fp.ONSET_DB))
        bands = spec.shape[1]
        pad = np.full((LAG_HOPS, bands), -300.0, np.float32)
        tail = np.full((fp.TEMPLATE_FRAMES + LAG_HOPS, bands), -300.0, np.float32)
        padded = np.concatenate([pad, spec, tail])
        win = padded[onset : onset + fp.TEMPLATE_FRAMES + 2 * LAG_HOPS]
        peak = float(win.max())
        self.window = np.maximum(win - peak, -fp.TEMPLATE_RANGE_DB)
        floor = np.percentile(spec, fp.NOISE_FLOOR_PERCENTILE, axis=0) - peak
        self.floor = np.maximum(floor, -fp.TEMPLATE_RANGE_DB).astype(np.float32)
        self.frames = min(fp.TEMPLATE_FRAMES, max(len(spec) - onset, 1))

    def attack_vector(self) -> np.ndarray:
        """This query's attack vector (compare with :func:`attack_vectors`)."""
        return _unit(self.window[LAG_HOPS : LAG_HOPS + ATTACK_FRAMES][None])[0]


def template_db(templates: np.ndarray) -> np.ndarray:
    """Stored uint8 templates [n, F, B] as dB relative to each template's maximum (<= 0)."""
    return templates.astype(np.float32) * fp.TEMPLATE_DB_STEP - fp.TEMPLATE_RANGE_DB


def _unit(patches: np.ndarray) -> np.ndarray:
    v = patches.reshape(len(patches), -1).astype(np.float32)
    v = v - v.mean(axis=1, keepdims=True)
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-9)


def attack_vectors(templates: np.ndarray) -> np.ndarray:
    """Unit attack vectors [n, ATTACK_FRAMES * TEMPLATE_BANDS] of stored templates."""
    return _unit(template_db(templates)[:, :ATTACK_FRAMES])


def _pearson(
    a: np.ndarray, b: np.ndarray, axes: tuple[int, ...], a_power: np.ndarray | None = None
) -> np.ndarray:
    """Correlation of centred candidate patches ``a`` [n, ...] with the centred query ``b``
    (``a_power``: ``(a ** 2).sum(axis=axes)``, when ``a`` is compared again)."""
    num = (a * b[None]).sum(axis=axes)
    if a_power is None:
        a_power = (a**2).sum(axis=axes)
    return np.asarray(num / (np.sqrt(a_power * (b**2).sum()) + 1e-9))


def row_nanmedian(cells: np.ndarray) -> np.ndarray:
    """``np.nanmedian(cells, axis=1)`` for rows holding at least one number, the same values.

    One sort for all rows: numpy's nanmedian loops over long rows in Python (~12x slower
    here, 18 % of a one-shot query's time).
    """
    s = np.sort(cells, axis=1)  # NaN last
    count = np.count_nonzero(~np.isnan(cells), axis=1)
    rows = np.arange(len(s))
    return (s[rows, (count - 1) // 2] + s[rows, count // 2]) / 2  # numpy's mean of the middle


def features(query: QueryPatch, templates: np.ndarray) -> dict[str, np.ndarray]:
    """Spectro-temporal comparisons of a query with candidate templates.

    Parameters
    ----------
    query : QueryPatch
        The query.
    templates : uint8 array [n, TEMPLATE_FRAMES, TEMPLATE_BANDS]
        The candidates' stored templates.

    Returns
    -------
    dict of float arrays [n]
        ``ncc``, ``nccb``, ``ncca``, ``cont``, ``expl``, ``gain`` (see the module docstring).
    """
    nq, floor = query.frames, query.floor
    t = template_db(templates)[:, :nq]
    raised = np.maximum(t, floor[None, None, :])
    n = len(t)
    lc = raised - raised.mean(axis=(1, 2), keepdims=True)
    lb = raised - raised.mean(axis=1, keepdims=True)
    na = min(ATTACK_NCC_FRAMES, nq)
    la = raised[:, :na] - raised[:, :na].mean(axis=(1, 2), keepdims=True)
    strong = (t > -STRONG_DB) & (t > floor[None, None, :] + ABOVE_FLOOR_DB)
    n_strong = strong.sum(axis=(1, 2)) + 1e-9
    out = {k: np.full(n, -2.0) for k in ("ncc", "nccb", "ncca")}
    out["cont"], out["expl"], out["gain"] = np.zeros(n), np.zeros(n), np.zeros(n)
    # What does not depend on the lag, once: the candidates' own powers, which have cells.
    pc, pb, pa = ((x**2).sum(axis=(1, 2)) for x in (lc, lb, la))
    has = strong.any(axis=(1, 2))
    strong_has = strong[has]
    for lag in range(-LAG_HOPS, LAG_HOPS + 1):
        q = query.window[LAG_HOPS + lag : LAG_HOPS + lag + nq]
        r = _pearson(lc, q - q.mean(), (1, 2), pc)
        rb = _pearson(lb, q - q.mean(axis=0, keepdims=True), (1, 2), pb)
        ra = _pearson(la, q[:na] - q[:na].mean(), (1, 2), pa)
        # Gain fit: the median query-minus-template over the template's strong cells.
        d = q[None] - t
        gain = np.zeros(n)
        if has.any():  # one vectorised median over each candidate's strong cells
            cells = np.where(strong_has, d[has], np.nan).reshape(int(has.sum()), -1)
            gain[has] = row_nanmedian(cells)
        g = gain[:, None, None]
        cont = ((d >= g - CONTAIN_TOL_DB) & strong).sum(axis=(1, 2)) / n_strong
        q_strong = (q > -STRONG_DB) & (q > floor[None, :] + ABOVE_FLOOR_DB)
        expl = ((t + g >= q[None] - EXPLAIN_TOL_DB) & q_strong[None]).sum(axis=(1, 2)) / (
            q_strong.sum() + 1e-9
        )
        better = r > out["ncc"]
        out["cont"] = np.where(better, cont, out["cont"])
        out["expl"] = np.where(better, expl, out["expl"])
        out["gain"] = np.where(better, gain, out["gain"])
        out["ncc"] = np.maximum(out["ncc"], r)
        out["nccb"] = np.maximum(out["nccb"], rb)
        out["ncca"] = np.maximum(out["ncca"], ra)
    return out


def feature_matrix(base: dict[str, np.ndarray]) -> np.ndarray:
    """[n, len(FEATURES)]: the BASE_FEATURES and each minus its best over the candidates."""
    x = np.stack([np.asarray(base[f], np.float64) for f in BASE_FEATURES], axis=1)
    return np.concatenate([x, x - x.max(axis=0, keepdims=True)], axis=1)


def probabilities(x: np.ndarray) -> np.ndarray:
    """Logistic probability that each candidate (row of :func:`feature_matrix`) is the source."""
    w = np.array([WEIGHTS[f] for f in FEATURES])
    return np.asarray(1.0 / (1.0 + np.exp(-(x @ w + BIAS))))
