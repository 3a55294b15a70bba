"""The training-health signals (ganops.train.health) on sequences of reports, and the
GANJob condition the operator makes of them; the real runs are in tests/test_failures.py."""

from __future__ import annotations

import pytest

from ganops.k8s.operator import health_conditions
from ganops.train.health import OK, WINDOW, Health


def _report(h: Health, d_g_z: float, step: int, d_loss: float = 1.0) -> None:
    h.observe_stats({"d_loss": d_loss, "g_loss": 3.0, "d_x": 0.9, "d_g_z": d_g_z}, step)


def test_d_overpowering_g_needs_a_run_of_reports_and_clears_when_g_catches_up() -> None:
    h = Health("bce", fid_patience=3)
    for i in range(WINDOW - 1):
        _report(h, 0.01, 10 * (i + 1))
    assert h.status == OK  # a few low reports are noise
    _report(h, 0.01, 50)
    assert "d_overpowers_g" in h.signals and "since step 10" in h.signals["d_overpowers_g"]
    assert h.should_stop(["d_overpowers_g"]).startswith("d_overpowers_g: D(G(z)) 0.010 < 0.05")
    assert h.should_stop(["fid_regression"]) is None
    _report(h, 0.3, 60)
    assert h.status == OK and h.should_stop(["d_overpowers_g"]) is None


@pytest.mark.parametrize("loss,watched", [("hinge", True), ("lsgan", True), ("wgan_gp", False)])
def test_critic_losses_are_judged_by_the_d_loss_and_wgan_gp_not_at_all(loss: str, watched: bool) -> None:
    h = Health(loss, fid_patience=3)
    for i in range(WINDOW):
        h.observe_stats({"d_loss": 0.001, "g_loss": 1.0, "critic_real": 2.0, "critic_fake": -2.0}, i)
    assert ("d_overpowers_g" in h.signals) is watched


def test_fid_regression_counts_evaluations_worse_than_the_best() -> None:
    h = Health("bce", fid_patience=3)
    for step, fid in ((100, 80.0), (200, 60.0), (300, 65.0), (400, 61.0)):
        h.observe_fid(fid, step)
    assert h.status == OK  # two worse than the best (60) so far
    h.observe_fid(70.0, 500)
    assert h.signals["fid_regression"] == (
        "FID 65.0, 61.0, 70.0 at the last 3 evaluations, worse than the best 60.0 (step 200)"
    )
    h.observe_fid(59.0, 600)  # a new best clears it
    assert h.status == OK


def test_a_resumed_run_counts_regressions_from_the_jobs_best_so_far() -> None:
    h = Health("bce", fid_patience=2)
    h.seed_best(50.0, 160)  # eval/best.json of the earlier run
    h.observe_fid(55.0, 200)
    h.observe_fid(58.0, 240)
    assert h.signals["fid_regression"].endswith("worse than the best 50.0 (step 160)")


def test_the_health_tag_becomes_the_training_healthy_condition() -> None:
    running = [{"type": "Running", "status": "True", "reason": "Running", "message": "training"}]
    sick = health_conditions(running, "d_overpowers_g: D(G(z)) 0.010 < 0.05 in 5 reports")
    assert sick is not None and sick[0] == running[0]
    cond = sick[1]
    assert (cond["type"], cond["status"], cond["reason"]) == ("TrainingHealthy", "False", "DOverpowersG")
    assert health_conditions(sick, "d_overpowers_g: D(G(z)) 0.010 < 0.05 in 5 reports") is None  # unchanged
    well = health_conditions(sick, OK)
    assert well is not None and [c["type"] for c in well] == ["Running", "TrainingHealthy"]
    assert (well[1]["status"], well[1]["reason"]) == ("True", "Healthy")
    assert health_conditions(running, None) is None  # no tag yet: no condition
