"""Job specs: every shipped job validates; errors name the field and suggest fixes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ganops.errors import SpecError, UserError
from ganops.spec import apply_overrides, dump, load, validate
from ganops.spec.models import ARCHS, AUGMENT_POLICIES, DATASETS, LOSSES
from tests.helpers import JOBS, REPO, run_cli

JOB_FILES = sorted(JOBS.glob("*.yaml"))
EXPECTED_JOBS = {
    "mnist_dcgan", "mnist_mlp", "cifar_mlp", "cifar_dcgan", "svhn_dcgan", "mnist_deep", "cifar_deep", "mnist_cgan",
    "cifar_sngan", "cifar_biggan_diffaug",
}  # fmt: skip


def minimal(**spec: object) -> dict:
    doc = {
        "apiVersion": "ganops.io/v1alpha1",
        "kind": "GANJob",
        "metadata": {"name": "t"},
        "spec": {"data": {"dataset": "fake"}},
    }
    doc["spec"].update(spec)
    return doc


def problems(doc: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as e:
        validate(doc)
    return dict(e.value.problems)


def test_every_seed_network_has_a_job_and_each_validates() -> None:
    assert {p.stem for p in JOB_FILES} == EXPECTED_JOBS
    for path in JOB_FILES:
        job = load(path)
        assert job.metadata.name == path.stem.replace("_", "-")
        assert job.spec.data.root, path


def test_jobs_carry_the_seed_tutorial_settings() -> None:
    mnist = load(JOBS / "mnist_dcgan.yaml").spec
    assert (mnist.model.arch, mnist.model.latent_dim) == ("dcgan", 100)
    # The DCGAN paper's optimizer and pytorch/examples' batch (see the job file for why).
    assert (mnist.train.lr, mnist.train.betas, mnist.train.batch_size) == (2e-4, (0.5, 0.999), 64)
    # Half the tutorial's widths and the DCGAN paper's D (BatchNorm, no dropout): see the job file.
    assert mnist.model.g_widths == [128, 64, 32] and mnist.model.d_norm == "batch" and mnist.model.d_dropout == 0
    cifar = load(JOBS / "cifar_dcgan.yaml").spec
    assert cifar.train.label_smoothing == 0.1 and cifar.model.g_widths == [512, 256, 128]
    assert cifar.model.d_norm == "batch" and cifar.model.g_activation == "relu"
    for name in ("mnist_mlp", "cifar_mlp"):
        mlp = load(JOBS / f"{name}.yaml").spec
        assert mlp.checkpoint.every_epochs == 15 and mlp.model.g_widths == [256, 512, 1024]
    for name in ("mnist_deep", "cifar_deep"):
        deep = load(JOBS / f"{name}.yaml").spec
        assert deep.model.arch == "deep" and deep.train.optimizer == "rmsprop" and deep.train.clip_grad_value
        assert (deep.train.rmsprop_alpha, deep.train.eps) == (0.9, 1e-7)  # Keras' RMSprop, as the tutorial ran
    assert load(JOBS / "mnist_cgan.yaml").spec.model.conditional


def test_defaults_are_filled_in_and_the_dump_round_trips() -> None:
    job = validate(minimal())
    assert job.spec.train.batch_size == 128 and job.spec.scaling.num_workers == 2
    again = validate(yaml.safe_load(dump(job)))
    assert again == job


def test_unknown_keys_are_rejected_with_a_did_you_mean() -> None:
    got = problems(minimal(train={"lrr": 0.1}, sampels={}))
    assert got["spec.train.lrr"] == "unknown field (did you mean 'lr'?)"
    assert got["spec.sampels"] == "unknown field (did you mean 'samples'?)"


def test_a_generation_spec_typo_gets_suggestions_from_its_own_fields() -> None:
    from ganops.spec.generation import GANGeneration
    from ganops.spec.loader import validate_model

    doc = {"metadata": {"name": "g"}, "spec": {"run_id": "r", "out": "o", "nmu": 3, "gpus_per_wroker": 1}}
    with pytest.raises(SpecError) as e:
        validate_model(GANGeneration, doc)
    got = dict(e.value.problems)
    assert got["spec.nmu"] == "unknown field (did you mean 'num'?)"  # not GANJob's spec fields
    assert got["spec.gpus_per_wroker"] == "unknown field (did you mean 'gpus_per_worker'?)"


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [("worker_cpu", "16Gi", "500m"), ("head_cpu", "1.5Mi", "1.5"), ("worker_memory", "500m", "16Gi"),
     ("head_memory", "2cpu", "512Mi")],
)  # fmt: skip
def test_cpu_and_memory_quantities_are_each_checked_as_their_kind(field: str, bad: str, good: str) -> None:
    # `worker_cpu: 16Gi` used to pass validate and fail in the operator.
    got = problems(minimal(cluster={field: bad}))
    assert "quantity" in got[f"spec.cluster.{field}"] and bad in got[f"spec.cluster.{field}"]
    assert getattr(validate(minimal(cluster={field: good})).spec.cluster, field) == good
    assert "more than zero" in problems(minimal(cluster={field: 0}))[f"spec.cluster.{field}"]


def test_numeric_quantities_read_as_yaml_numbers_become_strings() -> None:
    c = validate(minimal(cluster={"worker_cpu": 4, "head_cpu": 0.5, "worker_memory": 17179869184})).spec.cluster
    assert (c.worker_cpu, c.head_cpu, c.worker_memory) == ("4", "0.5", "17179869184")


def test_user_errors_carry_their_field_and_spec_errors_all_of_theirs() -> None:
    assert UserError("--out: must not be empty", field="--out").field == "--out"
    assert UserError("plain").field is None
    with pytest.raises(SpecError) as e:
        validate(minimal(train={"lr": 0, "epochs": -1}))
    assert set(e.value.fields) == {"spec.train.lr", "spec.train.epochs"}
    assert e.value.field == e.value.fields[0]


def test_a_model_validators_field_comes_from_the_error_not_its_text() -> None:
    got = problems(minimal(train={"batch_size": 100}, scaling={"num_workers": 3}))
    assert got["spec.train.batch_size"].startswith("100 is not divisible")
    doc = minimal()
    doc["spec"]["data"] = {"dataset": "mnist"}
    assert problems(doc)["spec.data.root"].startswith("required for dataset 'mnist'")


def test_user_errors_keep_their_field_through_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(UserError("--out: x", field="--out")))
    assert (type(err), str(err), err.field) == (UserError, "--out: x", "--out")
    spec_err = pickle.loads(pickle.dumps(SpecError([("spec.train.lr", "must be > 0")], "f.yaml")))
    assert spec_err.problems == [("spec.train.lr", "must be > 0")] and spec_err.field == "spec.train.lr"


def test_errors_name_the_field_path_and_the_constraint() -> None:
    got = problems(minimal(train={"lr": 0, "epochs": -1}, scaling={"num_workers": "two"}))
    assert got["spec.train.lr"] == "must be > 0"
    assert got["spec.train.epochs"] == "must be > 0"
    assert got["spec.scaling.num_workers"].startswith("must be an integer")


def test_enums_list_the_valid_choices() -> None:
    got = problems(minimal(model={"arch": "stylegan9"}, train={"loss": "wasserstein"}))
    for arch in ARCHS:
        assert arch in got["spec.model.arch"]
    assert "wgan_gp" in got["spec.train.loss"]
    # float16 would need loss scaling; only bfloat16 autocast is offered.
    got = problems(minimal(train={"precision": "fp16"}))
    assert "bf16" in got["spec.train.precision"] and "fp32" in got["spec.train.precision"]


def test_resnet_refuses_layers_it_does_not_have_naming_the_field() -> None:
    # Checked at validation (no torch), before any worker: SNGAN's D has no norm or dropout.
    got = problems(minimal(model={"arch": "resnet", "d_norm": "batch"}))
    assert "resnet has no such layers" in got["spec.model.d_norm"]
    got = problems(minimal(model={"arch": "resnet", "g_dropout": 0.2}))
    assert "resnet has no such layers" in got["spec.model.g_dropout"]
    got = problems(minimal(model={"arch": "resnet", "kernel_size": 4}))
    assert "odd kernels" in got["spec.model.kernel_size"]
    validate(minimal(model={"arch": "resnet", "d_norm": "none", "d_dropout": 0, "d_spectral_norm": False}))


def test_augment_refuses_what_it_cannot_do_naming_the_field() -> None:
    got = problems(minimal(augment={"policy": ["color", "flip"]}))
    assert got["spec.augment.policy[1]"] == "must be one of: 'color', 'translation', 'cutout' (got 'flip')"
    got = problems(minimal(augment={"ada_target": 0.6}))
    assert "empty" in got["spec.augment.ada_target"]
    got = problems(minimal(augment={"policy": ["color", "color"]}))
    assert "twice" in got["spec.augment.policy"]
    assert "spec.augment.p" in problems(minimal(augment={"policy": ["color"], "p": 1.5}))


def test_regularisers_and_d_steps_refuse_impossible_values_naming_the_field() -> None:
    got = problems(minimal(train={"r1_gamma": -1, "r2_gamma": -0.5, "reg_interval": 0, "d_steps": 0}))
    assert set(got) == {"spec.train.r1_gamma", "spec.train.r2_gamma", "spec.train.reg_interval", "spec.train.d_steps"}
    assert got["spec.train.r1_gamma"] == "must be >= 0", got


def test_keep_best_and_fid_regression_take_either_evaluation_schedule() -> None:
    for every in ({"every_epochs": 2}, {"every_steps": 500}):
        job = validate(minimal(eval=every, checkpoint={"keep_best": "fid"}, train={"stop_on": ["fid_regression"]}))
        assert job.spec.eval.enabled
    got = problems(minimal(checkpoint={"keep_best": "fid"}))
    assert "eval.every_epochs or eval.every_steps" in got["spec.checkpoint.keep_best"], got
    got = problems(minimal(train={"stop_on": ["fid_regression"]}))
    assert "eval.every_epochs or eval.every_steps" in got["spec.train.stop_on"], got
    assert set(problems(minimal(eval={"every_steps": 0}))) == {"spec.eval.every_steps"}


def test_registries_in_the_spec_match_the_worker_side_registries() -> None:
    from ganops import data, losses, nets

    assert set(ARCHS) == set(nets.ARCHS)
    assert set(LOSSES) == set(losses.LOSSES)
    assert set(DATASETS) == set(data.DATASETS)
    from ganops import augment

    assert AUGMENT_POLICIES == tuple(augment.POLICIES)


def test_global_batch_must_split_evenly_over_workers() -> None:
    got = problems(minimal(train={"batch_size": 100}, scaling={"num_workers": 3}))
    assert "not divisible by scaling.num_workers=3" in got["spec.train.batch_size"]


def test_dataset_root_is_required_except_for_fake_data() -> None:
    doc = minimal()
    doc["spec"]["data"] = {"dataset": "mnist"}
    assert "required" in problems(doc)["spec.data.root"]


def test_name_must_be_a_dns_label() -> None:
    doc = minimal()
    doc["metadata"]["name"] = "My_Job"
    assert "lowercase" in problems(doc)["metadata.name"]


def test_overrides_set_nested_fields_with_yaml_values() -> None:
    doc = apply_overrides(minimal(), ["spec.train.epochs=3", "spec.train.betas=[0.0, 0.9]", "spec.storage=s3://bkt/p"])
    job = validate(doc)
    assert job.spec.train.epochs == 3 and job.spec.train.betas == (0.0, 0.9) and job.spec.storage == "s3://bkt/p"


def test_a_malformed_override_is_a_user_error() -> None:
    with pytest.raises(UserError, match="expected PATH=VALUE"):
        apply_overrides(minimal(), ["spec.train.epochs"])
    with pytest.raises(UserError, match="spec.train.epochs is a value, not a section"):
        apply_overrides(minimal(train={"epochs": 2}), ["spec.train.epochs.x=1"])


_ganops = run_cli


def test_cli_validate_prints_the_resolved_spec(tmp_path: Path) -> None:
    r = _ganops("validate", str(JOBS / "mnist_dcgan.yaml"), "--set", "spec.train.epochs=3")
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    assert resolved["spec"]["train"]["epochs"] == 3
    assert resolved["spec"]["train"]["d_steps"] == 1  # defaults are filled in


def test_cli_validate_reads_every_kind_by_its_kind_field(tmp_path: Path) -> None:
    from ganops.spec.loader import load_resource

    gen = {"apiVersion": "ganops.io/v1alpha1", "kind": "GANGeneration", "metadata": {"name": "g"},
           "spec": {"run_id": "abc", "out": "s3://bucket/gen", "num": 100}}  # fmt: skip
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(gen))
    r = _ganops("validate", str(path), "--set", "spec.seed=7")
    assert r.returncode == 0 and "valid GANGeneration" in r.stderr, r.stderr
    resolved = yaml.safe_load(r.stdout)
    assert resolved["spec"]["seed"] == 7 and resolved["spec"]["format"] == "png"  # defaults filled in
    # A typo is answered with the generation's own fields (it was GANJob's, and "kind must be GANJob").
    gen["spec"]["nmu"] = gen["spec"].pop("num")
    path.write_text(yaml.safe_dump(gen))
    r = _ganops("validate", str(path))
    assert r.returncode == 2 and "spec.nmu: unknown field (did you mean 'num'?)" in r.stderr, r.stderr
    ev = {**gen, "kind": "GANEvaluation", "spec": {"run_id": "abc", "metrics": ["fid"]}}
    path.write_text(yaml.safe_dump(ev))
    assert load_resource(path).kind == "GANEvaluation"
    path.write_text(yaml.safe_dump({**ev, "kind": "GANSweepz"}))
    with pytest.raises(SpecError) as e:
        load_resource(path)
    assert e.value.problems == [("kind", "must be one of: GANJob, GANGeneration, GANEvaluation (got 'GANSweepz')")]


def test_validate_and_the_dry_run_download_and_create_nothing(tmp_path: Path) -> None:
    # The shipped job (download: true) with its data not here yet: before, both tried to
    # download MNIST (an offline machine failed them) after creating the data directory.
    sets = ["--set", f"spec.data.root={tmp_path}/data/mnist", "--set", f"spec.storage={tmp_path}/runs",
            "--set", f"spec.tracking.uri=sqlite:///{tmp_path}/db/mlflow.db"]  # fmt: skip
    for args in (["validate"], ["submit", "--dry-run", "-q"]):
        r = _ganops(*args, str(JOBS / "mnist_dcgan.yaml"), *sets, timeout=30)
        assert r.returncode == 0, r.stderr
        assert f"data not here yet ({tmp_path}/data/mnist): the submit downloads it" in r.stderr, r.stderr
        assert list(tmp_path.iterdir()) == []


def test_cli_spec_errors_exit_non_zero_without_a_traceback(tmp_path: Path) -> None:
    r = _ganops("submit", str(JOBS / "mnist_dcgan.yaml"), "--set", "spec.train.lr=-1", "--dry-run")
    assert r.returncode == 2
    assert "spec.train.lr: must be > 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_shows_the_traceback_with_ganops_debug() -> None:
    import os

    env = {**os.environ, "GANOPS_DEBUG": "1"}
    r = _ganops("validate", str(JOBS / "mnist_dcgan.yaml"), "--set", "spec.train.lr=-1", env=env)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_cli_names_a_missing_spec_file_and_bad_yaml(tmp_path: Path) -> None:
    r = _ganops("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml: no such file" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    r = _ganops("validate", str(bad))
    assert r.returncode == 2 and "bad.yaml:" in r.stderr and "not valid YAML" in r.stderr


def test_submit_dry_run_stops_after_validation(tmp_path: Path, mnist_root: Path) -> None:
    r = _ganops(
        "submit", str(JOBS / "mnist_dcgan.yaml"), "--dry-run",
        "--set", f"spec.data.root={mnist_root}", "--set", "spec.data.split=test",
        "--set", f"spec.storage={tmp_path}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_cli_module_imports_no_torch_ray_or_mlflow() -> None:
    code = (
        "import ganops.cli, ganops.client, sys; print(sorted(m for m in ('torch','ray','mlflow') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize(
    "sets",
    [
        {"loss": "wgan_gp"},  # cifar_dcgan's own `d_norm: batch`
        {"loss": "wgan_gp", "d_norm": None},  # dcgan's default at 32 px is BatchNorm too
    ],
)
def test_wgan_gp_with_a_batchnorm_critic_is_refused_naming_d_norm(sets: dict) -> None:
    raw = yaml.safe_load((JOBS / "cifar_dcgan.yaml").read_text())
    raw["spec"]["train"]["loss"] = sets["loss"]
    if "d_norm" in sets:
        del raw["spec"]["model"]["d_norm"]
    got = problems(raw)
    assert "spec.model.d_norm" in got and "d_norm: layer" in got["spec.model.d_norm"]


def test_wgan_gp_takes_a_layer_norm_critic_and_the_28px_dcgan_default() -> None:
    raw = yaml.safe_load((JOBS / "cifar_dcgan.yaml").read_text())
    raw["spec"]["train"]["loss"] = "wgan_gp"
    raw["spec"]["model"]["d_norm"] = "layer"
    assert validate(raw).spec.model.d_norm == "layer"
    mnist = yaml.safe_load((JOBS / "mnist_dcgan.yaml").read_text())
    del mnist["spec"]["model"]["d_norm"]
    mnist["spec"]["train"]["loss"] = "wgan_gp"
    validate(mnist)  # dcgan has no BatchNorm in D at 28 px


def _field_paths(model: type, prefix: str = "") -> set[str]:
    from pydantic import BaseModel

    from ganops.spec.loader import _model_type

    out = set()
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        out.add(path)
        sub = _model_type(f.annotation)
        if sub is not None and issubclass(sub, BaseModel):
            out |= _field_paths(sub, f"{path}.")
    return out


def test_field_docs_name_only_fields_that_exist() -> None:
    # `kubectl explain` and `ganops validate` users read these; a renamed field must not
    # leave its old name behind in another field's description.
    import re

    from ganops.spec.evaluation import GANEvaluationSpec
    from ganops.spec.generation import GANGenerationSpec
    from ganops.spec.models import GANJobSpec

    for model in (GANJobSpec, GANGenerationSpec, GANEvaluationSpec):
        paths = _field_paths(model)
        # A dotted name that starts with one of the spec's sections, quoted or not.
        sections = "|".join(model.model_fields)
        mention = re.compile(rf"(?<![\w.])(?:spec\.)?((?:{sections})(?:\.[a-z_]+)+)")
        checked = 0
        for path in sorted(paths):
            parent = model
            for part in path.split(".")[:-1]:
                from ganops.spec.loader import _model_type

                parent = _model_type(parent.model_fields[part].annotation)
            doc = parent.model_fields[path.split(".")[-1]].description or ""
            for ref in mention.findall(doc):
                checked += 1
                assert ref.rstrip(".") in paths, f"{model.__name__}.{path}: its description names {ref}, no field"
        assert checked or model is not GANJobSpec  # the pattern finds what it should


def test_every_evaluation_field_is_documented_and_the_kinds_share_the_loader() -> None:
    from ganops.spec.evaluation import GANEvaluation, GANEvaluationSpec
    from ganops.spec.loader import loads_model

    assert [n for n, f in GANEvaluationSpec.model_fields.items() if not f.description] == []
    ev = loads_model(GANEvaluation, "metadata: {name: e}\nspec: {run_id: abc, metrics: [fid]}\n", "inline")
    assert ev.kind == "GANEvaluation" and ev.spec.metrics == ["fid"] and ev.spec.num_samples is None
    with pytest.raises(SpecError, match="set exactly one of run_id and model"):
        loads_model(GANEvaluation, "metadata: {name: e}\nspec: {}\n", "inline")


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"best_of": 2, "z_file": "z.npy"}, "spec.best_of", "cannot be combined with z_file"),
        ({"interpolate": 4, "best_of": 3}, "spec.interpolate", "cannot be combined with z_file (--z) or best_of"),
        ({"interpolate": 1}, "spec.interpolate", "needs at least 2 steps"),
    ],
)
def test_generation_option_combinations_are_refused_by_the_spec_itself(fields: dict, path: str, message: str) -> None:
    # The spec holds these rules, so a GANGeneration applied with kubectl is refused by the
    # operator as `ganops generate` refuses the flags, before any model is looked up.
    from ganops.spec.generation import GANGeneration
    from ganops.spec.loader import validate_model

    doc = {"metadata": {"name": "g"}, "spec": {"run_id": "abc", "out": "s3://bkt/o", **fields}}
    with pytest.raises(SpecError) as e:
        validate_model(GANGeneration, doc)
    assert e.value.field == path and message in str(e.value)


def test_the_arch_sizes_the_preflight_checks_are_the_nets_own() -> None:
    from ganops.nets import ARCHS as NET_ARCHS
    from ganops.spec.models import ARCH_RESOLUTIONS

    assert ARCH_RESOLUTIONS == {a.name: a.resolutions for a in NET_ARCHS.values()}


def test_a_checkpoint_from_before_arch_dependent_defaults_still_resumes_the_same_job() -> None:
    # Checkpoints written before kernel_size/init became arch defaults (and before
    # d_spectral_norm) saved 5, "dcgan" and nothing: the same job file must still resume them.
    from ganops.train.launch import _compatible

    job = load(JOBS / "mnist_cgan.yaml")
    before = job.to_dict()
    before["spec"]["model"].update(kernel_size=5, init="dcgan")
    before["spec"]["model"].pop("d_spectral_norm")
    assert _compatible(before, job) == []
    other = load(JOBS / "mnist_cgan.yaml", ["spec.model.d_spectral_norm=true"])
    assert _compatible(before, other) == ["spec.model.d_spectral_norm"]


def test_the_resume_check_fills_the_same_arch_defaults_the_nets_build_with() -> None:
    # model_for_resume is the torch-free twin of the nets' arch defaults; they must agree.
    from ganops.nets import resolve_config
    from ganops.spec.models import ModelSpec, model_for_resume

    for arch in ARCHS:
        cfg = resolve_config(ModelSpec(arch=arch), (1, 28, 28), None)
        filled = model_for_resume(ModelSpec(arch=arch).model_dump())
        assert (filled["kernel_size"], filled["init"], filled["d_spectral_norm"]) == (
            cfg.kernel_size, cfg.init, cfg.d_spectral_norm,
        ), arch  # fmt: skip
