"""Identification and similarity on real drum samples (Debian's hydrogen-drumkits).

Identification ("which of my samples is this?"): every sample named in a
kit's ``drumkit.xml`` is transformed and queried against a library of all the
kits; top-1 / top-5 = the source file is first / in the first five matches of
the whole pipeline (landmark stage, then embeddings), as ``emberd query``
answers. Transforms (seeded):

* ``gain_noise``: -6 dB, plus white noise 20 dB below the sample's RMS;
* ``detune_lowpass``: +30 cents (resampled, so also 1.7 % faster), 4th-order
  Butterworth low-pass at 6 kHz;
* ``reverb``: synthetic diffuse reverb (exponentially decaying noise, RT60
  0.6 s), wet at half the dry RMS, tail kept;
* ``mix``: another kit sample, peak-normalised to 6 dB below this one, summed.

Some kits make velocity layers by scaling one recording: those files are the
same waveform at different levels (waveform correlation >= COPY_RHO), and
after a gain change nothing can tell which one was played. ``top1`` counts
such a *level copy* of the source as right (the copy groups are printed);
``strict`` does not.

Also printed: candidate recall (the source among the re-ranker's candidates:
landmark, embedding and attack-vector neighbours), the share of answers with
``kind: exact`` and their precision, embeddings alone (top-1 of the similarity
stage), and top-1 on the tuning half of the queries (the half the re-ranker's
weights in ``emberd/library/rerank.py`` were fitted on: a fixed permutation,
seed TUNE_SEED, of all 703 non-silent samples) next to the held-out half.

Similarity: category precision@5 (kick / snare / hi-hat / tom / cymbal / other
from the instrument names), each library file's stored vector as the query,
itself excluded, neighbours without a category ignored.

Usage: ``python bench/identify.py [--library PATH] [--limit N] [--models aisfx dsp-baseline]``
(the library is kept in a temporary folder, ``emberd-identify-cache``, and reused: indexing is
incremental; the aiSFX index takes ~6 min on 2 loaded cores, the DSP baseline ~30 s).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emberd.dsp.sources import load_audio
from emberd.library import rerank, waveform
from emberd.library.indexer import Indexer
from emberd.library.query import (
    ATTACK_CANDIDATES,
    IDENTIFY_CANDIDATES,
    LANDMARK_CANDIDATES,
    Library,
    combine,
    query_vector,
)

KITS = Path("/usr/share/hydrogen/data/drumkits")
SR = 44100  # Hz, the models' rate
NOISE_SNR_DB = 20.0
GAIN_DB = -6.0
DETUNE_CENTS = 30.0
LOWPASS_HZ = 6000.0
RT60_S = 0.6
IR_S = 0.8
WET_RATIO = 0.5
MIX_DB = -6.0
K = 5
COPY_RHO = 0.999  # waveform correlation of two files that are one recording at two levels
TUNE_SEED = 1  # permutation of the sorted sample list; its first half tuned the re-ranker

CATEGORIES = (
    ("hi-hat", r"hi-?hat|\bhh\b|hat"),
    ("cymbal", r"cymbal|crash|ride|china|splash|bell"),
    ("kick", r"kick|bass ?drum|\bbd\b|bassdrum"),
    ("snare", r"snare|\bsd\b|rim|stick|clap"),
    ("tom", r"tom"),
)


def category(instrument: str) -> str:
    """Map a kit's instrument name to kick / snare / hi-hat / tom / cymbal / other."""
    name = instrument.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name):
            return cat
    return "other"


