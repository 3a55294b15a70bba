"""What stands behind ``--run-id RUN`` or ``--model models:/NAME@ALIAS``: the logged
generator, the training spec, the model's contract, and (for ``--best-of``) the
discriminator saved with that generator.

Which checkpoint holds that discriminator: a job logs a generator (i) at the end of training,
recorded as the run's ``ganops.model_uri`` next to ``ganops.checkpoint`` (the latest
checkpoint), and (ii) at each new best FID that beats the champion, registered and recorded
in the job's ``eval/best.json`` as ``model_uri`` next to ``checkpoint`` (``best/``). A
generator found in neither place (a champion whose ``best/`` was since replaced, a version
logged by hand) has no known D, and ``--best-of`` refuses it rather than rank with another
checkpoint's D."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import yaml

from ganops import storage
from ganops.errors import UserError
from ganops.generate.options import ModelInfo
from ganops.spec import validate
from ganops.spec.models import GANJob
from ganops.tracking import CHECKPOINT_TAG

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class Source:
    model_uri: str
    run_id: str
    tracking_uri: str
    experiment_id: str
    job: GANJob
    info: ModelInfo
    checkpoint: str | None
    """The run's latest checkpoint when training finished (tag ``ganops.checkpoint``)."""
    logged_model: str | None = None
    """The MLflow logged model the generator is (``models:/m-…``), whatever URI named it."""
    final_model: str | None = None
    """The generator logged when training finished (tag ``ganops.model_uri``)."""
    storage: str | None = None
    """The job's storage root (tag ``ganops.storage``), where ``eval/best.json`` lives."""

    def run_tags(self, kind: str) -> dict[str, str]:
        """Tags of a run derived from this generator (``generate``, ``evaluate``): they link
        it to its training run and model."""
        from ganops import __version__

        return {
            "ganops.kind": kind,
            "ganops.training_run_id": self.run_id,
            "ganops.model_uri": self.model_uri,
            "ganops.job": self.job.name,
            "ganops.version": __version__,
        }

    def describe(self) -> str:
        classes = f", {self.info.num_classes} classes" if self.info.num_classes else ""
        shape = "×".join(map(str, self.info.image_shape))
        return f"{self.model_uri} (run {self.run_id}: {self.job.name}, {shape}, z {self.info.latent_dim}{classes})"


def _client(uri: str) -> Any:
    from ganops.tracking import mlflow_client

    return mlflow_client(uri)


def _run_for_model(client: Any, model: str) -> tuple[str, str, str | None]:
    """models:/NAME@ALIAS or models:/NAME/VERSION → (model URI to load, training run id,
    the logged model behind the version)."""
    m = _MODEL_URI.match(model)
    if not m:
        raise UserError(f"--model: expected models:/NAME@ALIAS or models:/NAME/VERSION, got {model!r}")
    name = m.group("name")
    try:
        if m.group("alias"):
            version = client.get_model_version_by_alias(name, m.group("alias"))
        else:
            version = client.get_model_version(name, m.group("version"))
    except Exception as e:  # noqa: BLE001 - MLflow raises its own exception for "not found"
        raise UserError(f"--model: {model} was not found in the registry ({str(e).splitlines()[0][:160]})") from None
    if not version.run_id:
        raise UserError(f"--model: {model} has no training run; ganops needs the run's spec")
    logged = f"models:/{version.model_id}" if getattr(version, "model_id", None) else version.source
    return model, version.run_id, logged


def resolve(tracking_uri: str, run_id: str | None = None, model: str | None = None) -> Source:
    """Find the generator and everything generation needs; every problem is a UserError."""
    from ganops.tracking import check_reachable, redact

    if bool(run_id) == bool(model):
        raise UserError("give exactly one of --run-id and --model")
    check_reachable(tracking_uri)
    client = _client(tracking_uri)
    model_uri = logged = None
    if model:
        model_uri, run_id, logged = _run_for_model(client, model)
    assert run_id is not None
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - unknown run ids raise MlflowException
        raise UserError(f"--run-id: no run {run_id} in the tracking store {redact(tracking_uri)}") from None
    tags = run.data.tags
    model_uri = model_uri or tags.get("ganops.model_uri")
    if not model_uri:
        raise UserError(
            f"--run-id: run {run_id} has no generator (ganops logs it when training finishes; "
            "resume the job to finish it, or pick another run)"
        )
    try:
        spec_path = client.download_artifacts(run_id, "spec.yaml")
        with open(spec_path) as f:
            job = validate(yaml.safe_load(f), f"run {run_id}: spec.yaml")
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - not a ganops run
        raise UserError(f"--run-id: run {run_id} has no spec.yaml artifact (not a ganops training run?)") from None
    return Source(
        model_uri=model_uri,
        run_id=run_id,
        tracking_uri=tracking_uri,
        experiment_id=run.info.experiment_id,
        job=job,
        info=_model_info(model_uri, tracking_uri),
        checkpoint=tags.get(CHECKPOINT_TAG),
        logged_model=logged or model_uri,
        final_model=tags.get("ganops.model_uri"),
        storage=tags.get("ganops.storage"),
    )


