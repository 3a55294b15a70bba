"""Score a generator: the Inception network, the reference statistics, the generated features.

The same code serves ``ganops evaluate`` (one process) and training (every rank). In
training each rank makes and embeds its own share of the samples and rank 0 gathers the
features and computes the scores: the work that dominates (G and Inception forward
passes) is split over all workers instead of stalling N-1 of them behind rank 0, and the
only wait is the gather at the end, as long as the slowest share. ``gather`` and
``broadcast`` are the collectives (identities in one process).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ganops import data as gdata
from ganops.errors import UserError
from ganops.evaluate import reference as refs
from ganops.evaluate import samples
from ganops.evaluate.features import FeatureExtractor, Features
from ganops.evaluate.scores import Scores, compute
from ganops.evaluate.weights import SHA_FIELD, WEIGHTS_FIELD, load_inception
from ganops.progress import ImageProgress
from ganops.spec.models import GANJobSpec

Gather = Callable[[Any], "list[Any] | None"]
"""Every rank's object, in rank order, on rank 0 (None elsewhere)."""
Broadcast = Callable[[Any], Any]
"""Rank 0's object, on every rank."""
Warn = Callable[[str], None]


def _local_gather(obj: Any) -> list[Any]:
    return [obj]


def _local_broadcast(obj: Any) -> Any:
    return obj


@dataclass(frozen=True)
class EvalSettings:
    metrics: tuple[str, ...]
    num_samples: int
    batch_size: int
    weights: str | None
    sha256: str | None
    """Expected sha256 of the weights; None: the pinned pytorch-fid file."""
    seed: int
    """Seed of the generated samples' latents."""
    reference_split: str
    cache_root: str | None
    """Storage root holding ``_eval_cache/`` (None: no cache)."""
    weights_field: str = WEIGHTS_FIELD
    sha_field: str = SHA_FIELD

    @classmethod
    def from_spec(cls, spec: GANJobSpec, **overrides: Any) -> EvalSettings:
        ev = spec.eval
        settings = cls(
            metrics=tuple(ev.metrics),
            num_samples=ev.num_samples,
            batch_size=ev.batch_size,
            weights=ev.inception_weights,
            sha256=ev.inception_sha256,
            seed=spec.train.seed,
            reference_split=ev.reference_split or spec.data.split,
            cache_root=spec.storage,
        )
        return settings.replace(**overrides) if overrides else settings

    def replace(self, **changes: Any) -> EvalSettings:
        from dataclasses import replace

        return replace(self, **changes)


class Evaluator:
    def __init__(
        self,
        spec: GANJobSpec,
        settings: EvalSettings,
        device: torch.device,
        *,
        rank: int = 0,
        world: int = 1,
        gather: Gather = _local_gather,
        broadcast: Broadcast = _local_broadcast,
        warn: Warn = print,
        show_progress: bool = False,
    ) -> None:
        """``show_progress``: a live line per phase on stderr (rank 0 only; ``ganops evaluate``).
        Off by default: in training the workers' output goes to Ray's logs, not to a terminal."""
        if settings.num_samples < 2:
            raise UserError(f"eval.num_samples: must be at least 2 (got {settings.num_samples})")
        self.settings = settings
        self.device = device
        self.rank, self.world = rank, world
        self.gather, self.broadcast, self.warn = gather, broadcast, warn
        self.show_progress = show_progress and rank == 0
        net, digest = load_inception(
            settings.weights, settings.sha256, field=settings.weights_field, sha_field=settings.sha_field
        )
        self.weights_sha256 = digest
        self.extract = FeatureExtractor(net, device, settings.batch_size)
        self.setup = refs.ReferenceSetup(spec.data, settings.reference_split, settings.num_samples, digest)
        self.reference: refs.Reference | None = None

    @property
    def setup_key(self) -> str:
        """Scores with the same key are comparable: same reference, sample count and network."""
        return self.setup.key

    def prepare_reference(self, preloaded: gdata.ArrayDataset | None = None) -> refs.Reference | None:
        """Read the cached statistics or compute (and cache) them. Every rank calls this.

        Returns the reference on rank 0 (None elsewhere). ``preloaded``: the reference split,
        already in memory.
        """
        s = self.settings
        loc = refs.cache_location(s.cache_root, self.setup) if s.cache_root else None
        ref = refs.load_cached(loc, self.setup) if self.rank == 0 and loc is not None else None
        if self.broadcast(ref is None):
            images, available = refs.reference_images(self.setup, preloaded)
            if len(images) < 2:
                raise UserError(
                    f"eval.reference_split: the {self.setup.split} split of {self.setup.data.dataset} holds "
                    f"{len(images)} image(s); the scores need at least 2"
                )
            lo, hi = samples.share(len(images), self.rank, self.world)
            with self._progress("reference statistics", hi - lo) as progress:
                mine = self.extract(images[lo:hi], on_batch=progress.add).pool3
            parts = self.gather(mine)
            if self.rank == 0:
                assert parts is not None
                ref = refs.build(self.setup, np.concatenate(parts), available)
                if loc is not None:
                    try:
                        refs.save(loc, ref)
                    except OSError as e:  # a read-only store still gets its scores
                        self.warn(f"could not cache the reference statistics at {loc.uri} ({e})")
        self.reference = ref
        return ref

    def generated_features(
        self, fn: samples.GenerateFn, latent_dim: int, num_classes: int | None, device: torch.device | None = None
    ) -> Features | None:
        """This rank's share of the samples, embedded; all of them on rank 0 (None elsewhere).

        ``device``: where ``fn`` runs (default: the Inception network's device).
        """
        s = self.settings
        z, labels = samples.latents(s.seed, s.num_samples, latent_dim, num_classes)
        lo, hi = samples.share(s.num_samples, self.rank, self.world)
        done: list[Features] = []
        # One batch at a time through G and then Inception (the same batches as all at once,
        # so the same features): the line counts scored images, and only a batch of images
        # is held at a time.
        with self._progress("scoring samples", hi - lo) as progress:
            for i in range(lo, hi, s.batch_size):
                j = min(i + s.batch_size, hi)
                y = None if labels is None else labels[i:j]
                done.append(self.extract(samples.generate(fn, z[i:j], y, s.batch_size, device or self.device)))
                progress.add(j - i)
        parts = self.gather(Features.concat(done))
        return Features.concat(parts) if parts is not None else None

    def _progress(self, label: str, total: int) -> ImageProgress:
        return ImageProgress(label, total, enabled=self.show_progress)

    def score(
        self,
        fn: samples.GenerateFn,
        latent_dim: int,
        num_classes: int | None,
        *,
        metrics: Sequence[str] | None = None,
        device: torch.device | None = None,
    ) -> Scores | None:
        """Every rank calls this; rank 0 gets the scores."""
        t0 = time.perf_counter()
        fake = self.generated_features(fn, latent_dim, num_classes, device)
        if fake is None:
            return None
        if self.reference is None:
            raise RuntimeError("prepare_reference() must run before score()")
        scores = compute(fake, self.reference, metrics or self.settings.metrics)
        scores.record.update(
            {"seed": self.settings.seed, "setup_key": self.setup_key, "time_s": round(time.perf_counter() - t0, 3)}
        )
        return scores
