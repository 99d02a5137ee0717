"""The final stage keeps a refined stage's well-correlated file (STAGE_TRUST_RHO).

A quiet hit under an unexplained tail: the refined stages correlate its file well, more
sound at the final stage lowers every correlation under SIMILAR_TRUST_RHO, and the class
model names another instrument. The file the refined stage named stays the answer.
"""

from __future__ import annotations

import numpy as np

from emberd.daemon.hits import SIMILAR_TRUST_RHO, STAGE_TRUST_RHO, near_answer

CLASSES = ["clap", "cymbal", "clap", "cymbal"]  # instrument class of index rows 0..3
ROWS = np.array([0, 1, 2, 3])


def test_a_refined_stage_correlating_stage_trust_rho_is_trusted() -> None:
    rho = np.array([STAGE_TRUST_RHO + 0.01, 0.3, 0.2, 0.1])
    answer, trusted = near_answer("refined", ROWS, rho, 0, 0, CLASSES, None)
    assert (answer, trusted) == (0, 0)
    rho[0] = STAGE_TRUST_RHO - 0.01  # just under: nothing is trusted
    assert near_answer("refined", ROWS, rho, 0, 0, CLASSES, None) == (0, None)


def test_final_keeps_the_trusted_file_over_the_class_models_pick() -> None:
    # Final: the best is cymbal row 1 under SIMILAR_TRUST_RHO, the class model's pick is
    # clap row 2, and the refined stage trusted clap row 0.
    rho = np.array([0.35, SIMILAR_TRUST_RHO - 0.1, 0.2, 0.3])
    answer, trusted = near_answer("final", ROWS, rho, 1, 2, CLASSES, 0)
    assert rho[1] < SIMILAR_TRUST_RHO  # the final's evidence is weak ...
    assert CLASSES[1] != CLASSES[2]  # ... and the model would pick another file
    assert answer == 0 and trusted == 0  # the refined stage's file stays


def test_final_without_a_trusted_file_takes_the_vote() -> None:
    rho = np.array([0.35, SIMILAR_TRUST_RHO - 0.1, 0.2, 0.3])
    assert near_answer("final", ROWS, rho, 1, 2, CLASSES, None)[0] == 2
    # A trusted row that is no candidate any more cannot be the answer either.
    assert near_answer("final", ROWS[1:], rho[1:], 0, 1, CLASSES, 0)[0] == 1


def test_strong_final_evidence_is_the_answer_whatever_was_trusted() -> None:
    rho = np.array([0.35, SIMILAR_TRUST_RHO + 0.1, 0.2, 0.3])
    assert near_answer("final", ROWS, rho, 1, 2, CLASSES, 0)[0] == 1