def kit_files() -> dict[str, str]:
    """Absolute path -> category for every sample a drumkit.xml names."""
    out: dict[str, str] = {}
    for xml in sorted(KITS.glob("*/drumkit.xml")):
        root = ET.parse(xml).getroot()
        ns = {"h": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
        pre = "h:" if ns else ""
        for inst in root.iter(f"{{{ns['h']}}}instrument" if ns else "instrument"):
            name = inst.findtext(f"{pre}name", default="", namespaces=ns)
            for fn in inst.iter(f"{{{ns['h']}}}filename" if ns else "filename"):
                path = xml.parent / (fn.text or "")
                if path.is_file():
                    out[str(path.absolute())] = category(name)
    return out


def transforms(
    pool_audio: list[np.ndarray], seed: int, mixed_in: list[int] | None = None
) -> dict[str, Callable]:
    """The four query transforms (see module docstring); ``mixed_in`` collects the index of
    the other sample of each mix, in call order."""
    import soxr
    from scipy.signal import butter, fftconvolve, sosfilt

    rng = np.random.default_rng(seed)
    n_ir = int(IR_S * SR)
    ir = rng.standard_normal(n_ir) * np.exp(-6.91 * np.arange(n_ir) / (RT60_S * SR))
    ir /= np.sqrt(np.sum(ir**2))
    sos = butter(4, LOWPASS_HZ, fs=SR, output="sos")

    def rms(y: np.ndarray) -> float:
        return float(np.sqrt(np.mean(y.astype(np.float64) ** 2) + 1e-20))

    def gain_noise(y: np.ndarray, i: int) -> np.ndarray:
        y = y * 10 ** (GAIN_DB / 20)
        return y + rng.standard_normal(len(y)).astype(np.float32) * rms(y) * 10 ** (
            -NOISE_SNR_DB / 20
        )

    def detune_lowpass(y: np.ndarray, i: int) -> np.ndarray:
        y2 = soxr.resample(y, SR * 2 ** (DETUNE_CENTS / 1200), SR)
        return sosfilt(sos, y2).astype(np.float32)

    def reverb(y: np.ndarray, i: int) -> np.ndarray:
        wet = fftconvolve(y, ir)[: len(y) + n_ir // 2]
        out = np.pad(y, (0, len(wet) - len(y))) + WET_RATIO * wet * rms(y) / rms(wet)
        return out.astype(np.float32)

    def mix(y: np.ndarray, i: int) -> np.ndarray:
        j = int(rng.integers(len(pool_audio) - 1))
        j = j + 1 if j >= i else j
        other = pool_audio[j]
        other = other * (np.max(np.abs(y)) / (np.max(np.abs(other)) + 1e-9)) * 10 ** (MIX_DB / 20)
        out = np.zeros(max(len(y), len(other)), np.float32)
        out[: len(y)] += y
        out[: len(other)] += other
        if mixed_in is not None:
            mixed_in.append(j)
        return out

    return {
        "gain_noise": gain_noise,
        "detune_lowpass": detune_lowpass,
        "reverb": reverb,
        "mix": mix,
    }


def level_copies(lib: Library) -> dict[int, int]:
    """File id -> id of its level-copy group (files that are one recording at other levels)."""
    ids = sorted(lib.files())
    snips = lib.store.snippets(ids)
    ids = [f for f in ids if f in snips]
    mat = np.stack([snips[f].samples() for f in ids])
    unit = mat / (np.linalg.norm(mat, axis=1, keepdims=True) + 1e-12)
    group = {f: f for f in ids}

    def root(f: int) -> int:
        while group[f] != f:
            f = group[f]
        return f

    # Aligned snippets of copies correlate ~1 at lag 0: confirm those pairs over all lags.
    for a, b in np.argwhere(np.triu(unit @ unit.T, 1) > 0.99).tolist():
        rho = waveform.correlate(waveform.onset_segment(mat[a]), mat[b : b + 1])[0]
        if rho[0] >= COPY_RHO:
            group[root(ids[a])] = root(ids[b])
    return {f: root(f) for f in ids}


def main() -> None:
    """Run the benchmark and print both encoders side by side."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", help="library folder to reuse (default: a temporary one)")
    ap.add_argument("--models", nargs="+", default=["aisfx", "dsp-baseline"])
    ap.add_argument("--limit", type=int, default=0, help="queries (0: all samples)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    cache = Path(tempfile.gettempdir()) / "emberd-identify-cache"
    lib_path = Path(args.library) if args.library else cache / "lib"
    for model in args.models:
        t0 = time.monotonic()
        ix = Indexer(lib_path, model, jobs=args.jobs)
        try:
            s = ix.run([str(KITS)])
        finally:
            ix.close()
        print(
            f"index {model}: indexed {s.indexed}, unchanged {s.unchanged}, skipped "
            f"{len(s.skipped)} ({time.monotonic() - t0:.1f} s)"
        )
    cats = kit_files()
    lib = Library.open(lib_path, search="exact")
    by_path = {r.path: r for r in lib.files().values()}
    queries = sorted(p for p in cats if p in by_path)
    perm = np.random.default_rng(TUNE_SEED).permutation(len(queries))
    tune = {queries[j] for j in perm[: len(queries) // 2].tolist()}
    if args.limit:
        rng = np.random.default_rng(args.seed)
        queries = sorted(rng.choice(queries, size=min(args.limit, len(queries)), replace=False))
    audio = [load_audio(p, sr=SR)[0] for p in queries]
    print(
        f"{len(cats)} samples named in drumkit.xml, {len(by_path)} files in the library, "
        f"{len(queries)} queries, categories {dict(Counter(cats[q] for q in queries))}"
    )

    truth = [by_path[p].id for p in queries]
    copies = level_copies(lib)
    sizes = Counter(copies.values())
    print(
        f"level copies: {sum(n for n in sizes.values() if n > 1)} files in "
        f"{sum(1 for n in sizes.values() if n > 1)} groups of one recording at several levels"
    )
    tfs = transforms(audio, args.seed)
    hits: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    t0 = time.monotonic()
    for name, tf in tfs.items():
        for i, (path, y) in enumerate(zip(queries, audio, strict=True)):
            yq = tf(y, i)
            lm = lib.fingerprints().match(yq, SR, top=LANDMARK_CANDIDATES)
            hits[("landmarks", name, "lm_top1")].append(float(bool(lm) and lm[0][0] == truth[i]))
            ids, _tpl, attack = lib._templates()
            tv = attack @ rerank.QueryPatch(yq, SR).attack_vector()
            pool = {f for f, _c, _o in lm} | set(ids[np.argsort(-tv)[:ATTACK_CANDIDATES]].tolist())
            split = "tune" if path in tune else "held"
            for model in args.models:
                vec = query_vector(yq, SR, model)[None, :]
                similar = lib.search(vec, max(K, IDENTIFY_CANDIDATES) + 1, model=model)[0]
                ident = lib.identify(yq, SR, similar=similar)
                full = combine(ident, similar, K)
                paths = [m["path"] for m in full]
                group = [copies.get(by_path[p].id, -1) for p in paths]
                right = copies.get(truth[i], truth[i])
                top1 = float(group[:1] == [right])
                hits[(model, name, "top1")].append(top1)
                hits[(model, name, "strict")].append(float(paths[:1] == [path]))
                hits[(model, name, f"top1_{split}")].append(top1)
                stage = ident[0].get("stage") if ident else None
                hits[(model, name, "waveform")].append(float(stage == "waveform"))
                cands = pool | {by_path[m["path"]].id for m in similar[:IDENTIFY_CANDIDATES]}
                hits[(model, name, "recall")].append(float(truth[i] in cands))
                hits[(model, name, "top5")].append(float(right in group))
                hits[(model, name, "emb_top1")].append(float(similar[0]["path"] == path))
                confirmed = bool(ident) and ident[0]["kind"] == "exact"
                hits[(model, name, "answered")].append(float(confirmed))
                if confirmed:
                    hits[(model, name, "precision")].append(float(group[0] == right))
        print(f"  {name}: done ({time.monotonic() - t0:.0f} s)", flush=True)

    def mean(key: tuple[str, str, str]) -> float:
        return float(np.mean(hits[key])) if hits[key] else float("nan")

    names = list(tfs)
    print("\nidentification, whole pipeline (emberd query): top-1 / top-5 per encoder (a level")
    print("  copy of the source counts); strict = top-1 counting the source file only;")
    print("  emb = embeddings alone top-1; lm = landmarks alone top-1; cand = source among the")
    print("  re-ranked candidates; wave = share answered by the waveform stage; exact = share")
    print("  answered kind 'exact', right = its precision; tune / held = top-1 on the")
    print("  template re-ranker's tuning half / the held-out half")
    for m in args.models:
        print(f"\n  {m}")
        print(
            f"  {'transform':16s}{'top1':>7s}{'strict':>7s}{'top5':>7s}{'emb':>7s}{'lm':>7s}"
            f"{'cand':>7s}{'wave':>7s}{'exact':>7s}{'right':>7s}{'tune':>7s}{'held':>7s}"
        )
        for name in [*names, "MEAN"]:
            keys = names if name == "MEAN" else [name]

            def avg(model: str, what: str, keys: list[str] = keys) -> float:
                return float(np.mean([mean((model, n, what)) for n in keys]))

            print(
                f"  {name:16s}{avg(m, 'top1'):7.3f}{avg(m, 'strict'):7.3f}{avg(m, 'top5'):7.3f}"
                f"{avg(m, 'emb_top1'):7.3f}{avg('landmarks', 'lm_top1'):7.3f}"
                f"{avg(m, 'recall'):7.3f}{avg(m, 'waveform'):7.3f}{avg(m, 'answered'):7.3f}"
                f"{avg(m, 'precision'):7.3f}"
                f"{avg(m, 'top1_tune'):7.3f}{avg(m, 'top1_held'):7.3f}"
            )

    print("\nsimilarity: category precision@5 (stored file vectors, self excluded)")
    for model in args.models:
        _ids, fids, _starts, matrix = lib.store.vectors(model)
        rows = lib.store.conn.execute(
            "SELECT id, is_file FROM vectors WHERE model=? ORDER BY id", (model,)
        ).fetchall()
        is_file = np.array([r[1] == 1 for r in rows])
        file_vec = {int(f): matrix[i] for i, f in enumerate(fids) if is_file[i]}
        precisions = []
        per_cat: dict[str, list[float]] = defaultdict(list)
        for path in queries:
            rec = by_path[path]
            res = lib.search(file_vec[rec.id][None, :], 40, model=model)[0]
            neigh = [m["path"] for m in res if m["path"] != path and m["path"] in cats][:K]
            p = float(np.mean([cats[n] == cats[path] for n in neigh])) if neigh else 0.0
            precisions.append(p)
            per_cat[cats[path]].append(p)
        detail = ", ".join(f"{c} {np.mean(v):.2f}" for c, v in sorted(per_cat.items()))
        print(f"  {model:14s} P@5 = {np.mean(precisions):.3f}   ({detail})")
    lib.close()


if __name__ == "__main__":
    main()
