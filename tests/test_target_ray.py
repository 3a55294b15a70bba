"""The ``ray`` target against a real cluster: ``ray start --head`` with token authentication.

The head runs in its own temp dir with its own ports and is stopped through its own
``ray start --block`` process (then its process group): never ``ray stop``, which would
take down every Ray on the machine. It never writes /tmp/ray/ray_current_cluster, so the
session's embedded Ray (``ray_cluster``) can neither attach to it nor be attached to.

Jobs go through the real CLI; their storage and MLflow store are paths both the driver
(on the head, this machine) and the test see.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ganops import jobdir, storage
from ganops.cli import main
from tests.helpers import JOBS, free_port

pytestmark = pytest.mark.heavy  # a Ray cluster of its own (make test-heavy)

# The environment running the tests (whatever its directory): its `ray` and `ganops`.
BIN = Path(sys.executable).parent
SPEC = str(JOBS / "mnist_dcgan.yaml")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
LEAK = "ganops-test-secret-that-must-not-travel"


@dataclass
class Head:
    url: str
    gcs: str
    token: str
    temp_dir: Path
    pid: int


def _head_env(token: str, dashboard: str) -> dict[str, str]:
    drop = ("RAY_", "AWS_", "MLFLOW_TRACKING_URI", "GANOPS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the drivers run `ganops`
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # stop at once on SIGTERM (default: drain 30 s)
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
        # Ray Train's PlacementGroupCleaner queries the State API without an address; with
        # other Rays on this machine (the embedded ones of concurrent test runs) it cannot
        # tell which is its own and its monitor thread dies with a traceback in the logs.
        RAY_API_SERVER_ADDRESS=dashboard,
    )
    # Deliberately no RAY_JOB_STOP_WAIT_TIME_S: the ray target sets it per job.
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    temp = tmp_path_factory.mktemp("rayhead")
    short = None
    # Ray's unix sockets live in <temp>/session_<time>_<pid>/sockets/ (at most 107 bytes).
    if len(str(temp)) > 48:
        short = temp = Path(tempfile.mkdtemp(prefix="ganops-ray-"))
    ports = {
        k: free_port()
        for k in ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
                  "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                  "metrics-export-port")
    }  # fmt: skip
    token = secrets.token_hex(16)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--temp-dir", str(temp), "--num-cpus", "2",
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--disable-usage-stats",
           *[a for k, v in ports.items() for a in (f"--{k}", str(v))]]  # fmt: skip
    log_path = temp / "head.log"
    log = open(log_path, "w")
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    proc = subprocess.Popen(
        cmd, env=_head_env(token, url), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    head = Head(url, f"127.0.0.1:{ports['port']}", token, temp, proc.pid)
    try:
        deadline = time.time() + 120
        req = urllib.request.Request(f"{head.url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        while True:
            try:
                urllib.request.urlopen(req, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"ray start --head did not come up:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield head
    finally:
        _stop_head(proc, temp)
        log.close()
        if short is not None:
            import shutil

            shutil.rmtree(short, ignore_errors=True)


def _stop_head(proc: subprocess.Popen, temp: Path) -> None:
    """Only this head: its ``ray start --block`` process kills what it started; then its group."""
    import psutil

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the session start_new_session gave it: ours alone
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(temp) in " ".join(p.info["cmdline"] or []):
                p.kill()


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _authed(head: Head, **extra: str | None) -> contextlib.AbstractContextManager[None]:
    return _env(RAY_AUTH_TOKEN=head.token, RAY_AUTH_TOKEN_PATH=None, RAY_AUTH_MODE=None, RAY_ADDRESS=None, **extra)


def ganops(head: Head, *args: str, **env: str | None) -> tuple[int, str, str]:
    """``ganops ARGS --address URL`` in this process, with the cluster's token in RAY_AUTH_TOKEN."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _authed(head, **env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*args, "--address", head.url])
        except SystemExit as e:
            code = int(e.code or 0)
    o, e = out.getvalue(), err.getvalue()
    assert head.token not in o + e, "the token was printed"
    return code, o, e


def ganops_proc(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real ``ganops`` command, with no Ray token anywhere unless given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "GANOPS_"))}
    return subprocess.run(
        [str(BIN / "ganops"), *args], capture_output=True, text=True, env={**base, "HOME": str(home), **env}, timeout=60
    )


def target(head: Head):
    from ganops.targets.ray_jobs import RayJobsTarget

    with _authed(head):
        return RayJobsTarget(head.url)


