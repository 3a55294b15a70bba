"""Evaluation during training (``spec.eval``): score G, keep the best, maybe a new champion.

Every rank makes and embeds its share of the evaluation samples; rank 0 gathers the
features, scores them, logs the scores and keeps what improved: the best record
(``eval/best.json``), with ``checkpoint.keep_best`` a checkpoint in ``best/``, and with
``tracking.register_as`` a registered model when it beats the champion (see
``ganops.evaluate.evaluator`` for why the work is split).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ganops import jobdir
from ganops.data import ArrayDataset
from ganops.spec.models import GANJob
from ganops.train.checkpoints import Checkpoints, Position
from ganops.train.ranks import Ranks
from ganops.train.step import GANStep

if TYPE_CHECKING:
    from ganops.train.loop import MLflowRun


class EvalRound:
    """Set up once (``start``), then ``run`` at each evaluation epoch, on every rank."""

    def __init__(
        self,
        job: GANJob,
        mlflow: MLflowRun | None,
        jd: jobdir.JobDir,
        step: GANStep,
        ranks: Ranks,
        pos: Position,
        checkpoints: Checkpoints,
        tracker: Any,
        warn: Callable[[str], None],
    ) -> None:
        self.job, self.spec, self.mlflow, self.jobdir = job, job.spec, mlflow, jd
        self.step, self.ranks, self.pos, self.checkpoints = step, ranks, pos, checkpoints
        self.tracker, self.warn = tracker, warn
        self.evaluator: Any = None  # ganops.evaluate.evaluator.Evaluator, after start()
        self.best: dict[str, Any] | None = None  # rank 0: the best score so far (eval/best.json)
        self.champion: tuple[int, str] | None = None  # (step, model URI) of a G registered as the new champion

    def start(self, data: ArrayDataset | None) -> None:
        """Load the Inception network (its sha256 checked) and the reference statistics.

        Before the first batch, so that a missing or wrong weights file fails the job at
        once rather than after the first evaluation epoch. Every rank takes part. ``data``:
        the training split in memory (None for a streamed pack: the reference reads its own).
        """
        from ganops.evaluate.evaluator import EvalSettings, Evaluator

        settings = EvalSettings.from_spec(self.spec)
        r = self.ranks
        self.evaluator = Evaluator(
            self.spec, settings, r.device, rank=r.rank, world=r.world,
            gather=r.gather, broadcast=r.broadcast, warn=self.warn,
        )  # fmt: skip
        same_data = settings.reference_split == self.spec.data.split
        self.evaluator.prepare_reference(data if same_data else None)
        if not r.is_chief:
            return
        best = self.jobdir.read_best()
        if best is not None and best.get("setup") != self.evaluator.setup_key:
            self.warn(
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

    def run(self) -> float | None:
        """Every rank: score G; rank 0 logs the scores, keeps what improved and returns the
        FID (None on the other ranks, or without FID)."""
        t0 = time.perf_counter()
        net = self._generator()
        scores = self.evaluator.score(net, self.spec.model.latent_dim, self.step.num_classes)
        del net
        improved = False
        if self.ranks.is_chief:
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
        fid = scores.fid if scores is not None else None
        if not self.ranks.broadcast(improved):
            return fid
        best_uri = None
        if self.spec.checkpoint.keep_best:
            metrics = {**vars(self.pos), "eval": scores.values if scores is not None else None,
                       "setup": self.evaluator.setup_key}  # fmt: skip
            best_uri = self.checkpoints.save_best(metrics)
        if self.ranks.is_chief:
            assert scores is not None
            self._new_best(scores, best_uri)
        return fid

    def _generator(self) -> torch.nn.Module:
        """A copy of the sampler (EMA of G when enabled) with rank 0's weights and buffers.

        Ranks share G's weights but each keeps its own BatchNorm statistics; the copy makes
        every rank's share of the samples come from the G that rank 0 checkpoints and exports.
        """
        net = copy.deepcopy(self.step.sampler)
        with torch.no_grad():
            for t in net.state_dict().values():
                self.ranks.broadcast_tensor(t)
        return net.eval()

    def _new_best(self, scores: Any, checkpoint_uri: str | None) -> None:
        """Rank 0: record the new best FID; with a registered model, maybe a new champion."""
        fid = float(scores.fid)
        record: dict[str, Any] = {
            "fid": fid, "epoch": self.pos.epoch, "step": self.pos.step, "setup": self.evaluator.setup_key,
            "checkpoint": checkpoint_uri, "scores": scores.values, "time": time.time(),
        }  # fmt: skip
        register_as = self.spec.tracking.register_as
        if register_as and self.mlflow and self.tracker is not None:
            from ganops.tracking import promote_if_better

            promo = promote_if_better(
                self.mlflow.uri, self.mlflow.run_id, self.step.sampler, register_as, fid,
                self.evaluator.setup_key, self.pos.step, self.warn,
            )  # fmt: skip
            if promo is not None:
                record.update({"model_uri": promo.model_uri, "registered_version": promo.version})
                self.champion = (self.pos.step, promo.model_uri)
                self.tracker.set_tag("ganops.champion_version", promo.version)
        self.jobdir.write_best(record)
        self.best = record
        if self.tracker is not None:
            self.tracker.set_tag("ganops.best_fid", repr(fid))
            self.tracker.set_tag("ganops.best_step", str(self.pos.step))
            if checkpoint_uri:
                self.tracker.set_tag("ganops.best_checkpoint", checkpoint_uri)
