"""The run's description in the MLflow UI (its markdown note): the story of a training run.

Users judge a run on its MLflow page, so the note says what was trained on what, how far it
got, its best score and where that checkpoint is, shows the last sample grid, and gives the
exact ``ganops generate`` command for this run. The driver writes it when the run opens
(what is known then) and again when it ends, whatever the outcome.

Rendering is pure (``render``); ``update`` gathers the facts from the job directory and the
run, and writes through ``ganops.tracking`` (the only module that imports mlflow). Every URI
shown goes through ``redact``: a note is readable by everyone who can see the run.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ganops import jobdir, storage, tracking
from ganops.spec.models import GANJob

if TYPE_CHECKING:
    from ganops.data import ImageInfo

NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description
NETWORKS_TAG = "ganops.networks"  # set by rank 0: the resolved networks and their sizes
PRECISION_TAG = "ganops.precision"  # set by rank 0: what spec.train.precision resolved to, and on what
GRID_ARTIFACT = "samples/final_grid.png"
GIF_ARTIFACT = f"samples/{jobdir.GIF_FILE}"
# MLflow refuses tag values longer than this (MAX_TAG_VAL_LENGTH in MLflow 3).
MAX_NOTE_CHARS = 8000

STATES = {
    "RUNNING": "training",
    "FINISHED": "finished",
    "KILLED": "stopped early",
    "FAILED": "failed",
}


@dataclass(frozen=True)
class Best:
    fid: float
    epoch: int | None
    step: int | None
    checkpoint: str | None
    kid: float | None = None
    registered_version: str | None = None


@dataclass(frozen=True)
class NoteFacts:
    """Everything the note shows; URIs as recorded (``render`` redacts them)."""

    job: GANJob
    run_id: str
    tracking_uri: str
    experiment: str
    status: str  # RUNNING, FINISHED, KILLED or FAILED
    epochs_done: int
    step: int
    data: str  # "mnist, test split: 512 images of 1×28×28"
    networks: str
    precision: str | None = None
    """What ``spec.train.precision`` resolved to on the workers (``PRECISION_TAG``); None: not yet known."""
    latest_checkpoint: str | None = None
    best: Best | None = None
    model_uri: str | None = None
    champion_version: str | None = None
    registered_version: str | None = None
    grid_artifact: str | None = None
    grid_epoch: int | None = None
    grid_batch: int | None = None  # set: the grid is of a stop this many batches into epoch grid_epoch + 1
    gif_artifact: str | None = None
    storage_flag: str | None = None
    """``--storage ROOT`` when the run lives in the embedded store of that root, else None."""


def describe_data(job: GANJob, info: ImageInfo | None) -> str:
    d = job.spec.data
    text = f"{d.dataset}, {d.split} split"
    if info is not None:
        shape = "×".join(map(str, info.shape))
        classes = f", {info.num_classes} classes" if info.num_classes else ""
        text += f": {info.num_images} images of {shape}{classes}"
    elif d.limit:
        text += f", first {d.limit} images"
    return text


def describe_networks(job: GANJob) -> str:
    """The networks as the spec names them (before a worker has resolved and built them)."""
    m = job.spec.model
    widths = ""
    if m.g_widths or m.d_widths:
        g = "→".join(map(str, m.g_widths)) if m.g_widths else "default"
        d = "→".join(map(str, m.d_widths)) if m.d_widths else "default"
        widths = f", G {g}, D {d}"
    cond = ", conditional" if m.conditional else ""
    return f"{m.arch}{cond}, z {m.latent_dim}{widths}"


def precision_summary(asked: str, resolved: str, device: str) -> str:
    """``bf16 (auto on <device>)``: rank 0 tags the run with it."""
    how = "auto" if asked == "auto" else "as asked"
    return f"{resolved} ({how}, on {device})"


def networks_summary(config: Any, g_params: int, d_params: int) -> str:
    """The built networks (a resolved ``NetConfig``) and their sizes: rank 0 tags the run with it."""
    cond = f", conditional ({config.num_classes} classes, D {config.d_conditioning})" if config.num_classes else ""
    g = "→".join(map(str, config.g_widths))
    d = "→".join(map(str, config.d_widths))
    return (
        f"{config.arch}{cond}, z {config.latent_dim}; G {g} ({_count(g_params)} params), "
        f"D {d}, norm {config.d_norm} ({_count(d_params)} params)"
    )


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def artifact_url(run_id: str, path: str) -> str:
    """A URL of a run's artifact relative to the MLflow UI's page, as the UI itself fetches them.

    Relative, so that it works behind any host name or proxy prefix the server is reached by,
    and carries no credentials.
    """
    return f"get-artifact?path={quote(path, safe='')}&run_uuid={run_id}"


def generate_command(facts: NoteFacts) -> list[str]:
    """``ganops generate`` for this run's generator, with the flags that find its tracking store."""
    if facts.storage_flag:
        where = ["--storage", facts.storage_flag]
    else:
        where = ["--tracking-uri", tracking.redact(facts.tracking_uri)]
    return ["ganops", "generate", "--run-id", facts.run_id, *where, "--out", f"./generated/{facts.job.name}"]


