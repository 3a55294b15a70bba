"""Run a generation job: check everything, make the shards (here or on Ray workers),
write the manifest last, and record the job as its own MLflow run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ganops import __version__, storage
from ganops.errors import UserError
from ganops.generate.latents import ZFile
from ganops.generate.source import Source, load_discriminator, load_generator
from ganops.progress import ImageProgress
from ganops.spec.generation import GANGeneration, GANGenerationSpec

Echo = Callable[[str], None]


@dataclass
class GenerateResult:
    out_uri: str
    count: int
    shards: int
    elapsed_s: float
    images_per_s: float
    generation_run_id: str | None
    manifest_uri: str
    preview_uri: str | None


def check(
    source: Source, opts: GANGenerationSpec, z_file: ZFile | None
) -> tuple[np.ndarray | None, np.ndarray | None, Any, Any]:
    """Every check that can fail, before any image is made.

    Returns the latents and labels from --z (``z_file``: the file as ``client.generate``
    read it), and with --best-of the generator and the discriminator saved with it (None,
    None without).
    """
    from ganops.generate import latents, writer

    # The spec checked its fields and their combinations when it was validated: what is
    # left needs the model.
    info = source.info
    if opts.class_index is not None:
        if not info.num_classes:
            raise UserError(f"--class: {source.model_uri} is not class-conditional")
        if not 0 <= opts.class_index < info.num_classes:
            raise UserError(
                f"--class: {opts.class_index} is out of range; the model has {info.num_classes} classes "
                f"(0-{info.num_classes - 1})"
            )
    z_all = labels_all = None
    if opts.z_file:
        if z_file is None:
            raise ValueError("check: the spec names a --z file that was not read")
        z_all, labels_all = latents.check_z(z_file, opts.z_file, info)
        if len(z_all) != opts.count:
            raise UserError(f"--num: {opts.count} does not match the {len(z_all)} vectors in --z {opts.z_file}")
        if labels_all is not None and opts.class_index is not None:
            raise UserError("--class: the --z file carries its own class column")
    g = d = None
    if opts.best_of > 1:  # D must be the one saved with this G, exist and load
        g = load_generator(source)
        d = load_discriminator(source, g)
    out = storage.locate(opts.out)
    state = writer.existing_output(out)
    if state == "complete":
        raise UserError(f"--out: {out.uri} already holds a finished generation (manifest.json); choose a new location")
    storage.check_writable(out, field="--out")
    return z_all, labels_all, g, d


def _local_shards(
    source: Source, opts: GANGenerationSpec, out: storage.Location, ranges: list[tuple[int, int]],
    z_all: np.ndarray | None, labels_all: np.ndarray | None, g: Any, d: Any,
) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:  # fmt: skip
    """Shards in this process; PNG encoding and uploads use every core through the pool."""
    import torch

    from ganops.generate import core, writer

    g = g if g is not None else load_generator(source)
    device = torch.device("cpu")
    with writer.make_pool() as pool:
        for shard, (start, stop) in enumerate(ranges):
            result = core.generate_shard(g, d, opts, source.info, shard, start, stop, device, z_all, labels_all)
            record = writer.write_shard(out, result, opts.formats, opts.save_z, pool)
            yield record, (result.images[: writer.PREVIEW_MAX] if shard == 0 else None)


def _ray_shards(
    source: Source, opts: GANGenerationSpec, out: storage.Location, ranges: list[tuple[int, int]],
    z_all: np.ndarray | None, labels_all: np.ndarray | None, workers: int, gpus_per_worker: float,
    address: str | None,
) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:  # fmt: skip
    """Shards on Ray actors: each loads G (and D) once, then takes shards as they free up."""
    import ray

    from ganops.generate.worker import GenerateWorker
    from ganops.rayinit import init_ray, worker_env

    embedded = init_ray(address)
    cpus = max(1, (os.cpu_count() or 1) // workers) if embedded else 1
    actor_cls = ray.remote(GenerateWorker).options(num_cpus=cpus, num_gpus=gpus_per_worker)
    z_ref = ray.put((z_all, labels_all)) if z_all is not None else None
    actors = [
        actor_cls.remote(source, opts, out.uri, z_ref, worker_env(), cpus) for _ in range(min(workers, len(ranges)))
    ]
    pending: dict[Any, Any] = {}
    todo = list(enumerate(ranges))
    try:
        for actor in actors:
            if todo:
                shard, (start, stop) = todo.pop(0)
                pending[actor.run.remote(shard, start, stop)] = actor
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(done[0])
            record, preview = ray.get(done[0])
            if todo:
                shard, (start, stop) = todo.pop(0)
                pending[actor.run.remote(shard, start, stop)] = actor
            yield record, preview
    finally:
        for actor in actors:
            ray.kill(actor)


def _interpolation(source: Source, opts: GANGenerationSpec, out: storage.Location) -> dict[str, Any]:
    """Walks between seeds: a grid (one row per walk) and a GIF that moves along every walk."""
    import torch

    from ganops import images as imaging
    from ganops.generate import core, latents, writer

    g = load_generator(source)
    walks = latents.interpolation_latents(opts, source.info)
    z, labels = walks if isinstance(walks, tuple) else (walks, None)
    n_walks, steps, _ = z.shape
    flat_labels = np.repeat(labels, steps) if labels is not None else None
    images = core.generate_images(
        g, z.reshape(n_walks * steps, -1), flat_labels, source.info, opts.batch_size, torch.device("cpu")
    )
    files: dict[str, str] = {}
    tile = imaging.grid(images, ncols=steps)
    files["interpolation.png"] = _put(out, "interpolation.png", imaging.png_bytes(tile))
    per_step = images.reshape(n_walks, steps, *images.shape[1:]).transpose(1, 0, 2, 3, 4)
    frames = [imaging.png_bytes(imaging.grid(per_step[t], ncols=min(n_walks, 8))) for t in range(steps)]
    files["interpolation.gif"] = _put(
        out, "interpolation.gif", imaging.gif_bytes(frames, frame_ms=120, hold_last_ms=600)
    )
    if opts.save_z:
        ((data, _),) = writer.npy_file(z)
        files["interpolation_z.npy"] = _put(out, "interpolation_z.npy", data)
    return {"walks": n_walks, "steps": steps, "files": files, "preview": images[: writer.PREVIEW_MAX]}


def _put(out: storage.Location, name: str, data: bytes) -> str:
    from ganops.generate import writer

    storage.write_bytes(out.child(name), data)
    return writer.sha256_hex(data)


def generate(
    source: Source,
    gen: GANGeneration,
    *,
    z_file: ZFile | None = None,
    address: str | None = None,
    show_progress: bool = True,
    echo: Echo = print,
) -> GenerateResult:
    """Make the images that ``gen`` (resolved by ``client.generate``: ``num`` set) asks for,
    with the generator of ``source``; ``gen`` itself is kept in the manifest and logged with
    the run (``generation.yaml``). ``spec.workers`` > 1: on Ray workers, the embedded Ray
    or the cluster at ``address``."""
    from ganops.generate import latents, writer

    opts = gen.spec
    workers, gpus_per_worker, spec = opts.workers, opts.gpus_per_worker, gen.to_dict()
    z_all, labels_all, g, d = check(source, opts, z_file)
    out = storage.locate(opts.out)
    run_id = _open_run(source, opts, out.uri, spec)
    t0 = time.time()
    status = "FAILED"
    try:
        manifest: dict[str, Any] = {
            "format": "ganops.generate/v1",
            "model_uri": source.model_uri,
            "training_run_id": source.run_id,
            "generation_run_id": run_id,
            "job": source.job.name,
            "seed": opts.seed,
            "image_shape": list(source.info.image_shape),
            "latent_dim": source.info.latent_dim,
            "num_classes": source.info.num_classes,
            "ganops_version": __version__,
            "spec": spec,
        }
        preview: np.ndarray | None = None
        if opts.interpolate is not None:
            walk = _interpolation(source, opts, out)
            preview = walk.pop("preview")
            manifest.update({"kind": "interpolation", "count": walk["walks"] * walk["steps"], **walk})
            count, n_shards = manifest["count"], 0
        else:
            ranges = latents.shard_ranges(opts.count, opts.shard_size)
            if workers > 1 and len(ranges) > 1:
                stream = _ray_shards(source, opts, out, ranges, z_all, labels_all, workers, gpus_per_worker, address)
            else:
                stream = _local_shards(source, opts, out, ranges, z_all, labels_all, g, d)
            records = []
            # Counted here, in the driver, as each shard comes back written (from this process
            # or any Ray worker): one line for the whole job, wherever its shards are made.
            with ImageProgress("generating", opts.count, enabled=show_progress) as progress:
                for record, first in stream:
                    records.append(record)
                    if first is not None:
                        preview = first
                    progress.add(record["count"])
            records.sort(key=lambda r: r["shard"])
            count, n_shards = sum(r["count"] for r in records), len(records)
            manifest.update({"kind": "samples", "count": count, "shards": records})
        preview_path = writer.write_preview(out, preview) if preview is not None and len(preview) else None
        elapsed = time.time() - t0
        manifest.update({"preview": preview_path, "elapsed_s": round(elapsed, 3), "created": time.time()})
        writer.write_manifest(out, manifest)  # last: its presence means the output is complete
        status = "FINISHED"
    finally:
        _close_run(source, run_id, status, out, locals().get("manifest"), time.time() - t0)
    rate = count / max(elapsed, 1e-9)
    return GenerateResult(
        out_uri=out.uri, count=count, shards=n_shards, elapsed_s=elapsed, images_per_s=rate,
        generation_run_id=run_id, manifest_uri=out.child("manifest.json").uri,
        preview_uri=out.child(preview_path).uri if preview_path else None,
    )  # fmt: skip


# -- the generation's own MLflow run ------------------------------------------------------


def _open_run(source: Source, opts: GANGenerationSpec, out_uri: str, spec: dict[str, Any]) -> str:
    import yaml

    from ganops.tracking import aside

    tags = {**source.run_tags("generate"), "ganops.output": out_uri}
    params = {**opts.params(), "out": out_uri, "workers": opts.workers, "model_uri": source.model_uri}
    run_id = aside.open_run(source.tracking_uri, source.experiment_id, f"{source.job.name}-generate", tags, params)
    # The job as asked (and resolved), where the MLflow UI shows it.
    text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=100)
    aside.log_files(source.tracking_uri, run_id, {"generation.yaml": text.encode()})
    return run_id


def _close_run(
    source: Source, run_id: str, status: str, out: storage.Location, manifest: dict[str, Any] | None, elapsed: float
) -> None:
    from ganops.tracking import aside

    uri = source.tracking_uri
    if status == "FINISHED" and manifest is not None:
        count = manifest["count"]
        aside.log_metrics(uri, run_id, {"images": count, "images_per_s": count / max(elapsed, 1e-9)})
        files = {"manifest.json": aside.json_bytes(manifest)}
        if manifest.get("preview"):
            files["preview.png"] = storage.read_bytes(out.child(manifest["preview"]))
        aside.log_files(uri, run_id, files)
    aside.close_run(uri, run_id, status)
