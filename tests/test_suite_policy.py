"""The suite's own rules: every skip goes through conftest's one helper.

A bare ``pytest.skip`` (or ``skipif`` / ``importorskip``) would skip in CI as
well, where ``EMBERD_REQUIRE_COMPONENTS=1`` must turn a missing component into
a failure; :func:`conftest.require` and :func:`conftest.dev_module` do that.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BARE_SKIP = re.compile(r"pytest\.(skip\(|mark\.skip|mark\.skipif|importorskip)")


def test_every_skip_goes_through_the_helper() -> None:
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name in ("conftest.py", Path(__file__).name):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if BARE_SKIP.search(line):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, "use conftest.require / dev_module:\n" + "\n".join(offenders)
