"""``ganops evaluate``: score a logged generator and record the scores as an MLflow run.

The generator comes from MLflow (a training run or a registered version, as for
``ganops generate``); the settings default to the training spec's ``eval`` section, so
evaluating a run's final model on demand reproduces its last training-time score. Each
evaluation is its own MLflow run in the training run's experiment, tagged with the
training run, like a generation job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from ganops.errors import UserError
from ganops.evaluate.scores import Scores
from ganops.evaluate.weights import SHA_FIELD, WEIGHTS_FIELD
from ganops.generate.source import Source
from ganops.spec.evaluation import GANEvaluationSpec

Echo = Callable[[str], None]


@dataclass
class EvaluateResult:
    scores: Scores
    evaluation_run_id: str | None
    elapsed_s: float


def evaluate(
    source: Source,
    opts: GANEvaluationSpec,
    *,
    show_progress: bool = True,
    echo: Echo = print,
    spec_doc: dict[str, Any] | None = None,
) -> EvaluateResult:
    """Score ``source``'s generator as ``opts`` says (unset fields: the training spec's
    ``eval``); ``opts.log`` records the scores as an MLflow run, with ``spec_doc`` (the
    resolved GANEvaluation) as ``evaluation.yaml``. ``show_progress``: live lines on stderr
    while the reference statistics and the samples are computed."""
    import torch

    from ganops.evaluate.evaluator import EvalSettings, Evaluator
    from ganops.generate.source import load_generator

    spec = source.job.spec
    if opts.data_root:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"root": opts.data_root})})
    # Weights named on the command line are checked against --inception-sha256 (default: the
    # pinned file); weights from the training spec against the spec's own expectation.
    from_flag = opts.inception_weights is not None
    weights = opts.inception_weights if from_flag else spec.eval.inception_weights
    sha = opts.inception_sha256 or (None if from_flag else spec.eval.inception_sha256)
    # Neither given: load_inception fetches the published file once into $GANOPS_CACHE.
    weights_field = (
        "--inception-weights" if from_flag else f"{WEIGHTS_FIELD} (run {source.run_id}; or --inception-weights)"
    )
    sha_field = "--inception-sha256" if from_flag or opts.inception_sha256 else f"{SHA_FIELD} (or --inception-sha256)"
    overrides: dict[str, Any] = {"weights": weights, "sha256": sha, "weights_field": weights_field,
                                 "sha_field": sha_field}  # fmt: skip
    for name, value in (("num_samples", opts.num_samples), ("metrics", tuple(opts.metrics) if opts.metrics else None), ("batch_size", opts.batch_size),
                        ("seed", opts.seed), ("reference_split", opts.reference_split)):  # fmt: skip
        if value is not None:
            overrides[name] = value
    settings = EvalSettings.from_spec(spec, **overrides)
    device = _device(opts.device)

    t0 = time.time()
    evaluator = Evaluator(spec, settings, device, warn=lambda m: echo(f"warning: {m}"), show_progress=show_progress)
    g = load_generator(source)
    try:
        ref = evaluator.prepare_reference()
    except UserError as e:
        if opts.data_root is None and (e.field or "").startswith("spec.data."):
            hint = f"from run {source.run_id}'s spec; --data-root says where the files are here"
            raise UserError(f"{e} ({hint})", field=e.field) from None
        raise
    assert ref is not None
    how = "read from the cache" if ref.cached else "computed"
    echo(f"reference: {ref.meta['dataset']} {ref.meta['split']}, {ref.num_images} images ({how})")
    info = source.info

    from ganops.model_input import join_class

    def fn(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return g(join_class(z, y))  # the MLflow model takes one float32 input

    scores = evaluator.score(fn, info.latent_dim, info.num_classes, device=torch.device("cpu"))
    assert scores is not None
    elapsed = time.time() - t0
    scores.record.update({"model_uri": source.model_uri, "training_run_id": source.run_id})
    run_id = _log_run(source, settings, scores, elapsed, spec_doc) if opts.log else None
    return EvaluateResult(scores, run_id, elapsed)


def _device(name: str | None) -> Any:
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: {name!r} is not a device (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: CUDA is not available here; use --device cpu")
    return device


def _log_run(source: Source, settings: Any, scores: Scores, elapsed: float, spec_doc: dict[str, Any] | None) -> str:
    """The evaluation's own MLflow run: options as params, scores as metrics, the record as an artifact."""
    from ganops.tracking import aside

    ref = scores.record["reference"]
    params = {
        "model_uri": source.model_uri, "num_samples": settings.num_samples, "metrics": ",".join(settings.metrics),
        "seed": settings.seed, "inception_sha256": scores.record.get("inception_sha256"),
        "reference.dataset": ref["dataset"], "reference.split": ref["split"],
        "reference.num_images": ref["num_images"], "reference.key": ref["key"],
    }  # fmt: skip
    uri = source.tracking_uri
    run_id = aside.open_run(
        uri, source.experiment_id, f"{source.job.name}-evaluate", source.run_tags("evaluate"), params
    )
    status = "FAILED"
    try:
        aside.log_metrics(uri, run_id, {**scores.mlflow_metrics(), "eval/time_s": elapsed})
        files = {"scores.json": aside.json_bytes(scores.record)}
        if spec_doc is not None:  # the evaluation as asked, where the MLflow UI shows it
            files["evaluation.yaml"] = yaml.safe_dump(spec_doc, sort_keys=False).encode()
        aside.log_files(uri, run_id, files)
        status = "FINISHED"
    finally:
        aside.close_run(uri, run_id, status)
    return run_id
