"""The per-worker training loop that Ray Train runs on every rank.

Every rank trains; only rank 0 writes (checkpoints, grids, the GIF) and reports
progress. Checkpoints are written on all ranks' behalf by rank 0 after gathering each
rank's RNG state, so a resumed run continues every rank's random stream exactly.

With ``spec.eval``, every rank makes and embeds its share of the evaluation samples and
rank 0 gathers the features, scores them, logs the scores and keeps the best checkpoint
and registered model (see ``ganops.evaluate.evaluator`` for why the work is split).
"""

from __future__ import annotations

import copy
import json
import math
import os
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist

from ganops import data as gdata
from ganops import images, jobdir, storage
from ganops.spec import dump, validate
from ganops.spec.models import GANJob
from ganops.timings import mark
from ganops.train.batches import RankBatches
from ganops.train.step import GANStep

# How often rank 0 asks the driver whether Ctrl-C was pressed (the answer is broadcast so
# every rank stops at the same batch).
STOP_POLL_BATCHES = 10


def rank_seed(seed: int, rank: int, salt: int = 0) -> int:
    """Distinct, reproducible seeds per rank (and per purpose via ``salt``)."""
    return (seed * 1_000_003 + rank * 7919 + salt * 104_729) % (2**63 - 1)


@dataclass
class Position:
    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # batches done in total (D steps)


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.job: GANJob = validate(config["job"])
        self.spec = self.job.spec
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world = ctx.get_world_size()
        self.device = ray.train.torch.get_device() if self.spec.scaling.use_gpu else torch.device("cpu")
        self.jobdir = jobdir.JobDir(self.spec.storage, self.job.name)
        self.control = ray.get_actor(config["control"]) if config.get("control") else None
        self.tracker = None
        mlflow_cfg = config.get("mlflow")
        if self.rank == 0 and mlflow_cfg:
            from ganops.tracking import RunLogger

            self.tracker = RunLogger(mlflow_cfg["uri"], mlflow_cfg["run_id"], warn=self._warn)

        torch.manual_seed(rank_seed(self.spec.train.seed, 0))  # same initial weights everywhere
        self.data = gdata.load(self.spec.data)
        mark(f"rank{self.rank}.data")
        info = self.data.info
        self.step = GANStep(
            self.spec,
            info.shape,
            info.num_classes,
            self.device,
            ddp=self.world > 1,
            noise_seed=rank_seed(self.spec.train.seed, self.rank, salt=1),
        )
        if self.tracker is not None:
            # Only a worker has the networks built: the run's description reads this tag.
            from ganops.run_note import NETWORKS_TAG, networks_summary

            sizes = [sum(p.numel() for p in net.parameters()) for net in (self.step.g, self.step.d)]
            self.tracker.set_tag(NETWORKS_TAG, networks_summary(self.step.g.config, *sizes))
        torch.manual_seed(rank_seed(self.spec.train.seed, self.rank, salt=2))  # dropout differs per rank
        self.fixed_z, self.fixed_y, self.grid_cols = self._fixed_noise(info.num_classes)
        self.pos = Position()
        self.batches = RankBatches(
            self.data.images, self.data.labels, self.spec.train.batch_size // self.world,
            rank=self.rank, world=self.world, seed=self.spec.train.seed, device=self.device,
        )  # fmt: skip
        self.batches_per_epoch = self.batches.per_epoch
        self.evaluator: Any = None  # ganops.evaluate.evaluator.Evaluator, with spec.eval
        self.best: dict[str, Any] | None = None  # rank 0: the best score so far (eval/best.json)
        self._logged_model: tuple[int, str] | None = None  # (step, model URI) of a G already in MLflow

    # -- set-up -----------------------------------------------------------------------
    def _fixed_noise(self, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """One noise batch for every grid, so epochs are comparable; classes in rows."""
        g = torch.Generator().manual_seed(rank_seed(self.spec.train.seed, 0, salt=3))
        n = self.spec.samples.num
        y = None
        cols = math.ceil(math.sqrt(n))
        if self.spec.model.conditional and num_classes:
            cols = max(1, n // num_classes)
            n = cols * num_classes
            y = torch.arange(num_classes).repeat_interleave(cols)
        z = torch.randn(n, self.spec.model.latent_dim, generator=g)
        return z, y, cols

    def restore(self) -> None:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None and self.config.get("resume_from"):
            loc = storage.locate(self.config["resume_from"])
            ckpt = ray.train.Checkpoint(loc.path, loc.fs)
        if ckpt is None:
            return
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, jobdir.STATE_FILE), map_location="cpu", weights_only=True)
        self.step.load_state_dict(state["nets"])
        self.pos = Position(**state["position"])
        self.fixed_z = state["fixed_z"]
        self.fixed_y = state.get("fixed_y")
        rng = state["rng"]
        if len(rng) == self.world:
            mine = rng[self.rank]
            torch.set_rng_state(mine["torch"])
            self.step.noise.set_state(mine["noise"])
            if mine.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        else:
            # Another world size: the old streams do not map onto ranks; start fresh ones
            # derived from the position so the run stays reproducible for this world size.
            torch.manual_seed(rank_seed(self.spec.train.seed, self.rank, salt=2 + self.pos.step))
            self.step.noise.manual_seed(rank_seed(self.spec.train.seed, self.rank, salt=1 + self.pos.step))

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        self.restore()
        spec = self.spec
        if spec.eval.every_epochs is not None:
            self._start_eval()
        stop = False
        t_log, steps_since_log = time.perf_counter(), 0
        while self.pos.epoch < spec.train.epochs and not stop:
            t_epoch = time.perf_counter()
            self.step.g.train()
            self.step.d.train()
            for real, y in self.batches.epoch(self.pos.epoch, start=self.pos.batch):
                self.step.train_batch(real, y)
                self.pos.batch += 1
                self.pos.step += 1
                steps_since_log += 1
                if self.pos.step % spec.train.log_every_steps == 0:
                    now = time.perf_counter()
                    self._log_progress(now - t_log, steps_since_log)
                    t_log, steps_since_log = now, 0
                if self.pos.step % STOP_POLL_BATCHES == 0 and self._stop_requested():
                    stop = True
                    break
            if stop:
                break
            mark(f"rank{self.rank}.epoch{self.pos.epoch + 1}")
            # Curves get a point at every epoch end too, however short the epoch.
            if steps_since_log:
                now = time.perf_counter()
                self._log_progress(now - t_log, steps_since_log)
                t_log, steps_since_log = now, 0
            self.pos.epoch += 1
            self.pos.batch = 0
            epoch_time = time.perf_counter() - t_epoch
            self._end_of_epoch(epoch_time)
        mark(f"rank{self.rank}.trained")
        if stop and steps_since_log:  # and where the run stopped
            self._log_progress(time.perf_counter() - t_log, steps_since_log)
        if stop:
            self._save_and_report(self._metrics(), final=True)
        if self.rank == 0 and spec.samples.gif and not stop:
            self._write_gif()
            mark("rank0.gif")
        if self.rank == 0 and not stop:
            self._log_model()
            mark("rank0.model")

    def finish(self) -> None:
        """Flush rank 0's MLflow writes (retried through short outages)."""
        if self.tracker is not None:
            self.tracker.close()

    def _warn(self, message: str) -> None:
        if self.control is not None:
            self.control.warn.remote(message)

    def _log_model(self) -> None:
        if self.tracker is None:
            return
        from ganops.tracking import CHECKPOINT_TAG, log_generator

        cfg = self.config["mlflow"]
        latest = self.jobdir.latest_checkpoint()
        if latest is not None:
            self.tracker.set_tag(CHECKPOINT_TAG, latest.uri)
        if self._logged_model is not None and self._logged_model[0] == self.pos.step:
            uri: str | None = self._logged_model[1]  # the final G is the champion just registered
        else:
            uri = log_generator(
                cfg["uri"], cfg["run_id"], self.step.sampler, self.spec.tracking.register_as, self._warn
            )
        if uri:
            self.tracker.set_tag("ganops.model_uri", uri)

    def _end_of_epoch(self, epoch_time: float) -> None:
        spec = self.spec
        e = self.pos.epoch
        if self.rank == 0 and (e % spec.samples.every_epochs == 0 or e == spec.train.epochs):
            self._write_grid(e)
        metrics = self._metrics()
        metrics["epoch_time_s"] = epoch_time
        if self.tracker is not None:
            self.tracker.log_metrics({"epoch": e, "epoch_time_s": epoch_time}, self.pos.step)
        last = e == spec.train.epochs
        if self.evaluator is not None and (e % (spec.eval.every_epochs or 1) == 0 or last):
            self._evaluate()
        if e % spec.checkpoint.every_epochs == 0 or last:
            self._save_and_report(metrics, final=last)
        else:
            ray.train.report(metrics)

    def _metrics(self) -> dict[str, Any]:
        return {"epoch": self.pos.epoch, "batch": self.pos.batch, "step": self.pos.step}

    def _log_progress(self, elapsed: float, steps: int) -> None:
        stats = self.step.take_stats()
        if self.world > 1:
            # Average over ranks: one small all-reduce per log step.
            t = torch.tensor(list(stats.values()), device=self.device)
            dist.all_reduce(t)
            stats = dict(zip(stats, (t / self.world).tolist(), strict=True))
        if self.rank != 0:
            return
        images_per_s = steps * self.spec.train.batch_size / max(elapsed, 1e-9)
        lrs = {"lr_g": self.step.opt_g.param_groups[0]["lr"], "lr_d": self.step.opt_d.param_groups[0]["lr"]}
        if self.tracker is not None:
            self.tracker.log_metrics({**stats, "images_per_s": images_per_s, **lrs}, self.pos.step)
        if self.control is None:
            return
        self.control.push.remote(
            {
                **stats,
                "epoch": self.pos.epoch + 1,
                "epochs": self.spec.train.epochs,
                "batch": self.pos.batch,
                "batches_per_epoch": self.batches_per_epoch,
                "step": self.pos.step,
                "images_per_s": images_per_s,
                **lrs,
                "time": time.time(),
            }
        )

    def _stop_requested(self) -> bool:
        flag = torch.zeros(1, device=self.device)
        if self.rank == 0 and self.control is not None:
            flag[0] = float(ray.get(self.control.stop_requested.remote()))
        if self.world > 1:
            dist.broadcast(flag, src=0)
        return bool(flag.item())

    # -- outputs (rank 0) -------------------------------------------------------------
    @torch.no_grad()
    def _write_grid(self, epoch: int) -> None:
        net = self.step.sampler
        was_training = net.training
        net.eval()
        y = self.fixed_y.to(self.device) if self.fixed_y is not None else None
        imgs = net(self.fixed_z.to(self.device), y).float().cpu().numpy()
        net.train(was_training)
        tile = images.grid(images.to_uint8(imgs), ncols=self.grid_cols)
        png = images.png_bytes(tile)
        storage.write_bytes(self.jobdir.samples.child(jobdir.sample_name(epoch)), png)
        if self.tracker is not None:
            # Keyed by step, so the MLflow UI's step slider walks through training.
            self.tracker.log_image(png, "samples", self.pos.step)

    def _write_gif(self) -> None:
        names = self.jobdir.sample_grids()
        if not names:
            return
        frames = [storage.read_bytes(self.jobdir.samples.child(n)) for n in names]
        gif = images.gif_bytes(frames)
        storage.write_bytes(self.jobdir.samples.child(jobdir.GIF_FILE), gif)
        if self.tracker is not None:
            self.tracker.log_bytes(gif, f"samples/{jobdir.GIF_FILE}")

    def _rng_state(self) -> dict[str, torch.Tensor | None]:
        return {
            "torch": torch.get_rng_state(),
            "noise": self.step.noise.get_state().cpu(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def _checksum(self) -> float:
        """Sum of G's and D's weights: equal on every rank while DDP keeps them in sync."""
        with torch.no_grad():
            params = [*self.step.g.parameters(), *self.step.d.parameters()]
            return float(sum(p.double().sum() for p in params))

    def _gather_ranks(self) -> list[dict[str, Any]]:
        """Every rank's RNG state and weight checksum, on every rank (a collective)."""
        mine = {"rng": self._rng_state(), "checksum": self._checksum()}
        ranks: list[Any] = [mine]
        if self.world > 1:
            ranks = [None] * self.world
            dist.all_gather_object(ranks, mine)
        return ranks

    def _write_checkpoint(
        self, directory: str, metrics: dict[str, Any], ranks: list[dict[str, Any]], final: bool
    ) -> None:
        """state.pt, spec.yaml and the marker of a self-sufficient checkpoint, into a local directory."""
        state = {
            "nets": self.step.state_dict(),
            "position": vars(self.pos).copy(),
            "fixed_z": self.fixed_z,
            "fixed_y": self.fixed_y,
            "rng": [r["rng"] for r in ranks],
        }
        torch.save(state, os.path.join(directory, jobdir.STATE_FILE))
        with open(os.path.join(directory, jobdir.SPEC_FILE), "w") as f:
            f.write(dump(self.job))
        meta = {
            **metrics,
            "world_size": self.world,
            "rank_checksums": [r["checksum"] for r in ranks],
            "final": final,
            "time": time.time(),
        }
        with open(os.path.join(directory, jobdir.MARKER), "w") as f:
            json.dump(meta, f)

    def _save_and_report(self, metrics: dict[str, Any], final: bool) -> None:
        """Every rank calls this (ray.train.report is a barrier); rank 0 writes."""
        ranks = self._gather_ranks()
        name = jobdir.checkpoint_name(self.pos.epoch, self.pos.batch)
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        tmp = tempfile.mkdtemp(prefix="ganops-ckpt-")
        try:
            self._write_checkpoint(tmp, metrics, ranks, final)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=name,
                checkpoint_upload_fn=_upload_marker_last,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- evaluation (spec.eval) ----------------------------------------------------------
    def _gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, in rank order (None on the others)."""
        if self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def _broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _start_eval(self) -> None:
        """Load the Inception network (its sha256 checked) and the reference statistics.

        Before the first batch, so that a missing or wrong weights file fails the job at
        once rather than after the first evaluation epoch. Every rank takes part.
        """
        from ganops.evaluate.evaluator import EvalSettings, Evaluator

        settings = EvalSettings.from_spec(self.spec)
        self.evaluator = Evaluator(
            self.spec, settings, self.device, rank=self.rank, world=self.world,
            gather=self._gather, broadcast=self._broadcast, warn=self._warn,
        )  # fmt: skip
        same_data = settings.reference_split == self.spec.data.split
        self.evaluator.prepare_reference(self.data if same_data else None)
        if self.rank != 0:
            return
        best = self.jobdir.read_best()
        if best is not None and best.get("setup") != self.evaluator.setup_key:
            self._warn(
                f"the job's best FID so far ({best.get('fid')}) was measured another way (reference data, "
                "spec.eval.num_samples or weights changed); the next score starts a new best"
            )
            best = None
        self.best = best
        if self.tracker is not None:
            ref = self.evaluator.reference
            self.tracker.set_tag(
                "ganops.eval.reference",
                f"{ref.meta['dataset']} {ref.meta['split']}: {ref.num_images} of {ref.meta['available']} images",
            )
            self.tracker.set_tag("ganops.eval.num_samples", str(settings.num_samples))

    def _eval_generator(self) -> torch.nn.Module:
        """A copy of the sampler (EMA of G when enabled) with rank 0's weights and buffers.

        Ranks share G's weights but each keeps its own BatchNorm statistics; the copy makes
        every rank's share of the samples come from the G that rank 0 checkpoints and exports.
        """
        net = copy.deepcopy(self.step.sampler)
        if self.world > 1:
            with torch.no_grad():
                for t in net.state_dict().values():
                    dist.broadcast(t, src=0)
        return net.eval()

    def _evaluate(self) -> None:
        """Every rank: score G; rank 0 logs the scores and keeps what improved."""
        t0 = time.perf_counter()
        net = self._eval_generator()
        scores = self.evaluator.score(net, self.spec.model.latent_dim, self.step.num_classes)
        del net
        improved = False
        if self.rank == 0:
            assert scores is not None
            scores.record.update({"epoch": self.pos.epoch, "step": self.pos.step})
            if self.tracker is not None:
                metrics = {**scores.mlflow_metrics(), "eval/time_s": time.perf_counter() - t0}
                self.tracker.log_metrics(metrics, self.pos.step)
                self.tracker.log_bytes(
                    json.dumps(scores.record, indent=1, sort_keys=True).encode(),
                    f"eval/{jobdir.eval_record_name(self.pos.step)}",
                )
            self.jobdir.write_eval_record(self.pos.step, scores.record)
            fid = scores.fid
            improved = fid is not None and (self.best is None or fid < float(self.best["fid"]))
        if not self._broadcast(improved):
            return
        best_uri = self._write_best(scores) if self.spec.checkpoint.keep_best else None
        if self.rank == 0:
            assert scores is not None
            self._new_best(scores, best_uri)

    def _write_best(self, scores: Any) -> str | None:
        """Every rank: gather the RNG states; rank 0 writes the checkpoint to ``best/``."""
        ranks = self._gather_ranks()
        if self.rank != 0:
            return None
        metrics = {**self._metrics(), "eval": scores.values, "setup": self.evaluator.setup_key}
        tmp = tempfile.mkdtemp(prefix="ganops-best-")
        try:
            self._write_checkpoint(tmp, metrics, ranks, final=False)
            info = self.jobdir.replace_best(tmp, jobdir.checkpoint_name(self.pos.epoch, self.pos.batch))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return info.uri

    def _new_best(self, scores: Any, checkpoint_uri: str | None) -> None:
        """Rank 0: record the new best FID; with a registered model, maybe a new champion."""
        fid = float(scores.fid)
        record: dict[str, Any] = {
            "fid": fid, "epoch": self.pos.epoch, "step": self.pos.step, "setup": self.evaluator.setup_key,
            "checkpoint": checkpoint_uri, "scores": scores.values, "time": time.time(),
        }  # fmt: skip
        register_as = self.spec.tracking.register_as
        cfg = self.config.get("mlflow")
        if register_as and cfg and self.tracker is not None:
            from ganops.tracking import promote_if_better

            promo = promote_if_better(
                cfg["uri"], cfg["run_id"], self.step.sampler, register_as, fid, self.evaluator.setup_key,
                self.pos.step, self._warn,
            )  # fmt: skip
            if promo is not None:
                record.update({"model_uri": promo.model_uri, "registered_version": promo.version})
                self._logged_model = (self.pos.step, promo.model_uri)
                self.tracker.set_tag("ganops.champion_version", promo.version)
        self.jobdir.write_best(record)
        self.best = record
        if self.tracker is not None:
            self.tracker.set_tag("ganops.best_fid", repr(fid))
            self.tracker.set_tag("ganops.best_step", str(self.pos.step))
            if checkpoint_uri:
                self.tracker.set_tag("ganops.best_checkpoint", checkpoint_uri)


def _upload_marker_last(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
    """Copy a checkpoint into the run directory with its completion marker written last."""
    storage_ctx = ray.train.get_context().get_storage()
    fs = storage_ctx.storage_filesystem
    dest = posixpath.join(storage_ctx.experiment_fs_path, dir_name)
    storage.replace_dir_from_local(checkpoint.path, fs, dest, last=jobdir.MARKER)
    return ray.train.Checkpoint(dest, fs)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``TorchTrainer(train_loop_per_worker, ...)``)."""
    # Ray sets OMP_NUM_THREADS from the CPUs reserved for the worker; make torch follow it
    # even when torch was imported before the variable took effect.
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    for key, value in (config.get("env") or {}).items():
        os.environ.setdefault(key, value)
    rank = ray.train.get_context().get_world_rank()
    mark(f"rank{rank}.start")
    worker = Worker(config)
    mark(f"rank{rank}.ready")
    try:
        worker.run()
    finally:
        worker.finish()
        mark(f"rank{rank}.done")
