"""The training state on disk: one self-sufficient checkpoint directory per save.

Every rank takes part in a save (its RNG state is gathered, ``ray.train.report`` is a
barrier); rank 0 writes ``state.pt`` (G, D, their optimizers, the EMA, the position, the
fixed grid noise, every rank's RNG state), ``spec.yaml`` and, last, the marker, first into
a local directory and then into the run's storage (``storage.replace_dir_from_local``), so
a checkpoint without its marker is never resumed from.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import ray.train
import torch

from ganops import jobdir, storage
from ganops.spec import dump
from ganops.spec.models import GANJob
from ganops.train.ranks import Ranks, rank_seed
from ganops.train.step import GANStep

if TYPE_CHECKING:
    from ganops.train.stream import StreamBatches


@dataclass
class Position:
    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # batches done in total (D steps)
    rollbacks: int = 0  # divergences rolled back from in this run (spec.train.on_divergence)


@dataclass
class FixedNoise:
    """One noise batch for every sample grid, so epochs are comparable; classes in rows."""

    z: torch.Tensor
    y: torch.Tensor | None
    cols: int


class Checkpoints:
    """Saves and restores ``step``, ``pos`` and ``noise`` (updated in place on restore)."""

    def __init__(
        self, job: GANJob, jd: jobdir.JobDir, step: GANStep, ranks: Ranks, pos: Position, noise: FixedNoise,
        stream: StreamBatches | None = None,
    ) -> None:  # fmt: skip
        self.job, self.jobdir, self.step, self.ranks, self.pos, self.noise = job, jd, step, ranks, pos, noise
        self.stream = stream
        """A streamed pack's batches: which images this epoch has shown is part of the state."""

    # -- restore ------------------------------------------------------------------------
    def restore(self, resume_from: str | None) -> str | None:
        """From the newest complete checkpoint in the job's storage, else Ray Train's, else
        ``resume_from`` (the driver's pick); returns the checkpoint's name (None: none).

        The marker decides, not Ray: after a worker is lost, Ray Train's own checkpoint can
        be one behind, because a checkpoint whose files and marker were written counts for
        Ray only once every rank's report has reached its controller (a worker killed in
        between left Ray's at None, and the run restarted from scratch)."""
        latest = self.jobdir.latest_checkpoint()
        if latest is not None:
            loc = storage.locate(latest.uri)
            ckpt = ray.train.Checkpoint(loc.path, loc.fs)
        else:
            ckpt = ray.train.get_checkpoint()
            if ckpt is None and resume_from:
                loc = storage.locate(resume_from)
                ckpt = ray.train.Checkpoint(loc.path, loc.fs)
        if ckpt is None:
            return None
        self._load(ckpt)
        return posixpath.basename(ckpt.path.rstrip("/"))

    def restore_from(self, uri: str) -> None:
        """From the checkpoint at ``uri`` (a rollback: the newest complete one)."""
        loc = storage.locate(uri)
        self._load(ray.train.Checkpoint(loc.path, loc.fs))

    def _load(self, ckpt: ray.train.Checkpoint) -> None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, jobdir.STATE_FILE), map_location="cpu", weights_only=True)
        self.step.load_state_dict(state["nets"])
        for key, value in state["position"].items():
            setattr(self.pos, key, value)
        self.noise.z, self.noise.y = state["fixed_z"], state.get("fixed_y")
        if self.stream is not None and "stream" in state:
            self.stream.load_state(int(state["stream"]["epoch"]), state["stream"]["seen"].numpy())
        rng, r, seed = state["rng"], self.ranks, self.job.spec.train.seed
        if len(rng) == r.world:
            mine = rng[r.rank]
            torch.set_rng_state(mine["torch"])
            self.step.noise.set_state(mine["noise"])
            if mine.get("cuda") is not None and r.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], r.device)
        else:
            # Another world size: the old streams do not map onto ranks; start fresh ones
            # derived from the position so the run stays reproducible for this world size.
            torch.manual_seed(rank_seed(seed, r.rank, salt=2 + self.pos.step))
            self.step.noise.manual_seed(rank_seed(seed, r.rank, salt=1 + self.pos.step))

    # -- save ---------------------------------------------------------------------------
    def save_and_report(self, metrics: dict[str, Any], final: bool, checksum: float | None = None) -> None:
        """Every rank calls this (ray.train.report is a barrier); rank 0 writes. ``checksum``:
        the weights' sum if the caller has it (``DivergenceGuard.check_before_checkpoint``)."""
        ranks = self._gather_ranks(checksum)
        name = jobdir.checkpoint_name(self.pos.epoch, self.pos.batch)
        if not self.ranks.is_chief:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        assert ranks is not None  # rank 0 gathered them
        tmp = tempfile.mkdtemp(prefix="ganops-ckpt-")
        try:
            self._write(tmp, metrics, ranks, final)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=name,
                checkpoint_upload_fn=_upload_marker_last,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def save_best(self, metrics: dict[str, Any]) -> str | None:
        """Every rank: gather the RNG states; rank 0 writes the checkpoint to ``best/`` and
        returns its URI (None on the other ranks)."""
        ranks = self._gather_ranks()
        if not self.ranks.is_chief:
            return None
        assert ranks is not None  # rank 0 gathered them
        tmp = tempfile.mkdtemp(prefix="ganops-best-")
        try:
            self._write(tmp, metrics, ranks, final=False)
            info = self.jobdir.replace_best(tmp, jobdir.checkpoint_name(self.pos.epoch, self.pos.batch))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return info.uri

    def _rng_state(self) -> dict[str, torch.Tensor | None]:
        device = self.ranks.device
        return {
            "torch": torch.get_rng_state(),
            "noise": self.step.noise.get_state().cpu(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }

    def _gather_ranks(self, checksum: float | None = None) -> list[dict[str, Any]] | None:
        """Every rank's RNG state, weight checksum (and stream bits) on rank 0, which alone
        writes; None on the others (a collective)."""
        if checksum is None:
            checksum = self.step.weight_sums()[0]
        mine: dict[str, Any] = {"rng": self._rng_state(), "checksum": checksum}
        if self.stream is not None:
            mine["seen"] = self.stream.seen_bits()
        return self.ranks.gather(mine)

    def _write(self, directory: str, metrics: dict[str, Any], ranks: list[dict[str, Any]], final: bool) -> None:
        """state.pt, spec.yaml and the marker of a self-sufficient checkpoint, into a local directory."""
        state = {
            "nets": self.step.state_dict(),
            "position": vars(self.pos).copy(),
            "fixed_z": self.noise.z,
            "fixed_y": self.noise.y,
            "rng": [r["rng"] for r in ranks],
        }
        if self.stream is not None:
            # The union of the ranks' images of this epoch: a resume shows none of them again.
            seen = np.bitwise_or.reduce([r["seen"] for r in ranks])
            state["stream"] = {"epoch": self.pos.epoch, "seen": torch.from_numpy(seen)}
        torch.save(state, os.path.join(directory, jobdir.STATE_FILE))
        with open(os.path.join(directory, jobdir.SPEC_FILE), "w") as f:
            f.write(dump(self.job))
        meta = {
            **metrics,
            "world_size": self.ranks.world,
            "rank_checksums": [r["checksum"] for r in ranks],
            "final": final,
            "time": time.time(),
        }
        with open(os.path.join(directory, jobdir.MARKER), "w") as f:
            json.dump(meta, f)


def _upload_marker_last(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
    """Copy a checkpoint into the run directory with its completion marker written last."""
    storage_ctx = ray.train.get_context().get_storage()
    fs = storage_ctx.storage_filesystem
    dest = posixpath.join(storage_ctx.experiment_fs_path, dir_name)
    storage.replace_dir_from_local(checkpoint.path, fs, dest, last=jobdir.MARKER)
    return ray.train.Checkpoint(dest, fs)
