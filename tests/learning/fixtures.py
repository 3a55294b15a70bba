"""Session fixtures and the pass rule of the learning tier (imported by tests/test_learning.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.learning import classifier
from tests.learning.judge import (  # noqa: F401 - the rule, re-exported for the tests
    CEILING_FRACTION,
    MIN_AGREEMENT,
    MIN_CLASSES,
    Judge,
    Verdict,
    ceiling_of,
    failures,
)

# -- the pass rule -------------------------------------------------------------------------
# FLOOR is the lowest FD that failure scores: uniform or gaussian noise, one image repeated,
# one class of real digits (all ~1,000-1,900 here; real digits ~1.3). A generator passes when
#  (1) its samples are digit-like: FD below CEILING_FRACTION x FLOOR,
#  (2) they cover the classes: at least MIN_CLASSES classes hold >= 5% of the samples,
#  (3) conditional: at least MIN_AGREEMENT of them show the class they were asked for
# (tests/learning/judge.py: ``failures``). The same bar holds for the plain pytorch/examples
# loop trained on the same networks and budget: a case's budget is one at which that
# reference passes too, so a ganops generator below the bar is ganops' failure, not the
# budget's. There is no weaker rule next to a reference that has not learned (issue 26: such
# a rule let a generator of 3 classes at FD 800 pass).


@dataclass
class Row:
    """One line of the results table."""

    case: str
    steps: int
    ganops: Verdict
    plain: Verdict | None
    seconds: float
    note: str = ""

    def text(self) -> str:
        p = self.plain
        ref = f"{p.fd:8.1f} {p.classes:3d}" if p is not None else f"{'-':>8} {'-':>3}"
        agree = f" {self.ganops.agreement:5.0%}" if self.ganops.agreement is not None else ""
        agree_p = f"/{p.agreement:4.0%}" if p is not None and p.agreement is not None else ""
        return (f"{self.case:38s} {self.steps:5d} | {self.ganops.fd:8.1f} {self.ganops.classes:3d} | {ref} |"
                f" {self.seconds:5.0f}s{agree}{agree_p} {self.note}")  # fmt: skip


HEADER = f"{'case':38s} {'steps':>5} | {'FD':>8} {'cls':>3} | {'plain FD':>8} {'cls':>3} |  time"
ROWS: list[Row] = []


@pytest.fixture(scope="session")
def judge() -> Judge:
    """The classifier (trained once, cached on disk) and the held-out digits' statistics."""
    j = Judge.create()
    assert j.accuracy >= classifier.MIN_ACCURACY, (
        f"the judging classifier reads only {j.accuracy:.1%} of the held-out digits right"
    )
    return j


@pytest.fixture(scope="session")
def ceiling(judge: Judge) -> float:
    """The FD a generator must stay below: a fraction of the best that noise or collapse reaches."""
    return ceiling_of(judge)


@pytest.fixture(scope="session", autouse=True)
def results_table() -> Iterator[list[Row]]:
    """Prints every case's numbers at the end of the session (``pytest -s`` shows them)."""
    yield ROWS
    if ROWS:
        print("\n\nlearning tier: FD (lower is better) and classes with >= 5% of 1,000 samples")
        print(HEADER)
        for r in ROWS:
            print(r.text())


def check(case: str, steps: int, ganops: Verdict, plain: Verdict | Callable[[], Verdict], seconds: float,
          ceiling: float, conditional: bool = False) -> None:  # fmt: skip
    """Record a case in the table and assert that ganops passes the bar, and the plain
    reference with it. ``plain`` may be a function that trains the reference: it is then run
    only when ganops fails, to say whether the budget or ganops is at fault (a passing case
    costs no reference run; ``make test-learning`` runs every one, GANOPS_LEARNING_REFERENCES=1)."""
    reasons = failures(ganops, ceiling, conditional)
    wanted = bool(reasons) or os.environ.get("GANOPS_LEARNING_REFERENCES") == "1"
    reference = plain if isinstance(plain, Verdict) else (plain() if wanted else None)
    row = Row(case, steps, ganops, reference, seconds)
    ROWS.append(row)
    print(f"\n{HEADER}\n{row.text()}  (ceiling {ceiling:.0f})")
    if reference is not None:
        budget = failures(reference, ceiling, conditional)
        assert not budget, (
            f"{case}: the plain reference does not pass the bar after {steps} steps either ({'; '.join(budget)}): "
            f"the case's budget judges nothing; give it more steps (ganops: {'; '.join(reasons) or 'passes'})"
        )
    if reasons:
        assert reference is not None  # trained above, because ganops failed
        raise AssertionError(
            f"{case}: {'; '.join(reasons)}: ganops {ganops.line()}, the plain loop passes: {reference.line()}"
        )