def _model_info(model_uri: str, tracking_uri: str) -> ModelInfo:
    from ganops.tracking import aside

    meta = aside.model_metadata(tracking_uri, model_uri)
    if "ganops_latent_dim" not in meta:
        raise UserError(f"{model_uri} was not logged by ganops (no ganops metadata)")
    return ModelInfo(
        latent_dim=int(meta["ganops_latent_dim"]),
        num_classes=int(meta["ganops_num_classes"]) or None,
        image_shape=tuple(int(v) for v in meta["ganops_image_shape"]),
    )


def load_generator(source: Source) -> Any:
    """The logged generator on the CPU: input ``[z (, class)]`` float32, output images.

    MLflow 3 stores it as a torch.export program ("pt2"): loading runs no pickled code and
    needs no ganops install, and the graph is fixed in eval mode, as it was exported.
    """
    from ganops.tracking import aside

    return aside.load_pytorch_model(source.tracking_uri, source.model_uri)


def discriminator_checkpoint(source: Source) -> str:
    """The checkpoint saved with ``source``'s generator (see the module's docstring), or a
    UserError naming --best-of when no checkpoint is recorded for it."""
    from ganops import jobdir

    g = source.logged_model
    if g:
        root = source.storage or source.job.spec.storage
        try:
            best = jobdir.JobDir(root, source.job.name).read_best()
        except (UserError, OSError, ValueError):
            best = None  # no readable best.json: only the final generator can be matched
        if best and best.get("model_uri") == g and best.get("checkpoint"):
            return str(best["checkpoint"])
        if g == source.final_model and source.checkpoint:
            return source.checkpoint
    if g is not None and g == source.final_model:
        raise UserError(f"--best-of: run {source.run_id} records no checkpoint to take its discriminator from")
    raise UserError(
        f"--best-of: {source.model_uri} was saved neither with run {source.run_id}'s final checkpoint nor with "
        "its best/ checkpoint, so the discriminator trained with it is unknown (another checkpoint's would rank "
        "with the wrong one); use the run's final generator (--run-id) or its latest champion, or drop --best-of"
    )


def load_discriminator(source: Source, generator: Any = None) -> Any:
    """D from the checkpoint saved with the generator (what ``--best-of`` ranks with).

    With ``generator`` (the loaded model), the checkpoint's own G must hold the same
    weights: proof, beyond what MLflow records, that this D was trained with it.
    """
    import torch

    from ganops import jobdir
    from ganops.nets import build_discriminator

    checkpoint = discriminator_checkpoint(source)
    loc = storage.locate(checkpoint).child(jobdir.STATE_FILE)
    try:
        raw = storage.read_bytes(loc)
    except (FileNotFoundError, OSError):
        raise UserError(f"--best-of: the checkpoint {loc.uri} cannot be read (moved or deleted?)") from None
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if generator is not None and _same_weights(generator, state["nets"]) is False:
        raise UserError(
            f"--best-of: the checkpoint {checkpoint} recorded for {source.model_uri} holds another generator, "
            "so its discriminator was not trained with this one; drop --best-of"
        )
    info = source.info
    d = build_discriminator(source.job.spec.model, info.image_shape, info.num_classes)
    d.load_state_dict(state["nets"]["d"])
    return d.eval()


def _same_weights(generator: Any, nets: dict[str, Any]) -> bool | None:
    """Whether the checkpoint's sampler (EMA G, else G) has the generator's weights; None
    when the two name their tensors differently and cannot be compared."""
    import torch

    saved = nets.get("g_ema") or nets["g"]
    mine = {k.removeprefix("g."): v for k, v in generator.state_dict().items()}  # GeneratorExport wraps G as .g
    common = [k for k in saved if k in mine]
    if not common:
        return None
    return all(torch.equal(saved[k], mine[k].detach().cpu()) for k in common)
