"""The driver's live display and the control channel, on the session's real Ray."""

from __future__ import annotations

import time

import pytest

REPORT = {
    "epoch": 1, "epochs": 3, "step": 10, "batch": 10, "batches_per_epoch": 40, "images_per_s": 512.4,
    "d_loss": 1.2345, "g_loss": 0.8, "d_x": 0.61, "d_g_z": 0.32, "lr_g": 1e-4, "lr_d": 1e-4,
}  # fmt: skip


@pytest.mark.slow  # a Ray actor
def test_rank_zero_progress_reaches_the_driver_line(ray_cluster: None, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    from ganops.train.control import JobControl
    from ganops.train.progress import ProgressDisplay

    control = JobControl.remote()
    ray.get(control.push.remote(REPORT))
    with ProgressDisplay(control, total_steps=120, interval_s=0.05) as display:
        deadline = time.time() + 10
        while not display.last and time.time() < deadline:
            time.sleep(0.05)
    assert display.last == REPORT
    err = capsys.readouterr().err
    assert "epoch 1/3  step 10  512 img/s  D 1.234  G 0.800  D(x) 0.61  D(G(z)) 0.32" in err
    ray.kill(control)


@pytest.mark.slow  # a Ray actor
def test_a_stop_request_is_seen_by_the_workers(ray_cluster: None) -> None:
    import ray

    from ganops.train.control import JobControl

    control = JobControl.remote()
    assert ray.get(control.stop_requested.remote()) is False
    control.request_stop.remote()
    assert ray.get(control.stop_requested.remote()) is True
    ray.kill(control)


def test_the_eta_comes_from_the_rate_since_the_first_report() -> None:
    from ganops.train.progress import ProgressDisplay

    display = ProgressDisplay(control=None, total_steps=100)
    assert display._eta(10) is None  # the first report only starts the clock
    display._first = (10, time.time() - 10.0)  # 10 steps later, 10 s later: 1 step/s
    assert display._eta(20) == pytest.approx(80, rel=0.05)


def test_a_critic_loss_shows_raw_scores_not_probabilities() -> None:
    from ganops.train.progress import format_line

    report = {k: v for k, v in REPORT.items() if k not in ("d_x", "d_g_z")}
    line = format_line({**report, "critic_real": 1.5, "critic_fake": -2.25}, None)
    assert line.endswith("C(x) 1.5  C(G(z)) -2.25") and "D(x)" not in line
