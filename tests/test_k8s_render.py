"""The CRDs and the RayJobs the operator renders: generated from the spec models, valid
for KubeRay's real schema, and carrying what the spec asks for (no API server needed)."""

from __future__ import annotations

import base64
import json
import shlex

import pytest
import yaml

from ganops.client import load_job
from ganops.entrypoint import decode_spec
from ganops.errors import SpecError, UserError
from ganops.k8s import RESTART_ANNOTATION, crd
from ganops.k8s.objects import custom_object
from ganops.k8s.render import Defaults, render
from ganops.spec.generation import GANGeneration
from ganops.spec.loader import validate_model
from ganops.spec.models import GANJob
from tests import rayjob_schema
from tests.helpers import JOBS, REPO, cli_in_process

ALL_JOBS = sorted(JOBS.glob("*.yaml"))
DEFAULTS = Defaults(
    image="registry.example/ganops:0.1.0", secret="ganops-credentials", service_account="ganops-train",
    env={"MLFLOW_TRACKING_URI": "http://mlflow.ganops:5000", "AWS_ENDPOINT_URL": "http://minio.ganops:9000"},
)  # fmt: skip


def _object(path, *overrides: str, namespace: str = "team-a") -> dict:
    obj = custom_object(load_job(path, list(overrides), resolve_paths=False), namespace)
    obj["metadata"]["uid"] = "1234-uid"
    return obj


def _spec_in(entrypoint: str) -> dict:
    args = shlex.split(entrypoint)
    assert args[:4] == ["ganops", "submit", "--target", "local"]  # the driver trains where it is
    return yaml.safe_load(base64.b64decode(args[args.index("--spec-b64") + 1]))


def test_crd_files_match_the_models() -> None:
    """helm/ganops/crds is generated from the pydantic models; regenerate on drift."""
    for name, text in crd.crd_files().items():
        path = REPO / "helm" / "ganops" / "crds" / name
        assert path.exists(), f"{path} missing: run `ganops operator crd --out-dir helm/ganops/crds`"
        assert path.read_text() == text, (
            f"{path} drifted from the models: run `ganops operator crd --out-dir helm/ganops/crds`"
        )


def test_crd_schema_follows_the_models() -> None:
    schema = crd.crd("GANJob")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(schema["properties"]) == set(GANJob.model_fields["spec"].annotation.model_fields)
    train = schema["properties"]["train"]["properties"]
    assert train["loss"]["enum"] == ["bce", "minimax", "hinge", "wgan_gp", "lsgan"]
    assert train["epochs"] == {**train["epochs"], "type": "integer", "minimum": 0, "exclusiveMinimum": True}
    assert train["betas"]["type"] == "array" and train["betas"]["maxItems"] == 2
    assert schema["required"] == ["data"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "anyOf" not in text and "const" not in text and "prefixItems" not in text
    assert schema["properties"]["checkpoint"]["properties"]["keep_best"]["enum"] == ["fid"]


@pytest.mark.parametrize("path", ALL_JOBS, ids=[p.stem for p in ALL_JOBS])
def test_every_job_renders_a_valid_rayjob(path) -> None:
    rayjob = render(_object(path, "spec.storage=s3://bucket/runs"), DEFAULTS)
    assert rayjob_schema.errors(rayjob) == []
    # The entrypoint carries the job itself: the driver validates the same spec.
    assert _spec_in(rayjob["spec"]["entrypoint"])["metadata"]["name"] == load_job(path).name


def test_the_schema_check_can_fail() -> None:
    rayjob = render(_object(ALL_JOBS[0]), DEFAULTS)
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    rayjob["spec"]["backoffLimit"] = "2"
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] = "x"
    errs = rayjob_schema.errors(rayjob)
    assert any("replicas" in e for e in errs) and any("backoffLimit" in e for e in errs)
    assert any("imagePullPolicy2" in e for e in errs)


