"""Whole-set indexing time: every hydrogen-drumkits file, ``emberd index`` as a user runs it.

The README's "the whole hydrogen-drumkits set indexed in N s" figures come from here.
For each model (default aiSFX and the DSP baseline) the real CLI indexes the whole kit
folder into a fresh library in a child process; the wall time of that process is the
figure. Anchor, same run: ``emberd index`` of the same folder again into the finished
library (nothing new to embed: scanning, hashing and the SQLite check only), so the
ratio says how much of the time is embedding. The first lines say when, on what
machine and at which load it ran.

Run it alone (``flock /tmp/emberd-bench.lock python bench/index_kits.py``): the
figures are wall times.

Usage: ``python bench/index_kits.py [--models aisfx dsp-baseline] [DIR]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KITS = "/usr/share/hydrogen/data/drumkits"
TIMEOUT_S = 3600.0  # one whole-set index on a slow machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _index(folder: str, library: Path, model: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "emberd", "index", folder, "--library", str(library),
           "--model", model, "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"emberd index failed: {proc.stderr.strip()[-500:]}")
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("indexed ")]
    return took, summary[-1] if summary else "no summary line"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=KITS, help="sample folder (default: the kits)")
    ap.add_argument("--models", nargs="+", default=["aisfx", "dsp-baseline"],
                    help="models to index with, one fresh library each")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"{os.cpu_count()} CPUs ({_cpu_model()}), load {load:.1f} at start; "
          f"emberd index --jobs {os.cpu_count()} (default)", flush=True)
    with tempfile.TemporaryDirectory(prefix="emberd-index-kits-") as tmp:
        for model in args.models:
            library = Path(tmp) / model
            took, summary = _index(args.dir, library, model)
            again, _ = _index(args.dir, library, model)
            print(f"{model}: {took:.1f} s ({summary}); re-index of the unchanged set "
                  f"(anchor) {again:.1f} s: embedding is {1 - again / took:.0%} of the time; "
                  f"load {os.getloadavg()[0]:.1f} at end", flush=True)


if __name__ == "__main__":
    main()
