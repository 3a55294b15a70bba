"""Is the GAN still training? Two signals from what the loop already measures (rank 0).

- ``d_overpowers_g``: D rejects G's samples with confidence, report after report, so G's
  gradient vanishes: D(G(z)) below ``D_G_Z_FLOOR`` (bce, minimax), or D's loss at about zero
  (hinge, lsgan: every sample beyond the margin / on its target), for ``WINDOW`` progress
  reports in a row. WGAN-GP's critic has no such floor: not watched.
- ``fid_regression``: FID worse than the best so far at ``spec.train.fid_patience``
  evaluations in a row (needs ``spec.eval``).

``status`` is ``ok`` or ``SIGNAL: why``: the progress line shows it, the MLflow run carries it
as the tag ``ganops.health``, and the operator turns it into the GANJob condition
``TrainingHealthy``. ``spec.train.stop_on`` lists the signals that stop training early.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ganops.tracking import HEALTH_TAG

__all__ = ["HEALTH_TAG", "OK", "Health"]

OK = "ok"
D_G_Z_FLOOR = 0.05  # mean D(G(z)) below this: D calls (almost) every fake fake
D_LOSS_FLOOR = 0.02  # hinge / lsgan D loss below this: D has nothing left to learn
WINDOW = 5  # progress reports in a row


@dataclass
class Health:
    loss: str
    fid_patience: int
    _low: int = 0
    _low_since: int | None = None
    _best_fid: float | None = None
    _best_step: int = 0
    _worse: list[float] = field(default_factory=list)
    signals: dict[str, str] = field(default_factory=dict)
    """Signal name → why, for the signals that hold now."""

    @property
    def status(self) -> str:
        if not self.signals:
            return OK
        return "; ".join(f"{name}: {why}" for name, why in sorted(self.signals.items()))

    def observe_stats(self, stats: dict[str, float], step: int) -> None:
        """A progress report's averages (over the ranks and the steps since the last one)."""
        if self.loss in ("bce", "minimax"):
            low, what = stats["d_g_z"] < D_G_Z_FLOOR, f"D(G(z)) {stats['d_g_z']:.3f} < {D_G_Z_FLOOR}"
        elif self.loss in ("hinge", "lsgan"):
            low, what = stats["d_loss"] < D_LOSS_FLOOR, f"D loss {stats['d_loss']:.4f} < {D_LOSS_FLOOR}"
        else:
            return
        if not low:
            self._low, self._low_since = 0, None
            self.signals.pop("d_overpowers_g", None)
            return
        self._low += 1
        self._low_since = self._low_since if self._low_since is not None else step
        if self._low >= WINDOW:
            self.signals["d_overpowers_g"] = (
                f"{what} in {self._low} reports in a row since step {self._low_since}: G gets almost no "
                "gradient (lower D's learning rate, or raise G's)"
            )

    def seed_best(self, fid: float, step: int) -> None:
        """The best FID of the job so far (eval/best.json), so a resumed run compares with it."""
        if self._best_fid is None or fid < self._best_fid:
            self._best_fid, self._best_step = fid, step

    def observe_fid(self, fid: float, step: int) -> None:
        """An evaluation's FID (lower is better)."""
        if self._best_fid is None or fid < self._best_fid:
            self._best_fid, self._best_step, self._worse = fid, step, []
            self.signals.pop("fid_regression", None)
            return
        self._worse.append(fid)
        if len(self._worse) >= self.fid_patience:
            worse = ", ".join(f"{f:.1f}" for f in self._worse[-self.fid_patience :])
            self.signals["fid_regression"] = (
                f"FID {worse} at the last {len(self._worse)} evaluations, worse than the best "
                f"{self._best_fid:.1f} (step {self._best_step})"
            )

    def should_stop(self, stop_on: list[str]) -> str | None:
        """The first signal in ``stop_on`` that holds, with why; None: train on."""
        for name in stop_on:
            if name in self.signals:
                return f"{name}: {self.signals[name]}"
        return None