def test_rayjob_content_follows_spec_and_defaults() -> None:
    obj = _object(
        JOBS / "cifar_dcgan.yaml",
        "spec.scaling.num_workers=4", "spec.scaling.use_gpu=true", "spec.storage=s3://bucket/runs",
        "spec.cluster.node_selector={nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}",
        "spec.cluster.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
        "spec.cluster.worker_cpu=8", "spec.cluster.worker_memory=32Gi", "spec.cluster.active_deadline_seconds=7200",
        "spec.cluster.backoff_limit=2", "spec.cluster.ttl_seconds_after_finished=300",
    )  # fmt: skip
    rj = render(obj, DEFAULTS)
    meta, spec = rj["metadata"], rj["spec"]
    assert meta["namespace"] == "team-a" and meta["name"] == "cifar-dcgan"
    assert meta["ownerReferences"] == [{
        "apiVersion": "ganops.io/v1alpha1", "kind": "GANJob", "name": "cifar-dcgan", "uid": "1234-uid",
        "controller": True, "blockOwnerDeletion": True,
    }]  # fmt: skip
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 300
    assert spec["activeDeadlineSeconds"] == 7200 and spec["backoffLimit"] == 2
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    pod = group["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "ganops-train" and c["image"] == "registry.example/ganops:0.1.0"
    # Credentials only by reference; plain settings as env.
    assert c["envFrom"] == [{"secretRef": {"name": "ganops-credentials"}}]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ganops:5000" and env["GANOPS_K8S_UID"] == "1234-uid"
    assert not any("SECRET" in k or "TOKEN" in k or "PASSWORD" in k for k in env)
    # The head runs only the driver, on any node.
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nodeSelector" not in head["template"]["spec"]
    # Ray pods ignore SIGTERM (bash is PID 1): a short grace frees the node in seconds, not 30.
    assert head["template"]["spec"]["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"] == 5
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    # Each Ray Train worker reserves its pod's CPUs (torch threads follow the reservation).
    sent = _spec_in(spec["entrypoint"])
    assert sent["spec"]["scaling"]["resources_per_worker"] == {"CPU": 8.0}
    assert sent["spec"]["scaling"]["use_gpu"] is True


def test_spec_cluster_overrides_operator_defaults() -> None:
    rj = render(_object(JOBS / "mnist_dcgan.yaml", "spec.cluster.image=my/img:1", "spec.cluster.secret=mine"), DEFAULTS)
    c = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert c["image"] == "my/img:1" and c["envFrom"] == [{"secretRef": {"name": "mine"}}]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_defaults_from_the_operator_environment() -> None:
    d = Defaults.from_env({
        "GANOPS_IMAGE": "x/y:1", "GANOPS_SECRET": "s", "GANOPS_WORKER_CPU": "2",
        "GANOPS_NODE_SELECTOR": '{"pool": "gpu"}', "MLFLOW_TRACKING_URI": "http://m:5000",
        "AWS_SECRET_ACCESS_KEY": "never-copied",
    })  # fmt: skip
    assert (d.image, d.secret, d.worker_cpu, d.node_selector) == ("x/y:1", "s", "2", {"pool": "gpu"})
    assert d.env == {"MLFLOW_TRACKING_URI": "http://m:5000"}
    with pytest.raises(UserError, match="GANOPS_TOLERATIONS"):
        Defaults.from_env({"GANOPS_TOLERATIONS": "[not json"})


def test_invalid_objects_are_spec_errors() -> None:
    obj = _object(JOBS / "mnist_dcgan.yaml")
    obj["spec"]["train"]["lrr"] = 0.1
    with pytest.raises(SpecError, match="spec.train.lrr"):
        render(obj, DEFAULTS)
    obj = _object(JOBS / "mnist_dcgan.yaml")
    obj["metadata"]["name"] = "a" * 50
    with pytest.raises(SpecError, match="metadata.name.*47"):
        render(obj, DEFAULTS)


def test_generation_renders_a_valid_rayjob() -> None:
    gen = GANGeneration.model_validate({
        "metadata": {"name": "gen-abc"},
        "spec": {"run_id": "abc123", "out": "s3://bucket/gen", "num": 5000, "workers": 3, "gpus_per_worker": 1,
                 "best_of": 4, "truncation": 1.5},
    })  # fmt: skip
    obj = custom_object(gen, "team-a")
    obj["metadata"]["uid"] = "gen-uid"
    rj = render(obj, DEFAULTS)
    assert rayjob_schema.errors(rj) == []
    args = shlex.split(rj["spec"]["entrypoint"])
    assert args[:5] == ["ganops", "generate", "--target", "local", "--spec-b64"]
    # The driver receives the GANGeneration itself and validates it as the submitter did.
    sent = validate_model(GANGeneration, yaml.safe_load(decode_spec(args[5])))
    assert sent.spec == gen.spec and sent.name == gen.name
    assert rj["metadata"]["ownerReferences"][0]["kind"] == "GANGeneration"
    assert rj["metadata"]["labels"]["ganops.io/kind"] == "generate"
    (group,) = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == 3
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


_cli = cli_in_process


def test_submit_dry_run_prints_the_ganjob(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["submit", str(JOBS / "cifar_dcgan.yaml"), "--target", "k8s", "--dry-run", "-o", "yaml",
                           "-n", "team-a", "--set", "spec.storage=s3://bkt/runs"], capsys)  # fmt: skip
    assert code == 0, err
    obj = yaml.safe_load(out)
    assert (obj["apiVersion"], obj["kind"], obj["metadata"]) == (
        "ganops.io/v1alpha1",
        "GANJob",
        {"name": "cifar-dcgan", "namespace": "team-a"},
    )
    # Paths stay as written: on the cluster they mean the pods' file systems.
    assert obj["spec"]["data"]["root"] == "./data/cifar10"
    assert "dry run" in err and "warning" not in err
    code, out, err = _cli(
        ["submit", str(JOBS / "cifar_dcgan.yaml"), "--target", "k8s", "--dry-run", "-o", "json"], capsys
    )
    assert code == 0 and "spec.storage is the path ./runs" in err  # checkpoints would die with the pod
    assert json.loads(out)["kind"] == "GANJob"


def test_operator_render_prints_a_valid_rayjob(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GANOPS_IMAGE", "reg/ganops:9")
    code, out, err = _cli(["operator", "render", str(JOBS / "svhn_dcgan.yaml"), "-n", "team-a",
                           "--set", "spec.scaling.use_gpu=true"], capsys)  # fmt: skip
    assert code == 0, err
    rj = yaml.safe_load(out)
    assert rayjob_schema.errors(rj) == []
    c = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert c["image"] == "reg/ganops:9" and c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    code, _, err = _cli(["operator", "render", str(JOBS / "svhn_dcgan.yaml"), "--set", "spec.train.lrr=1"], capsys)
    assert code == 2 and "spec.train.lrr" in err and "Traceback" not in err


def test_operator_run_needs_a_scope(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(["operator", "run"], capsys)
    assert code == 2 and "--namespace" in err and "--all-namespaces" in err


def test_api_hiccups_are_retried_and_the_rest_is_permanent() -> None:
    """A 5xx or 429 cannot be caused on the test API server; the mapping is checked alone."""
    import kopf
    from kubernetes.client.exceptions import ApiException

    from ganops.k8s.operator import _retryable

    for status in (500, 503, 429, 409):
        assert isinstance(_retryable(ApiException(status=status)), kopf.TemporaryError)
    assert isinstance(_retryable(ConnectionResetError()), kopf.TemporaryError)
    assert isinstance(_retryable(ApiException(status=403)), kopf.TemporaryError)  # RBAC may be fixed
    assert isinstance(_retryable(ApiException(status=400)), kopf.PermanentError)


def test_gpu_resource_comes_from_the_spec_else_the_operator() -> None:
    d = Defaults(gpu_resource="amd.com/gpu")
    rj = render(_object(JOBS / "mnist_dcgan.yaml", "spec.scaling.use_gpu=true"), d)
    limits = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    assert limits["amd.com/gpu"] == "1"
    rj = render(
        _object(
            JOBS / "mnist_dcgan.yaml", "spec.scaling.use_gpu=true", "spec.cluster.gpu_resource=nvidia.com/mig-1g.10gb"
        ),
        d,
    )
    limits = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    assert limits["nvidia.com/mig-1g.10gb"] == "1" and "amd.com/gpu" not in limits
    # Asking for the usual name explicitly wins over an operator default (it used to be ignored).
    rj = render(
        _object(JOBS / "mnist_dcgan.yaml", "spec.scaling.use_gpu=true", "spec.cluster.gpu_resource=nvidia.com/gpu"), d
    )
    limits = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    assert limits["nvidia.com/gpu"] == "1" and "amd.com/gpu" not in limits


def _undocumented(schema: dict, path: str) -> list[str]:
    """Fields under ``schema`` (an openAPIV3Schema) without a description, as dotted paths."""
    out = []
    for name, sub in (schema.get("properties") or {}).items():
        where = f"{path}.{name}"
        if not sub.get("description"):
            out.append(where)
        out += _undocumented(sub, where)
        if isinstance(sub.get("items"), dict):
            out += _undocumented(sub["items"], f"{where}[]")
    return out


@pytest.mark.parametrize("kind", ["GANJob", "GANGeneration"])
def test_kubectl_explain_documents_every_spec_field(kind: str) -> None:
    # `kubectl explain ganjob.spec.train` shows these descriptions: a field without one is
    # a field a cluster user cannot look up.
    (doc,) = [yaml.safe_load(t) for t in crd.crd_files().values() if f"kind: {kind}\n" in t]
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _undocumented(schema, "spec") == []


def _bounds(schema: object) -> list[float]:
    if isinstance(schema, dict):
        own = [v for k, v in schema.items() if k in ("maximum", "minimum")]
        return own + [b for v in schema.values() for b in _bounds(v)]
    if isinstance(schema, list):
        return [b for v in schema for b in _bounds(v)]
    return []


def test_crd_bounds_survive_the_api_servers_float_parsing() -> None:
    # The API server reads a schema's maximum as a float64: 2**63 - 1 came back as -2**63
    # and the server refused every GANJob (seed 0 "should be less than or equal to -9.2e18").
    for text in crd.crd_files().values():
        for bound in _bounds(yaml.safe_load(text)):
            assert abs(bound) <= 2**53 - 1 and float(bound) == bound, bound


def test_a_failed_attempt_is_retried_by_default_and_every_retry_resumes() -> None:
    # backoffLimit: the spec's, else the operator's default (the chart's jobs.backoffLimit).
    assert render(_object(JOBS / "mnist_dcgan.yaml"), DEFAULTS)["spec"]["backoffLimit"] == 2
    five = Defaults.from_env({"GANOPS_BACKOFF_LIMIT": "5"})
    assert render(_object(JOBS / "mnist_dcgan.yaml"), five)["spec"]["backoffLimit"] == 5
    none = _object(JOBS / "mnist_dcgan.yaml", "spec.cluster.backoff_limit=0")
    assert render(none, five)["spec"]["backoffLimit"] == 0
    with pytest.raises(UserError, match="GANOPS_BACKOFF_LIMIT: expected a whole number"):
        Defaults.from_env({"GANOPS_BACKOFF_LIMIT": "two"})
    # Each attempt runs the same entrypoint: a plain one resumes from the checkpoints by
    # itself; a restarted GANJob's starts over once per GANJob (its uid), not per attempt.
    assert "--restart" not in render(_object(JOBS / "mnist_dcgan.yaml"), DEFAULTS)["spec"]["entrypoint"]
    obj = _object(JOBS / "mnist_dcgan.yaml")
    obj["metadata"]["annotations"] = {RESTART_ANNOTATION: "true"}
    argv = shlex.split(render(obj, DEFAULTS)["spec"]["entrypoint"])
    assert argv[argv.index("--restart-token") + 1] == "1234-uid" and "--restart" not in argv


def test_generate_on_k8s_leaves_mlflow_to_the_cluster_unless_the_flag_names_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """This machine's $MLFLOW_TRACKING_URI (a port-forward to 127.0.0.1) means nothing in a pod:
    the driver there uses the pods' MLFLOW_TRACKING_URI (found on the real cluster: it failed)."""
    from tests.helpers import cli_in_process

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:15000")
    base = ["generate", "--run-id", "abc", "-o", "s3://bkt/gen", "--target", "k8s", "-n", "ns", "--dry-run"]
    code, out, err = cli_in_process(base, capsys)
    assert code == 0, err
    assert ((yaml.safe_load(out)["spec"].get("tracking") or {}).get("uri")) is None
    code, out, err = cli_in_process([*base, "--tracking-uri", "http://mlflow.team:5000"], capsys)
    assert code == 0, err
    assert yaml.safe_load(out)["spec"]["tracking"]["uri"] == "http://mlflow.team:5000"
