"""Run a generation job: check everything, make the shards (here or on Ray workers),
write the manifest last, and record the job as its own MLflow run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
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
# The manifest a generation's MLflow run keeps as an artifact, at most (the output keeps the
# whole one): ~100 bytes a PNG, so about 150,000 PNG images' worth.
MLFLOW_MANIFEST_MAX = 16 << 20


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
    from ganops.generate import latents, limits, writer

    # The spec checked its fields and their combinations when it was validated: what is
    # left needs the model.
    info = source.info
    limits.check(opts, info)
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
    try:
        state = writer.existing_output(out)
    except OSError as e:  # an unreachable endpoint, a bucket these credentials cannot list
        reason = (e.strerror or str(e)).splitlines()[0][:200]
        raise UserError(f"--out: cannot look into {out.uri} ({reason})", field="--out") from None
    if state == "complete":
        raise UserError(f"--out: {out.uri} already holds a finished generation (manifest.json); choose a new location")
    if state == "foreign":
        names = writer.foreign_entries(out)
        raise UserError(
            f"--out: {out.uri} holds files a generation does not write ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}), which it could overwrite; choose an empty or new location",
            field="--out",
        )
    storage.check_writable(out, field="--out")
    return z_all, labels_all, g, d


def _local_shards(
    source: Source, opts: GANGenerationSpec, out: storage.Location, ranges: Sequence[tuple[int, int]],
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


def _placement(opts: GANGenerationSpec, actors: int, address: str | None) -> float:
    """Start or join Ray and make sure that ``actors`` workers can be placed; returns the
    CPUs each reserves. Ray alone would wait forever for workers it can never place (more
    CPUs than the cluster has, a GPU on a CPU-only cluster): refused here, before the
    generation's run is opened, naming the flag and what the cluster has."""
    from ganops.errors import ResourceError
    from ganops.rayinit import init_ray, shortfall

    embedded = init_ray(address)
    # On the embedded Ray each worker reserves an even share of this machine's CPUs (and runs
    # as many torch threads); on a cluster one, as Ray's default actor does.
    cpus = float(max(1, (os.cpu_count() or 1) // actors)) if embedded else 1.0
    per_worker = {"CPU": cpus, **({"GPU": opts.gpus_per_worker} if opts.gpus_per_worker else {})}
    short = shortfall(per_worker, actors)
    if short is None:
        return cpus
    flag = "--gpus-per-worker" if short.resource == "GPU" else "--workers"
    shown = ", ".join(f"{k}: {v:g}" for k, v in per_worker.items())
    fix = "drop --gpus-per-worker or lower --workers" if flag == "--gpus-per-worker" else "lower --workers"
    if not short.per_node and short.resource == "CPU":
        fix += f" to at most {max(1, int(short.have // cpus))}"
    raise ResourceError(
        f"{flag}: {actors} workers × {{{shown}}} cannot be placed: they need {short.describe(per_worker)} "
        f"({fix}; Ray would otherwise wait forever)",
        field=flag,
    )


def _ray_shards(
    source: Source, opts: GANGenerationSpec, out: storage.Location, ranges: Sequence[tuple[int, int]],
    z_all: np.ndarray | None, labels_all: np.ndarray | None, actors: int, cpus: float,
) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:  # fmt: skip
    """Shards on Ray actors (placed by ``_placement``): each loads G (and D) once, then takes
    shards as they free up. Shards are handed out in order from the lazy plan, one task per
    actor at a time, so the driver holds ``actors`` tasks whatever the number of shards."""
    import ray

    from ganops.generate.worker import GenerateWorker
    from ganops.rayinit import worker_env

    actor_cls = ray.remote(GenerateWorker).options(num_cpus=cpus, num_gpus=opts.gpus_per_worker)
    z_ref = ray.put((z_all, labels_all)) if z_all is not None else None
    workers = [actor_cls.remote(source, opts, out.uri, z_ref, worker_env(), int(cpus)) for _ in range(actors)]
    pending: dict[Any, Any] = {}
    todo = iter(enumerate(ranges))

    def hand_out(actor: Any) -> None:
        nxt = next(todo, None)
        if nxt is not None:
            shard, (start, stop) = nxt
            pending[actor.run.remote(shard, start, stop)] = actor

    try:
        for actor in workers:
            hand_out(actor)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(done[0])
            record, preview = ray.get(done[0])
            hand_out(actor)
            yield record, preview
    finally:
        for actor in workers:
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
    spec = gen.to_dict()
    z_all, labels_all, g, d = check(source, opts, z_file)
    out = storage.locate(opts.out)
    plan = latents.shard_ranges(opts.count, opts.shard_size)  # lazy: shard i is computed when asked for
    # Ray workers for more than one shard, or for a GPU (the driver runs on the CPU).
    actors = min(opts.workers, len(plan))
    on_ray = opts.interpolate is None and (actors > 1 or opts.gpus_per_worker > 0)
    cpus = _placement(opts, actors, address) if on_ray else 0.0
    if on_ray:
        gpus = f", {opts.gpus_per_worker:g} GPU" if opts.gpus_per_worker else ""
        echo(f"workers: {actors} Ray workers ({cpus:g} CPU{gpus} each) for {len(plan):,} shards")
    run_id = _open_run(source, opts, out.uri, spec)
    t0 = time.time()
    status = "FAILED"
    logged: tuple[int, bytes] | None = None
    preview_path: str | None = None
    try:
        header: dict[str, Any] = {
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
        if opts.interpolate is not None:  # bounded by limits.check: one grid and one GIF in memory
            walk = _interpolation(source, opts, out)
            preview = walk.pop("preview")
            count, n_shards = walk["walks"] * walk["steps"], 0
            preview_path = writer.write_preview(out, preview)
            elapsed = time.time() - t0
            manifest = {**header, "kind": "interpolation", "count": count, **walk, "preview": preview_path,
                        "elapsed_s": round(elapsed, 3), "created": time.time()}  # fmt: skip
            writer.write_manifest(out, manifest)  # last: its presence means the output is complete
            logged = (count, _json(manifest))
        else:
            if on_ray:
                stream = _ray_shards(source, opts, out, plan, z_all, labels_all, actors, cpus)
            else:
                stream = _local_shards(source, opts, out, plan, z_all, labels_all, g, d)
            # The records go to manifest.json as they come (ManifestStream): the driver holds
            # none of them, whatever --num.
            manifest_out = writer.ManifestStream(out, {**header, "kind": "samples"})
            try:
                # Counted here, in the driver, as each shard comes back written (from this
                # process or any Ray worker): one line for the whole job, wherever its shards are made.
                with ImageProgress("generating", opts.count, enabled=show_progress) as progress:
                    for record, first in stream:
                        manifest_out.add(record)
                        if first is not None:
                            preview = first
                        progress.add(record["count"])
                count, n_shards = manifest_out.count, manifest_out.shards
                if count != opts.count:
                    raise RuntimeError(f"{count} images came back for --num {opts.count}")
                preview_path = writer.write_preview(out, preview) if preview is not None and len(preview) else None
                elapsed = time.time() - t0
                footer = {"count": count, "preview": preview_path, "elapsed_s": round(elapsed, 3),
                          "created": time.time()}  # fmt: skip
                # Last: its presence means the output is complete.
                kept = manifest_out.finish(footer, keep_max=MLFLOW_MANIFEST_MAX)
            except BaseException:
                manifest_out.abort()
                raise
            logged = (count, kept if kept is not None else _json({**header, "kind": "samples", **footer,
                      "shards": f"{n_shards} shards: listed in {out.child(writer.MANIFEST).uri}"}))  # fmt: skip
        status = "FINISHED"
    finally:
        _close_run(source, run_id, status, out, logged, preview_path, time.time() - t0)
    rate = count / max(elapsed, 1e-9)
    return GenerateResult(
        out_uri=out.uri, count=count, shards=n_shards, elapsed_s=elapsed, images_per_s=rate,
        generation_run_id=run_id, manifest_uri=out.child("manifest.json").uri,
        preview_uri=out.child(preview_path).uri if preview_path else None,
    )  # fmt: skip


def _json(record: dict[str, Any]) -> bytes:
    from ganops.tracking import aside

    return aside.json_bytes(record)


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
    source: Source, run_id: str, status: str, out: storage.Location, logged: tuple[int, bytes] | None,
    preview_path: str | None, elapsed: float,
) -> None:  # fmt: skip
    """End the run; a finished one gets its metrics, the manifest (or, past
    MLFLOW_MANIFEST_MAX, its header and where the full one is) and the preview."""
    from ganops.tracking import aside

    uri = source.tracking_uri
    if status == "FINISHED" and logged is not None:
        count, manifest = logged
        aside.log_metrics(uri, run_id, {"images": count, "images_per_s": count / max(elapsed, 1e-9)})
        files = {"manifest.json": manifest}
        if preview_path:
            files["preview.png"] = storage.read_bytes(out.child(preview_path))
        aside.log_files(uri, run_id, files)
    aside.close_run(uri, run_id, status)
