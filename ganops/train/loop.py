"""The per-worker training loop that Ray Train runs on every rank.

Every rank trains; only rank 0 writes (checkpoints, grids, the GIF) and reports
progress. Checkpoints are written on all ranks' behalf by rank 0 after gathering each
rank's RNG state, so a resumed run continues every rank's random stream exactly.

With ``spec.eval``, every rank makes and embeds its share of the evaluation samples and
rank 0 gathers the features, scores them, logs the scores and keeps the best checkpoint
and registered model (see ``ganops.evaluate.evaluator`` for why the work is split).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
import torch

from ganops import data as gdata
from ganops import images, jobdir, storage
from ganops.errors import JobFailedError, UserError
from ganops.nets import size
from ganops.spec import validate
from ganops.spec.models import GANJob
from ganops.timings import mark
from ganops.tracking import DIVERGED_TAG, HEALTH_TAG, RESTARTS_TAG, ROLLBACKS_TAG, STOPPED_TAG
from ganops.train.batches import RankBatches
from ganops.train.checkpoints import Checkpoints, FixedNoise, Position
from ganops.train.divergence import DivergedError, DivergenceGuard
from ganops.train.evaluation import EvalRound
from ganops.train.health import OK, Health
from ganops.train.precision import describe as describe_device
from ganops.train.precision import emulation_warning, native_bf16
from ganops.train.ranks import Ranks, rank_seed
from ganops.train.step import GANStep
from ganops.train.stream import StreamBatches

# How often the ranks agree (one small all-reduce) on whether Ctrl-C was pressed, a timed
# checkpoint is due, or a loss went non-finite, so that every rank acts at the same batch.
POLL_BATCHES = 10
# The MLflow param of what spec.train.precision (the param train.precision) resolved to.
PRECISION_PARAM = "train.precision_resolved"


__all__ = ["MLflowRun", "Worker", "WorkerConfig", "rank_seed", "train_loop_per_worker"]


@dataclass(frozen=True)
class MLflowRun:
    """The run the driver opened; rank 0 logs to it."""

    uri: str
    run_id: str


@dataclass(frozen=True)
class WorkerConfig:
    """What the driver hands every rank (``TorchTrainer``'s ``train_loop_config["worker"]``)."""

    job: dict[str, Any]
    """The resolved GANJob, as a dict (validated again on the worker)."""
    control: str | None = None
    """Name of the driver's ``JobControl`` actor: progress lines, warnings, Ctrl-C."""
    resume_from: str | None = None
    """The checkpoint the driver chose to resume from (Ray Train's own wins after a restart)."""
    mlflow: MLflowRun | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Non-secret settings the workers need (``rayinit.worker_env``)."""


class Worker:
    """One rank's training: the loop below, with its checkpoints (``Checkpoints``) and
    evaluation rounds (``EvalRound``) as parts of their own."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.job: GANJob = validate(config.job)
        self.spec = spec = self.job.spec
        ctx = ray.train.get_context()
        device = ray.train.torch.get_device() if spec.scaling.use_gpu else torch.device("cpu")
        self.ranks = r = Ranks(ctx.get_world_rank(), ctx.get_world_size(), device)
        self.jobdir = jobdir.JobDir(spec.storage, self.job.name)
        self.control = ray.get_actor(config.control) if config.control else None
        if self.control is not None:
            self.control.worker_started.remote(r.rank, os.getpid())
        self.tracker = None
        if r.is_chief and config.mlflow:
            from ganops.tracking import RunLogger

            self.tracker = RunLogger(config.mlflow.uri, config.mlflow.run_id, warn=self._warn)
            self.tracker.set_tag(HEALTH_TAG, OK)  # a fresh verdict for every (re)start

        torch.manual_seed(rank_seed(spec.train.seed, 0))  # same initial weights everywhere
        per_rank = spec.train.batch_size // r.world
        self.data: gdata.ArrayDataset | None = None
        self.stream: StreamBatches | None = None
        if spec.data.dataset in gdata.STREAMED:  # a pack: Ray Data reads it, no copy here
            self.stream = StreamBatches(spec.data, per_rank, r, seed=spec.train.seed, device=device)
            info = self.stream.info
        else:
            self.data = gdata.load(spec.data)
            info = self.data.info
        mark(f"rank{r.rank}.data")
        # Sized before it is built: a network no worker can hold is the spec's error (named
        # fields, no retries), not workers killed one after another and reported "lost".
        if device.type == "cuda":
            memory = (torch.cuda.get_device_properties(device).total_memory, 1)
        else:
            available = size.available_memory()
            memory = None if available is None else (available, ctx.get_local_world_size())
        classes = info.num_classes if spec.model.conditional else None
        size.check_fits(spec.model, spec.train, info.shape, classes, workers=r.world, memory=memory)
        self.step = GANStep(
            spec, info.shape, info.num_classes, device, ddp=r.world > 1,
            noise_seed=rank_seed(spec.train.seed, r.rank, salt=1),
        )  # fmt: skip
        if self.tracker is not None:
            # Only a worker has the networks built: the run's description reads this tag.
            from ganops.run_note import NETWORKS_TAG, networks_summary

            sizes = [sum(p.numel() for p in net.parameters()) for net in (self.step.g, self.step.d)]
            self.tracker.set_tag(NETWORKS_TAG, networks_summary(self.step.g.config, *sizes))
        torch.manual_seed(rank_seed(spec.train.seed, r.rank, salt=2))  # dropout differs per rank
        self.noise = self._fixed_noise(info.num_classes)
        self.pos = Position()
        # Rank 0 watches the training's health (ganops.train.health); a stop_on signal stops
        # every rank at the next poll or epoch end.
        self.health = Health(spec.train.loss, spec.train.fid_patience) if r.is_chief else None
        self._stop_reason: str | None = None
        self.batches: RankBatches | StreamBatches
        if self.stream is not None:
            self.batches = self.stream
        else:
            assert self.data is not None
            self.batches = RankBatches(
                self.data.images, self.data.labels, per_rank,
                rank=r.rank, world=r.world, seed=spec.train.seed, device=device,
            )  # fmt: skip
        self.batches_per_epoch = self.batches.per_epoch
        self.step.run_batches = spec.train.epochs * self.batches_per_epoch  # linear lr_decay's length
        self.checkpoints = Checkpoints(self.job, self.jobdir, self.step, r, self.pos, self.noise, self.stream)
        self.divergence = DivergenceGuard(spec.train, self.step, r, self.pos, self.checkpoints, self.jobdir)
        self.eval: EvalRound | None = None
        if spec.eval.enabled:
            self.eval = EvalRound(
                self.job, config.mlflow, self.jobdir, self.step, r, self.pos, self.checkpoints, self.tracker, self._warn
            )

    def _fixed_noise(self, num_classes: int | None) -> FixedNoise:
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
        return FixedNoise(z, y, cols)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        restored = self.checkpoints.restore(self.config.resume_from)
        self._announce_attempt(restored)
        self._announce_precision()
        spec = self.spec
        if self.eval is not None:
            self.eval.start(self.data)
            best = self.eval.best  # the job's best so far (rank 0): regressions count from it
            if self.health is not None and best is not None:
                self.health.seed_best(float(best["fid"]), int(best.get("step", 0)))
        self._last_save = self._training_since = time.monotonic()
        stop = False
        t_log, steps_since_log = time.perf_counter(), 0
        while self.pos.epoch < spec.train.epochs and not stop:
            t_epoch = time.perf_counter()
            self.step.g.train()
            self.step.d.train()
            save_at_epoch_end = False
            try:
                for real, y in self.batches.epoch(self.pos.epoch, start=self.pos.batch):
                    # (1) D on real and fake, (2) G through D: the GAN step (ganops.train.step)
                    self.step.train_batch(real, y)
                    self.pos.batch += 1
                    self.pos.step += 1
                    steps_since_log += 1
                    every = spec.checkpoint.every_steps
                    save = every is not None and self.pos.step % every == 0
                    if self.pos.step % POLL_BATCHES == 0:
                        stop, save_due = self._poll()  # raises DivergedError
                        if stop:
                            break
                        save = save or save_due
                    if self.pos.step % spec.train.log_every_steps == 0:
                        now = time.perf_counter()
                        self._log_progress(now - t_log, steps_since_log)
                        t_log, steps_since_log = now, 0
                    if self._eval_due_at_step() and self.pos.batch < self.batches_per_epoch:
                        self._evaluate()  # mid-epoch (at an epoch's end: with the epoch's)
                    if save and self.pos.batch < self.batches_per_epoch:
                        self._checkpoint(self._metrics(), final=False)  # mid-epoch
                    elif save:
                        save_at_epoch_end = True
                if stop:
                    break
                mark(f"rank{self.ranks.rank}.epoch{self.pos.epoch + 1}")
                # Curves get a point at every epoch end too, however short the epoch.
                if steps_since_log:
                    now = time.perf_counter()
                    self._log_progress(now - t_log, steps_since_log)
                    t_log, steps_since_log = now, 0
                self.pos.epoch += 1
                self.pos.batch = 0
                stop = self._end_of_epoch(time.perf_counter() - t_epoch, save_at_epoch_end)
            except DivergedError as d:
                if not self._roll_back(d):
                    self._fail_diverged(d)
                    return
                t_log, steps_since_log = time.perf_counter(), 0
        mark(f"rank{self.ranks.rank}.trained")
        if stop and steps_since_log:  # and where the run stopped
            self._log_progress(time.perf_counter() - t_log, steps_since_log)
        if stop:
            try:
                self._checkpoint(self._metrics(), final=True)
            except DivergedError as d:  # Ctrl-C on a diverged run: keep the good checkpoints
                self._fail_diverged(d)
                return
        # A run that a health signal stopped (spec.train.stop_on) is finished: GIF and model as
        # at the last epoch. One stopped by Ctrl-C is to be resumed.
        finished = not stop or self._stop_reason is not None
        if self.ranks.is_chief and stop and finished and self.pos.batch:
            self._write_grid(self.pos.epoch, self.pos.batch)  # the GIF's last frame: where it stopped
        if self.ranks.is_chief and spec.samples.gif and finished:
            self._write_gif()
            mark("rank0.gif")
        if self.ranks.is_chief and finished:
            self._log_model()
            mark("rank0.model")

    # -- failures: retries, divergence ---------------------------------------------------
    def _announce_attempt(self, restored: str | None) -> None:
        """After Ray Train restarted the worker group (a worker was lost), say so and from where."""
        if not self.ranks.is_chief or self.control is None:
            return
        attempt = ray.get(self.control.start_attempt.remote())
        if attempt == 1:
            return
        where = (
            f"{restored} (epoch {self.pos.epoch}, batch {self.pos.batch}, step {self.pos.step})"
            if restored
            else "the start (no checkpoint had been written)"
        )
        limit = self.spec.scaling.max_failures
        self.control.note.remote(
            f"recovered: a worker was lost; restarted the workers (retry {attempt - 1} of "
            f"spec.scaling.max_failures={limit}) and resumed from {where}"
        )
        if self.tracker is not None:
            self.tracker.set_tag(RESTARTS_TAG, str(attempt - 1))

    def _announce_precision(self) -> None:
        """Rank 0: what spec.train.precision resolved to here (after a resume: the
        checkpoint's), in the run's params and description; a warning where bf16 is emulated."""
        if not self.ranks.is_chief:
            return
        device = self.ranks.device
        if self.step.precision == "bf16" and not native_bf16(device):
            self._warn(emulation_warning(device))
        if self.tracker is not None:
            from ganops.run_note import PRECISION_TAG, precision_summary

            self.tracker.log_param(PRECISION_PARAM, self.step.precision)
            summary = precision_summary(self.spec.train.precision, self.step.precision, describe_device(device))
            self.tracker.set_tag(PRECISION_TAG, summary)

    def _poll(self) -> tuple[bool, bool]:
        """Every POLL_BATCHES batches, one small all-reduce: has Ctrl-C been pressed, is a
        timed checkpoint due (rank 0 decides both), has any rank's loss gone non-finite."""
        flags = torch.zeros(3, device=self.ranks.device)
        if self.ranks.is_chief:
            self._check_time_budget()  # first: a budget spent by now stops at this very poll
            if self.control is not None:
                flags[0] = float(ray.get(self.control.stop_requested.remote()))
            flags[0] = max(flags[0], float(self._stop_reason is not None))
            minutes = self.spec.checkpoint.every_minutes
            flags[1] = float(minutes is not None and time.monotonic() - self._last_save >= minutes * 60)
        bad = self.step.nonfinite()
        flags[2] = float(bool(bad))
        self.ranks.max_tensor(flags)
        if flags[2]:
            raise self.divergence.error(bad)
        return bool(flags[0]), bool(flags[1])

    def _check_time_budget(self) -> None:
        """Rank 0: past spec.train.max_minutes of training, stop as a stop_on signal stops."""
        budget = self.spec.train.max_minutes
        if budget is None or self._stop_reason is not None:
            return
        if time.monotonic() - self._training_since < budget * 60:
            return
        self._stop_reason = f"the time budget, spec.train.max_minutes={budget:g}"
        if self.tracker is not None:
            self.tracker.set_tag(STOPPED_TAG, self._stop_reason)
        if self.control is not None:
            self.control.note.remote(
                f"stopping at step {self.pos.step}: {self._stop_reason} is spent (a checkpoint, the GIF and the "
                "generator follow; submit again to train on)"
            )

    def _roll_back(self, err: DivergedError) -> bool:
        """``on_divergence: rollback`` (every rank); False: the run must stop instead."""
        done = self.divergence.roll_back(err)
        if done is None:
            return False
        if self.ranks.is_chief:
            if self.control is not None:
                self.control.warn.remote(done)
            if self.tracker is not None:
                self.tracker.set_tag(ROLLBACKS_TAG, str(self.pos.rollbacks))
        return True

    def _fail_diverged(self, err: DivergedError) -> None:
        """Stop every rank without writing a checkpoint; the driver raises the message."""
        message = err.final_message(self.spec.train)
        if self.ranks.is_chief:
            if self.tracker is not None:
                self.tracker.set_tag(DIVERGED_TAG, message[:4000])
            if self.control is not None:
                ray.get(self.control.fail.remote(JobFailedError(message, field="spec.train"), "diverged"))

    def _checkpoint(self, metrics: dict[str, Any], final: bool) -> None:
        """A checkpoint of the current state, never of a diverged one (raises DivergedError)."""
        checksum = self.divergence.check_before_checkpoint()
        if self.tracker is not None:
            self.tracker.flush()  # the curves up to this checkpoint survive a lost rank 0
        self.checkpoints.save_and_report(metrics, final=final, checksum=checksum)
        self._last_save = time.monotonic()

    def finish(self) -> None:
        """Flush rank 0's MLflow writes (retried through short outages)."""
        if self.tracker is not None:
            self.tracker.close()

    def _warn(self, message: str) -> None:
        if self.control is not None:
            self.control.warn.remote(message)

    def _end_of_epoch(self, epoch_time: float, save: bool = False) -> bool:
        """Grids, evaluation and the checkpoint of an epoch's end; True: stop (spec.train.stop_on)."""
        spec = self.spec
        e = self.pos.epoch
        if self.ranks.is_chief and (e % spec.samples.every_epochs == 0 or e == spec.train.epochs):
            self._write_grid(e)
        metrics = {**self._metrics(), "epoch_time_s": epoch_time}
        if self.tracker is not None:
            self.tracker.log_metrics({"epoch": e, "epoch_time_s": epoch_time}, self.pos.step)
        last = e == spec.train.epochs
        every = spec.eval.every_epochs
        if self.eval is not None and ((every is not None and e % every == 0) or self._eval_due_at_step() or last):
            self._evaluate()
        if save or e % spec.checkpoint.every_epochs == 0 or last:
            self._checkpoint(metrics, final=last)
        else:
            ray.train.report(metrics)
        return not last and bool(self.ranks.broadcast(self._stop_reason is not None))

    def _eval_due_at_step(self) -> bool:
        every = self.spec.eval.every_steps
        return self.eval is not None and every is not None and self.pos.step % every == 0

    def _evaluate(self) -> None:
        """Score G (every rank); the FID feeds the health signals (fid_regression)."""
        assert self.eval is not None
        fid = self.eval.run()
        if fid is not None:
            self._observe_health(lambda h: h.observe_fid(fid, self.pos.step))

    def _metrics(self) -> dict[str, Any]:
        return {"epoch": self.pos.epoch, "batch": self.pos.batch, "step": self.pos.step}

    # -- progress (all ranks average, rank 0 reports) -----------------------------------
    def _log_progress(self, elapsed: float, steps: int) -> None:
        stats = self.ranks.mean(self.step.take_stats())
        if not self.ranks.is_chief:
            return
        images_per_s = steps * self.spec.train.batch_size / max(elapsed, 1e-9)
        lrs = {"lr_g": self.step.opt_g.param_groups[0]["lr"], "lr_d": self.step.opt_d.param_groups[0]["lr"]}
        if self.tracker is not None:
            self.tracker.log_metrics({**stats, "images_per_s": images_per_s, **lrs}, self.pos.step)
        self._observe_health(lambda h: h.observe_stats(stats, self.pos.step))
        if self.control is None:
            return
        self.control.push.remote(
            {
                **stats,
                "health": sorted(self.health.signals) if self.health is not None else [],
                "epoch": self.pos.epoch + 1,
                "epochs": self.spec.train.epochs,
                "batch": self.pos.batch,
                "batches_per_epoch": self.batches_per_epoch,
                "step": self.pos.step,
                "images_per_s": images_per_s,
                "precision": self.step.precision,
                **lrs,
                "time": time.time(),
            }
        )

    def _observe_health(self, update: Callable[[Health], None]) -> None:
        """Rank 0: feed the health signals; say when the verdict changes; note a stop_on."""
        if self.health is None:
            return
        before = self.health.status
        update(self.health)
        now = self.health.status
        if now != before:
            if self.tracker is not None:
                self.tracker.set_tag(HEALTH_TAG, now[:4000])
            if self.control is not None:
                if now == OK:
                    self.control.note.remote(f"training health: ok again at step {self.pos.step}")
                else:
                    self.control.warn.remote(f"training health at step {self.pos.step}: {now}")
        reason = self.health.should_stop(self.spec.train.stop_on)
        if reason and self._stop_reason is None:
            self._stop_reason = reason
            if self.tracker is not None:
                self.tracker.set_tag(STOPPED_TAG, reason[:4000])
            if self.control is not None:
                self.control.note.remote(f"stopping early (spec.train.stop_on) at step {self.pos.step}: {reason}")

    # -- outputs (rank 0) -------------------------------------------------------------
    @torch.no_grad()
    def _write_grid(self, epoch: int, batch: int = 0) -> None:
        net = self.step.sampler
        was_training = net.training
        net.eval()
        y = self.noise.y.to(self.ranks.device) if self.noise.y is not None else None
        imgs = net(self.noise.z.to(self.ranks.device), y).float().cpu().numpy()
        net.train(was_training)
        tile = images.grid(images.to_uint8(imgs), ncols=self.noise.cols)
        png = images.png_bytes(tile)
        storage.write_bytes(self.jobdir.samples.child(jobdir.sample_name(epoch, batch)), png)
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

    def _log_model(self) -> None:
        if self.tracker is None:
            return
        from ganops.tracking import CHECKPOINT_TAG, log_generator

        assert self.config.mlflow is not None  # a tracker means a run
        run = self.config.mlflow
        latest = self.jobdir.latest_checkpoint()
        if latest is not None:
            self.tracker.set_tag(CHECKPOINT_TAG, latest.uri)
        champion = self.eval.champion if self.eval is not None else None
        if champion is not None and champion[0] == self.pos.step:
            uri: str | None = champion[1]  # the final G is the champion just registered
        else:
            uri = log_generator(run.uri, run.run_id, self.step.sampler, self.spec.tracking.register_as, self._warn)
        if uri:
            self.tracker.set_tag("ganops.model_uri", uri)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (``TorchTrainer(train_loop_per_worker, train_loop_config={"worker": ...})``)."""
    config: WorkerConfig = loop_config["worker"]
    # Ray sets OMP_NUM_THREADS from the CPUs reserved for the worker; make torch follow it
    # even when torch was imported before the variable took effect.
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    for key, value in config.env.items():
        os.environ.setdefault(key, value)
    rank = ray.train.get_context().get_world_rank()
    mark(f"rank{rank}.start")
    control = ray.get_actor(config.control) if config.control else None
    if control is not None and ray.get(control.failure.remote()) is not None:
        # Ray Train restarted the group after a failure that retrying cannot fix (recorded
        # below, or a divergence): end at once; the driver raises the recorded error.
        return
    try:
        worker = Worker(config)
        mark(f"rank{rank}.ready")
        try:
            worker.run()
        finally:
            worker.finish()
            mark(f"rank{rank}.done")
    except UserError as e:
        # Bad input fails the same way on every retry: record it so that Ray Train's restart
        # (spec.scaling.max_failures is for lost workers) ends at once, and the driver says it.
        if control is not None:
            ray.get(control.fail.remote(e, "user"))
        raise
