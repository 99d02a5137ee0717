"""Fit constants of the timeline engine on the tuning half (kits A, seeds 101-104).

Runs ``bench/timeline.py --half A --set NAME=VALUE`` once per value of each swept
constant and prints right / exact entries, recall, precision and CPU seconds per value
(the half-A figures the constants' comments in :mod:`emberd.library.timeline` quote).
Never run on half B: the held-out half is measured once, with the chosen values.

Usage: ``python bench/fit_timeline.py [NAME=V1,V2,... ...]``; without arguments the
sweeps of SWEEPS (the constants this script chose: NEIGHBOUR_TOP, NEIGHBOURS,
LONG_HEAD_MIN_RHO).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# name -> values tried (each run alone; the others keep their defaults in the engine).
SWEEPS: dict[str, tuple[str, ...]] = {
    "NEIGHBOUR_TOP": ("0", "3", "5", "8"),
    "NEIGHBOURS": ("4", "8"),
    "LONG_HEAD_MIN_RHO": ("-1.0", "0.6", "0.65", "0.7"),
    "NEIGHBOUR_MIN_RHO": ("0.35", "0.6", "0.8"),
}
BENCH = Path(__file__).with_name("timeline.py")
SUMMARY = re.compile(r"recall ([0-9.]+) \((\d+)/(\d+)\), precision ([0-9.]+) \((\d+)/(\d+)")
CPU = re.compile(r"\(([0-9.]+) CPU s\)")


def run(name: str, value: str) -> str:
    """One half-A run with ``name`` set to ``value``: its figures in one line."""
    out = subprocess.run([sys.executable, str(BENCH), "--half", "A", "--set",
                          f"{name}={value}"], capture_output=True, text=True, check=True).stdout
    m, c = SUMMARY.search(out), CPU.search(out)
    if m is None:
        return f"{name}={value}: no summary\n{out}"
    return (f"{name}={value}: right/exact {m[5]}/{m[6]}, recall {m[1]} ({m[2]}/{m[3]}), "
            f"precision {m[4]}, {c[1] if c else '?'} CPU s")


def main() -> None:
    """Sweep the constants named on the command line (or SWEEPS) on half A."""
    sweeps = SWEEPS
    if len(sys.argv) > 1:
        sweeps = {}
        for arg in sys.argv[1:]:
            name, _, values = arg.partition("=")
            sweeps[name] = tuple(values.split(","))
    for name, values in sweeps.items():
        for value in values:
            print(run(name, value), flush=True)


if __name__ == "__main__":
    main()
