"""``emberd.library.query.one_blas_thread``: the query path's one-BLAS-thread limit is
process-wide, so only ``emberd query``'s main thread takes it; the daemon's threads (a
search every hop beside a capture's query) leave the process's BLAS threads as they are.

Each case runs in a fresh interpreter started with two OpenBLAS threads, so what it sees
does not depend on this process's earlier limits or on the machine's core count."""

from __future__ import annotations

import os
import subprocess
import sys

PRELUDE = """
import threading
import numpy as np
from threadpoolctl import ThreadpoolController
from emberd.library.query import one_blas_thread

def blas_threads():
    return min(lib["num_threads"] for lib in ThreadpoolController().select(user_api="blas").info())

np.ones((2, 2)) @ np.ones((2, 2))
print(blas_threads())
"""


def _run(body: str) -> list[int]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", PRELUDE + body], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [int(x) for x in out.split()]


def test_the_main_thread_gets_one_thread_and_back() -> None:
    seen = _run("""
with one_blas_thread():
    with one_blas_thread():
        print(blas_threads())
    print(blas_threads())
print(blas_threads())
""")
    assert seen == [2, 1, 1, 2]


def test_overlapping_daemon_threads_leave_the_threads_as_they_were() -> None:
    seen = _run("""
a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

def worker_search():  # in first, out first
    with one_blas_thread():
        a_in.set()
        b_in.wait(5)
    a_out.set()

def capture_query():  # in second, out last
    a_in.wait(5)
    with one_blas_thread():
        b_in.set()
        a_out.wait(5)

threads = [threading.Thread(target=worker_search), threading.Thread(target=capture_query)]
for t in threads:
    t.start()
for t in threads:
    t.join(10)
print(blas_threads())
""")
    assert seen == [2, 2]  # a per-call limit on these threads left 1 here
