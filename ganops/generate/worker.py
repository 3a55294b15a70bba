"""A Ray actor that makes shards: it loads G (and D) once, then takes shards on request."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ganops.generate.source import Source, load_discriminator, load_generator
from ganops.spec.generation import GANGenerationSpec


class GenerateWorker:
    def __init__(
        self, source: Source, opts: GANGenerationSpec, out_uri: str, z: Any, env: dict[str, str], threads: int
    ) -> None:
        import torch

        for key, value in env.items():
            os.environ.setdefault(key, value)
        torch.set_num_threads(max(1, threads))
        self.source, self.opts = source, opts
        self.g = load_generator(source)
        self.d = load_discriminator(source, self.g) if opts.best_of > 1 else None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.g.to(self.device)
        if self.d is not None:
            self.d.to(self.device)
        # A Ray object ref passed inside a tuple arrives unresolved: fetch it once here.
        if z is not None and not isinstance(z, tuple):
            import ray

            z = ray.get(z)
        self.z_all, self.labels_all = z if z is not None else (None, None)
        from ganops import storage
        from ganops.generate import writer

        self.out = storage.locate(out_uri)
        self.pool = writer.make_pool(max(1, threads))

    def run(self, shard: int, start: int, stop: int) -> tuple[dict[str, Any], np.ndarray | None]:
        from ganops.generate import core, writer

        result = core.generate_shard(
            self.g, self.d, self.opts, self.source.info, shard, start, stop, self.device, self.z_all, self.labels_all
        )
        record = writer.write_shard(self.out, result, self.opts.formats, self.opts.save_z, self.pool)
        return record, (result.images[: writer.PREVIEW_MAX] if shard == 0 else None)