def status(head: Head, name: str) -> dict:
    code, out, err = ganops(head, "status", name, "-o", "json")
    assert code == 0, err
    return json.loads(out)


def wait_for(head: Head, name: str, phases: tuple[str, ...], timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while True:
        st = status(head, name)
        if st["phase"] in phases:
            return st
        assert time.time() < deadline, f"{name} still {st['phase']} after {timeout:g} s: {st}"
        time.sleep(2)


def driver_log(head: Head, name: str) -> str:
    code, out, err = ganops(head, "logs", name)
    assert code == 0, err
    return out


@dataclass
class Jobs:
    storage: Path
    tracking: str
    long_tracking: str
    short: str
    long: str
    submit_out: str
    submit_err: str


@pytest.fixture(scope="module")
def jobs(ray_head: Head, mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    """Two training jobs submitted at once: one that finishes, one to cancel."""
    store = tmp_path_factory.mktemp("ray-runs")
    tracking, long_tracking = f"sqlite:///{store}/mlflow.db", f"sqlite:///{store}/mlflow-long.db"
    common = [f"spec.data.root={mnist_root}", "spec.data.split=test", "spec.data.download=false",
              "spec.scaling.num_workers=1", "spec.train.batch_size=64", "spec.samples.num=16",
              f"spec.storage={store}"]  # fmt: skip
    # One SQLite store each: two drivers creating the same one at once race on its tables.
    short = ["metadata.name=ray-short", "spec.data.limit=256", "spec.train.epochs=1", "spec.checkpoint.every_epochs=1",
             f"spec.tracking.uri={tracking}"]  # fmt: skip
    # All 10,000 test images: an epoch lasts long enough to be cancelled in, and no
    # checkpoint is due before epoch 5, so any checkpoint comes from the cancel.
    long = ["metadata.name=ray-long", "spec.train.epochs=5", "spec.checkpoint.every_epochs=5",
            f"spec.tracking.uri={long_tracking}"]  # fmt: skip
    # A secret in this shell must not travel with the job (only worker_env()'s settings do).
    code, out, err = ganops(ray_head, "submit", SPEC, "--target", "ray", *_sets(common + short),
                            AWS_SECRET_ACCESS_KEY=LEAK)  # fmt: skip
    assert code == 0, err
    code2, _, err2 = ganops(ray_head, "submit", SPEC, "--target", "ray", "-q", *_sets(common + long))
    assert code2 == 0, err2
    return Jobs(store, tracking, long_tracking, "ray-short", "ray-long", out, err)


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


# -- errors: the real command, no traceback, exit 2, the flag or variable named ---------------


def test_bad_addresses_and_tokens_are_one_line_errors_naming_the_flag(ray_head: Head, tmp_path: Path) -> None:
    home = tmp_path  # no ~/.ray/auth_token here
    cases = {
        "no token": (["list", "--address", ray_head.url], {}, ["requires a token", "RAY_AUTH_TOKEN"]),
        "wrong token": (["list", "--address", ray_head.url], {"RAY_AUTH_TOKEN": "not-the-token"},
                        ["rejected the token from RAY_AUTH_TOKEN"]),
        "GCS address": (["list", "--address", ray_head.gcs], {"RAY_AUTH_TOKEN": ray_head.token},
                        ["--address / RAY_ADDRESS", "GCS address", "http://HEAD:8265"]),
        "unreachable": (["status", "x", "--address", f"http://127.0.0.1:{free_port()}"], {},
                        ["--address / RAY_ADDRESS", "cannot reach"]),
        "no address": (["list", "--target", "ray"], {}, ["--address", "RAY_ADDRESS"]),
        "GCS in RAY_ADDRESS": (["list"], {"RAY_ADDRESS": ray_head.gcs}, ["--address / RAY_ADDRESS"]),
    }  # fmt: skip
    for what, (args, env, expected) in cases.items():
        r = ganops_proc(args, home, **env)
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr, (what, r.stderr)
        for text in expected:
            assert text in r.stderr, (what, text, r.stderr)
        assert ray_head.token not in r.stdout + r.stderr and "not-the-token" not in r.stderr


def test_the_token_is_found_where_ray_documents_it(ray_head: Head, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(ray_head.token + "\n")
    r = ganops_proc(["list", "--address", ray_head.url], tmp_path, RAY_AUTH_TOKEN_PATH=str(path))
    assert r.returncode == 0, r.stderr
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(ray_head.token)
    r = ganops_proc(["list", "--address", ray_head.url], tmp_path)  # ~/.ray/auth_token
    assert r.returncode == 0 and r.stdout.startswith(("NAME", "No jobs")), r.stderr
    r = ganops_proc(["list", "--address", ray_head.url], tmp_path, RAY_AUTH_MODE="disabled")
    assert r.returncode == 2 and "requires a token" in r.stderr and "RAY_AUTH_MODE=disabled" in r.stderr
    r = ganops_proc(["list", "--address", ray_head.url], tmp_path, RAY_AUTH_TOKEN_PATH=str(tmp_path / "missing"))
    assert r.returncode == 2 and "RAY_AUTH_TOKEN_PATH" in r.stderr, r.stderr


def test_the_embedded_ray_never_attaches_to_the_test_head(ray_head: Head) -> None:
    """ray.init() without an address joins a cluster it finds through RAY_ADDRESS or
    /tmp/ray/ray_current_cluster; the head touches neither (and ganops' embedded Ray and the
    session's pass address="local" besides)."""
    import ray
    from ray._private.services import canonicalize_bootstrap_address

    port = ray_head.gcs.rsplit(":", 1)[1]
    with _env(RAY_ADDRESS=None):
        found = canonicalize_bootstrap_address(None)  # what ray.init() would join
    assert found is None or not found.endswith(f":{port}")
    if ray.is_initialized():  # the session's embedded Ray, when an earlier module started it
        assert not ray.get_runtime_context().gcs_address.endswith(f":{port}")


# -- a job's life -------------------------------------------------------------------------------


def test_a_second_submit_of_a_running_job_is_refused(ray_head: Head, jobs: Jobs, mnist_root: Path) -> None:
    # A job of its own, so that whichever tests ran before (the cancel of the long one), one
    # is pending or running now; it is cancelled at the end.
    name = "ray-twice"
    sets = [f"metadata.name={name}", f"spec.data.root={mnist_root}", "spec.data.split=test",
            "spec.data.download=false", "spec.scaling.num_workers=1", "spec.train.epochs=5",
            f"spec.storage={jobs.storage}", f"spec.tracking.uri=sqlite:///{jobs.storage}/mlflow-twice.db"]  # fmt: skip
    code, _, err = ganops(ray_head, "submit", SPEC, "--target", "ray", "-q", *_sets(sets))
    assert code == 0, err
    try:
        code, _, err = ganops(ray_head, "submit", SPEC, "--target", "ray", *_sets(sets))
        assert code == 2, err
        assert f"{name}: already " in err and f"ganops cancel {name}" in err
        assert len([r for r in target(ray_head).list() if r.name == name]) == 1
    finally:
        ganops(ray_head, "cancel", name)


def test_list_shows_the_jobs_newest_first(ray_head: Head, jobs: Jobs) -> None:
    assert "ray-short" in jobs.submit_out and "submitted ray-short" in jobs.submit_err  # the submit's own table
    code, out, _ = ganops(ray_head, "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "KIND", "PHASE"]
    code, out, _ = ganops(ray_head, "list", "-o", "json")
    # Other tests add jobs of their own (newer): the module's two keep their order.
    items = [i for i in json.loads(out)["items"] if i["name"] in (jobs.long, jobs.short)]
    assert [i["name"] for i in items] == [jobs.long, jobs.short]
    for i in items:
        assert i["kind"] == "train" and i["target"] == "ray" and i["id"].startswith(f"ganops-{i['name']}-")
        assert i["phase"] in ("Pending", "Running", "Succeeded", "Cancelled") and i["submitted"].endswith("Z")


def test_a_job_runs_to_success_with_its_mlflow_run_and_checkpoint(ray_head: Head, jobs: Jobs) -> None:
    st = wait_for(ray_head, jobs.short, ("Succeeded", "Failed", "Cancelled"))
    log = driver_log(ray_head, jobs.short)
    assert st["phase"] == "Succeeded", (st, log[-3000:])
    assert RUN_ID.match(st["mlflow_run_id"]) and f"MLflow: logging to run {st['mlflow_run_id']}" in log
    assert "done: 1/1 epochs" in log and not re.search(r"^Traceback", log, re.M)  # none of the driver's own
    latest = jobdir.JobDir(str(jobs.storage), jobs.short).latest_checkpoint()
    assert latest is not None and st["latest_checkpoint"] == latest.uri and latest.name == "epoch_0001"
    assert st["finished"] >= st["submitted"] and st["details"]["ray_status"] == "SUCCEEDED"

    from mlflow.tracking import MlflowClient

    assert MlflowClient(jobs.tracking).get_run(st["mlflow_run_id"]).info.status == "FINISHED"
    # What travelled: the spec in the entrypoint, names in the metadata, non-secret settings.
    info = target(ray_head).client.get_job_info(st["id"])
    assert info.metadata["ganops.job"] == jobs.short and info.metadata["ganops.kind"] == "train"
    env_vars = (info.runtime_env or {}).get("env_vars", {})
    assert set(env_vars) <= {
        "RAY_JOB_STOP_WAIT_TIME_S",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "MLFLOW_S3_ENDPOINT_URL",
        "MLFLOW_DISABLE_TELEMETRY",
        "GANOPS_CACHE",
        "GANOPS_INCEPTION_URL",
        "GANOPS_TIMINGS",
    }
    everything = json.dumps(info.model_dump(), default=str)
    assert LEAK not in everything and ray_head.token not in everything


@dataclass
class Cancel:
    seconds: float
    message: str
    streamed: str
    follow_code: int
    marker_s: float


@pytest.fixture(scope="module")
def cancelled(ray_head: Head, jobs: Jobs) -> Cancel:
    """The long job cancelled once it trains, while ``ganops logs -f`` follows it (a fixture:
    the tests that need the head's CPUs free depend on it, whichever runs first)."""
    t = target(ray_head)
    submission = t.status(jobs.long).id
    deadline = time.time() + 300
    # Training has begun once the driver prints its first progress line.
    while not re.search(r"^epoch 1/5 +step \d+", t.client.get_job_logs(submission), re.M):
        assert time.time() < deadline and t.client.get_job_status(submission) in ("PENDING", "RUNNING")
        time.sleep(1)
    with _authed(ray_head):
        follow = subprocess.Popen([str(BIN / "ganops"), "logs", "-f", jobs.long, "--address", ray_head.url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    t0 = time.time()
    code, _, err = ganops(ray_head, "cancel", jobs.long)
    seconds = time.time() - t0
    assert code == 0, err
    streamed, follow_err = follow.communicate(timeout=60)  # -f ends with the job
    assert follow.returncode == 0, follow_err
    latest = jobdir.JobDir(str(jobs.storage), jobs.long).latest_checkpoint()
    marker_s = (Path(latest.uri) / jobdir.MARKER).stat().st_mtime - t0 if latest is not None else float("nan")
    return Cancel(seconds, err, streamed, follow.returncode, marker_s)


def test_cancel_stops_the_driver_after_it_writes_a_checkpoint(ray_head: Head, jobs: Jobs, cancelled: Cancel) -> None:
    assert f"{jobs.long}: Cancelled" in cancelled.message, cancelled.message
    st = status(ray_head, jobs.long)
    assert st["phase"] == "Cancelled" and st["details"]["ray_status"] == "STOPPED"
    # SIGTERM was handled like the first Ctrl-C: a checkpoint mid-epoch, then a clean exit
    # (the summary is printed only if Ray did not have to SIGKILL the driver).
    streamed = cancelled.streamed
    assert "stopping: the workers write a checkpoint first" in streamed, streamed[-3000:]
    assert "stopped early" in streamed and "resume with the same command" in streamed
    latest = jobdir.JobDir(str(jobs.storage), jobs.long).latest_checkpoint()
    assert latest is not None and latest.batch > 0 and latest.epoch < 5, latest
    assert st["latest_checkpoint"] == latest.uri
    print(f"\ncancel took {cancelled.seconds:.1f} s; checkpoint complete {cancelled.marker_s:.1f} s after it began")

    from mlflow.tracking import MlflowClient

    assert MlflowClient(jobs.long_tracking).get_run(st["mlflow_run_id"]).info.status == "KILLED"
    code, _, err = ganops(ray_head, "cancel", jobs.long)  # nothing left to stop
    assert code == 0 and "Cancelled" in err


def test_generate_runs_on_the_cluster_from_the_trained_run(
    ray_head: Head, jobs: Jobs, cancelled: Cancel, tmp_path: Path
) -> None:
    # ``cancelled``: the long job holds the head's CPUs until it is cancelled.
    from ganops.generate.writer import verify

    # The training job must have finished (and logged G) whichever tests ran before this one.
    trained = wait_for(ray_head, jobs.short, ("Succeeded", "Failed", "Cancelled"))
    assert trained["phase"] == "Succeeded", trained
    run_id = trained["mlflow_run_id"]
    out = tmp_path / "gen"
    code, table, err = ganops(ray_head, "generate", "--target", "ray", "--run-id", run_id, "--tracking-uri",
                              jobs.tracking, "--num", "24", "--batch-size", "16", "--shard-size", "16",
                              "--out", str(out), "--name", "ray-gen")  # fmt: skip
    assert code == 0 and "ray-gen" in table and "submitted ray-gen" in err, err
    st = wait_for(ray_head, "ray-gen", ("Succeeded", "Failed", "Cancelled"))
    assert st["phase"] == "Succeeded", (st, driver_log(ray_head, "ray-gen")[-3000:])
    assert st["kind"] == "generate" and RUN_ID.match(st["mlflow_run_id"]) and st["mlflow_run_id"] != run_id
    manifest = verify(storage.locate(str(out)))
    assert manifest["count"] == 24
    code, out_json, _ = ganops(ray_head, "list", "-o", "json")
    assert [i["name"] for i in json.loads(out_json)["items"]][0] == "ray-gen"


def test_a_failing_driver_reports_its_own_error(ray_head: Head, jobs: Jobs) -> None:
    missing = jobs.storage / "no-such-mnist"
    code, _, err = ganops(ray_head, "submit", SPEC, "--target", "ray", "-q", *_sets([
        "metadata.name=ray-bad", f"spec.data.root={missing}", "spec.data.download=false", f"spec.storage={jobs.storage}",
    ]))  # fmt: skip
    assert code == 0, err
    st = wait_for(ray_head, "ray-bad", ("Succeeded", "Failed", "Cancelled"), timeout=120)
    assert st["phase"] == "Failed" and st["details"]["driver_exit_code"] == 2
    # Not Ray's 20,000 characters of log: the line the driver's ganops printed.
    assert st["message"] == f"driver exit code 2: error: spec.data.root: {missing} does not exist", st["message"]
    code, out, _ = ganops(ray_head, "status", "ray-bad")
    assert code == 0 and "Failed" in out and "spec.data.root" in out  # the wide table's MESSAGE


def test_a_job_streams_a_pack_on_the_cluster(
    ray_head: Head, jobs: Jobs, cancelled: Cancel, mnist_root: Path, tmp_path: Path
) -> None:
    """Issue 16 on a Ray cluster: the driver on the head runs Ray Data's reads of the pack."""
    import numpy as np
    import torch

    pack = str(tmp_path / "pack")
    main(["data", "pack", "--quiet", pack, "--dataset", "mnist", "--root", str(mnist_root), "--split", "test",
          "--limit", "1024", "--shard-mb", "1"])  # fmt: skip
    # The head's 2 CPUs fit one job: the long one is cancelled first (``cancelled``).
    wait_for(ray_head, jobs.long, ("Succeeded", "Failed", "Cancelled"), timeout=300)
    name = "ray-shards"
    code, _, err = ganops(ray_head, "submit", SPEC, "--target", "ray", "-q", *_sets([
        f"metadata.name={name}", "spec.data.dataset=shards", f"spec.data.root={pack}", "spec.data.download=false",
        "spec.scaling.num_workers=1", "spec.train.batch_size=64", "spec.train.epochs=1", "spec.samples.num=16",
        "spec.samples.gif=false", "spec.checkpoint.every_epochs=1", f"spec.storage={jobs.storage}",
        f"spec.tracking.uri=sqlite:///{jobs.storage}/mlflow-shards.db",
    ]))  # fmt: skip
    assert code == 0, err
    st = wait_for(ray_head, name, ("Succeeded", "Failed", "Cancelled"))
    assert st["phase"] == "Succeeded", (st, driver_log(ray_head, name)[-3000:])
    latest = jobdir.JobDir(str(jobs.storage), name).latest_checkpoint()
    assert latest is not None and latest.name == "epoch_0001"
    # Every image of the pack shown once: 16 batches of 64, one bit each.
    state = torch.load(Path(latest.uri) / jobdir.STATE_FILE, weights_only=True)
    assert state["position"]["step"] == 16
    assert int(np.unpackbits(state["stream"]["seen"].numpy()).sum()) == 1024