def render(facts: NoteFacts) -> str:
    job, spec = facts.job, facts.job.spec
    state = STATES.get(facts.status, facts.status.lower())
    epochs = f"{facts.epochs_done} of {spec.train.epochs} epochs ({facts.step} steps)"
    # The UI shows the first lines until "Show more" is clicked: they carry the outcome.
    headline = f"### {job.name}: {state}, {facts.epochs_done}/{spec.train.epochs} epochs"
    if facts.best is not None:
        headline += f", best FID {facts.best.fid:.2f}"
    lines = [headline, ""]
    lines += [
        f"- **Job** `{job.name}` in experiment `{facts.experiment}`",
        f"- **Dataset** {facts.data}",
        f"- **Networks** {facts.networks}; loss {spec.train.loss}, batch {spec.train.batch_size} "
        f"on {spec.scaling.num_workers} worker{'s' if spec.scaling.num_workers != 1 else ''}",
        f"- **Precision** {facts.precision or spec.train.precision}",
        f"- **Epochs done** {epochs}" + (" (submit the same spec again to resume)" if facts.status == "KILLED" else ""),
    ]
    if facts.latest_checkpoint:
        lines.append(f"- **Latest checkpoint** `{tracking.redact(facts.latest_checkpoint)}`")
    if facts.best is not None:
        b = facts.best
        when = f" at epoch {b.epoch} (step {b.step})" if b.epoch is not None else ""
        kid = f", KID {b.kid:.4f}" if b.kid is not None else ""
        lines.append(f"- **Best FID** {b.fid:.2f}{kid}{when}")
        kept = f"`{tracking.redact(b.checkpoint)}`" if b.checkpoint else "not kept (set spec.checkpoint.keep_best: fid)"
        lines.append(f"- **Best checkpoint** {kept}")
    elif not spec.eval.enabled:
        lines.append("- **Best FID** not measured (spec.eval.every_epochs and every_steps are unset)")
    if facts.model_uri:
        model = f"- **Generator** `{facts.model_uri}`"
        if spec.tracking.register_as:
            champion = facts.champion_version or (facts.best.registered_version if facts.best else None)
            model += f", registered as `{spec.tracking.register_as}`"
            if facts.registered_version:
                model += f" version {facts.registered_version}"
            if champion:
                model += f" (best FID: version {champion}, alias `@{tracking.CHAMPION}`)"
        lines.append(model)
    lines.append("")
    if facts.grid_artifact:
        if facts.grid_epoch is None:
            epoch = "so far"
        elif facts.grid_batch:
            epoch = f"where training stopped (epoch {facts.grid_epoch + 1}, batch {facts.grid_batch})"
        else:
            epoch = f"after epoch {facts.grid_epoch}"
        gif = f"; [training GIF]({artifact_url(facts.run_id, facts.gif_artifact)})" if facts.gif_artifact else ""
        lines += [
            f"**Samples {epoch}** (the same fixed noise every epoch{gif})",
            "",
            f"![samples {epoch}]({artifact_url(facts.run_id, facts.grid_artifact)})",
            "",
        ]
    if facts.model_uri:
        lines += ["**Generate images with this run's generator**", "", "```", shlex.join(generate_command(facts))]
        lines.append("```")
        if tracking.redact(facts.tracking_uri) != facts.tracking_uri:
            lines.append("(give the server's credentials as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
    elif facts.status == "RUNNING":
        lines.append("_The sample grid, best score and `ganops generate` command appear here when training ends._")
    else:
        lines.append("_No generator was logged: resume the job to finish it and log one._")
    text = "\n".join(lines).rstrip() + "\n"
    return text[:MAX_NOTE_CHARS]


# -- gathering the facts (driver side) ----------------------------------------------------


def _best(jd: jobdir.JobDir) -> Best | None:
    record = jd.read_best()
    if not record or record.get("fid") is None:
        return None
    scores = record.get("scores") or {}
    return Best(
        fid=float(record["fid"]),
        epoch=record.get("epoch"),
        step=record.get("step"),
        checkpoint=record.get("checkpoint"),
        kid=scores.get("kid_mean"),
        registered_version=record.get("registered_version"),
    )


def collect(ref: tracking.RunRef, job: GANJob, jd: jobdir.JobDir, info: ImageInfo | None, status: str) -> NoteFacts:
    """The facts of a run from its job directory and its MLflow run; the final grid is logged
    as ``GRID_ARTIFACT`` on the way (the note shows it), unless the run is just starting."""
    tags: dict[str, str] = {}
    artifacts: set[str] = set()
    grid_epoch = grid_batch = None
    if status != "RUNNING":
        tags = tracking.run_tags(ref)
        grids = jd.sample_grids()  # epoch_0004.png, ... in order
        if grids:
            png = storage.read_bytes(jd.samples.child(grids[-1]))
            tracking.log_artifact_bytes(ref, png, GRID_ARTIFACT)
            grid_epoch = int(grids[-1].split("_")[1].split(".")[0])
            if "_batch_" in grids[-1]:  # a mid-epoch stop's grid: N epochs and some batches done
                grid_batch = int(grids[-1].rsplit("_", 1)[1].split(".")[0])
        artifacts = set(tracking.list_artifacts(ref, jobdir.SAMPLES))
    latest = jd.latest_checkpoint()
    embedded = ref.tracking_uri == tracking.embedded_store(job.spec.storage)[0]
    return NoteFacts(
        job=job,
        run_id=ref.run_id,
        tracking_uri=ref.tracking_uri,
        experiment=ref.experiment,
        status=status,
        epochs_done=latest.epoch if latest else 0,
        step=latest.step if latest else 0,
        data=describe_data(job, info),
        networks=tags.get(NETWORKS_TAG) or describe_networks(job),
        precision=tags.get(PRECISION_TAG),
        latest_checkpoint=latest.uri if latest else None,
        best=_best(jd) if job.spec.eval.enabled else None,
        model_uri=tags.get("ganops.model_uri"),
        champion_version=tags.get("ganops.champion_version"),
        registered_version=tags.get(tracking.REGISTERED_TAG),
        grid_artifact=GRID_ARTIFACT if GRID_ARTIFACT in artifacts else None,
        grid_epoch=grid_epoch,
        grid_batch=grid_batch,
        gif_artifact=GIF_ARTIFACT if GIF_ARTIFACT in artifacts else None,
        storage_flag=storage.resolve(job.spec.storage) if embedded else None,
    )


def update(
    ref: tracking.RunRef, job: GANJob, jd: jobdir.JobDir, info: ImageInfo | None, status: str, warn: tracking.Warn
) -> str | None:
    """Write the run's description; returns it, or None (with a warning) when MLflow refused.

    Never raises: a note that cannot be written must not fail a run that trained.
    """
    try:
        note = render(collect(ref, job, jd, info, status))
        tracking.set_note(ref, note)
        return note
    except Exception as e:  # noqa: BLE001 - the run itself is unaffected
        warn(f"could not write the description of MLflow run {ref.run_id} ({str(e).splitlines()[0][:200]})")
        return None
