"""Non-finite losses and weights: found by every rank at the same batch, then stopped or
rolled back from (``spec.train.on_divergence``).

The step keeps, on the device, the first step at which each loss went non-finite
(``GANStep.nonfinite``); the loop reads it at its periodic poll (one all-reduce for every
rank's flags) and before every checkpoint, weights included, so that a diverged state is
never written over a good one.
"""

from __future__ import annotations

import math

import torch

from ganops import jobdir
from ganops.spec.models import TrainSpec
from ganops.train.checkpoints import Checkpoints, Position
from ganops.train.ranks import Ranks
from ganops.train.step import GANStep


class DivergedError(Exception):
    """A non-finite loss or weight, seen by every rank at the same batch. ``reason``: why
    it could not be rolled back from, when it was not."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reason = ""

    def final_message(self, train: TrainSpec) -> str:
        """What the job fails with, and what to change (not what is already set)."""
        why = f"; {self.reason}" if self.reason else ""
        if train.on_divergence == "rollback":
            advice = (
                "lower the learning rates, or give the rollbacks more room (spec.train.max_rollbacks, "
                f"now {train.max_rollbacks}; spec.train.rollback_lr_factor, now {train.rollback_lr_factor})"
            )
        else:
            advice = "lower the learning rates or set spec.train.on_divergence: rollback"
        return f"{self}{why}. The newest complete checkpoint is kept; {advice}"


class DivergenceGuard:
    """Every rank's view: the checks (collectives) and the rollback."""

    def __init__(
        self, train: TrainSpec, step: GANStep, ranks: Ranks, pos: Position, checkpoints: Checkpoints, jd: jobdir.JobDir
    ) -> None:
        self.train, self.step, self.ranks, self.pos, self.checkpoints, self.jobdir = (
            train, step, ranks, pos, checkpoints, jd,
        )  # fmt: skip

    def error(self, bad: dict[str, int]) -> DivergedError:
        """What went non-finite where, over every rank (all ranks call this together)."""
        seen: dict[str, tuple[int, int]] = {}
        for rank, mine in enumerate(self.ranks.all_gather(bad)):
            for name, at in mine.items():
                if name not in seen or at < seen[name][0]:
                    seen[name] = (at, rank)
        what = ", ".join(f"{name} not finite from step {at} (rank {rank})" for name, (at, rank) in sorted(seen.items()))
        return DivergedError(f"training diverged at step {self.pos.step}: {what or 'a non-finite value'}")

    def check_before_checkpoint(self) -> float:
        """Losses and weights finite on every rank (one all-reduce), else ``DivergedError``.
        Returns the sum of G's and D's weights (the checkpoint's checksum: summed once)."""
        bad = self.step.nonfinite()
        gd, ema = self.step.weight_sums()
        weights_ok = math.isfinite(gd + ema)
        flag = torch.tensor([float(bool(bad) or not weights_ok)], device=self.ranks.device)
        self.ranks.max_tensor(flag)
        if flag[0]:
            if not weights_ok and not bad:
                bad = {"weights": self.pos.step}
            raise self.error(bad)
        return gd

    def roll_back(self, err: DivergedError) -> str | None:
        """``on_divergence: rollback``: reload the newest complete checkpoint with the learning
        rates scaled; returns what was done, or None (``err.reason`` says why) when the run
        must stop instead. Every rank calls this together."""
        if self.train.on_divergence != "rollback":
            return None
        done, limit = self.pos.rollbacks, self.train.max_rollbacks
        if done >= limit:
            err.reason = f"it diverged again after {done} rollbacks (spec.train.max_rollbacks={limit})"
            return None
        latest = self.jobdir.latest_checkpoint()
        if latest is None:
            err.reason = "no checkpoint to roll back to had been written yet"
            return None
        scale = self.step.lr_scale * self.train.rollback_lr_factor  # compounds over rollbacks
        self.checkpoints.restore_from(latest.uri)
        self.pos.rollbacks = done + 1
        self.step.scale_lr(scale)
        self.step.clear_nonfinite()
        return (
            f"{err}; rolled back to {latest.name} (step {self.pos.step}) with the learning rates x{scale:g} "
            f"(rollback {done + 1} of spec.train.max_rollbacks={limit})"
        )
