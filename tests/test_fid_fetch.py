"""FID out of the box: the Inception weights fetched once per machine from a real HTTP server
(``http.server`` on 127.0.0.1 standing in for pytorch-fid's release; a test sha256), under
a file lock, written atomically, checked; offline, ``ganops submit`` fails before any worker."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ganops.errors import UserError
from ganops.evaluate import fetch
from tests.helpers import JOBS, REPO

GANOPS = str(Path(sys.executable).with_name("ganops"))
# cifar_dcgan (eval on by default) on the fake dataset: its pre-flight needs no files.
FAKE = ["--set", "spec.data.dataset=fake", "--set", "spec.data.root=", "--set", "spec.data.download=false"]


class WeightsServer:
    """Serves named files slowly enough (chunks with pauses) that concurrent fetches overlap."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.gets.append(self.path)
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                step = max(1, len(data) // 10)
                for i in range(0, len(data), step):
                    self.wfile.write(data[i : i + step])
                    time.sleep(0.05)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def add(self, name: str, data: bytes) -> tuple[str, str]:
        self.files[name] = data
        return self.url(name), hashlib.sha256(data).hexdigest()

    def count(self, name: str) -> int:
        return self.gets.count(f"/{name}")


@pytest.fixture(scope="module")
def server() -> Iterator[WeightsServer]:
    s = WeightsServer()
    yield s
    s.httpd.shutdown()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{fetch.WEIGHTS_FILE}"  # nobody listens there any more


def test_the_weights_are_downloaded_once_and_then_read_from_the_cache(
    server: WeightsServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, sha = server.add("once.pth", os.urandom(300_000))
    monkeypatch.setenv(fetch.URL_ENV, url)
    path = fetch.ensure(sha)
    assert path == cache / "fid" / f"inception-{sha[:16]}.pth" and fetch.file_sha256(path) == sha
    assert fetch.ensure(sha.upper()) == path  # hashes compare case-insensitively
    assert server.count("once.pth") == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.lock"]  # no .part left


def test_concurrent_processes_download_the_weights_exactly_once(server: WeightsServer, cache: Path) -> None:
    url, sha = server.add("shared.pth", os.urandom(2_000_000))
    code = f"from ganops.evaluate import fetch; print(fetch.ensure({sha!r}))"
    env = {**os.environ, fetch.URL_ENV: url, "GANOPS_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert server.count("shared.pth") == 1
    assert len(set(outs)) == 1 and fetch.file_sha256(Path(outs[0])) == sha
    assert not list(Path(outs[0]).parent.glob("*.part-*"))


def test_a_download_with_the_wrong_sha256_is_deleted_and_names_the_url_and_both_hashes(
    server: WeightsServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, sha = server.add("tampered.pth", os.urandom(100_000))
    monkeypatch.setenv(fetch.URL_ENV, url)
    sent = rf"eval\.inception_weights: {url} sent a file with sha256 {sha}, expected (ab){{32}}; it was not kept"
    with pytest.raises(UserError, match=sent):
        fetch.ensure("ab" * 32)
    assert [p.name for p in (cache / "fid").iterdir()] == [f"inception-{'ab' * 8}.pth.lock"]


def test_a_corrupt_cached_copy_is_replaced_and_a_killed_download_cleaned_up(
    server: WeightsServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, sha = server.add("repair.pth", os.urandom(100_000))
    monkeypatch.setenv(fetch.URL_ENV, url)
    dest = fetch.cached_path(sha)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"truncated")
    dest.with_name(f"{dest.name}.part-999999").write_bytes(b"left by a killed process")
    assert fetch.ensure(sha) == dest and fetch.file_sha256(dest) == sha
    assert not list(dest.parent.glob("*.part-*"))


def test_offline_the_error_says_which_file_to_put_where_with_the_url(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _closed_port_url()
    monkeypatch.setenv(fetch.URL_ENV, url)
    dest = cache / "fid" / fetch.WEIGHTS_FILE
    with pytest.raises(UserError) as e:
        fetch.ensure()
    msg = str(e.value)
    assert msg.startswith("eval.inception_weights: unset")
    assert f"download {fetch.WEIGHTS_FILE} from {url}" in msg and f"put it at {dest} " in msg
    assert fetch.PINNED_SHA256 in msg and "Connection refused" in msg
    assert not dest.exists()
    with pytest.raises(UserError, match="could not be fetched"):
        fetch.check_reachable()
    dest.write_bytes(b"placed by hand")
    fetch.check_reachable()  # a cached copy is enough for the driver's check (workers check its hash)
    with pytest.raises(
        UserError, match=r"put it at \S+ \(the copy there has sha256 [0-9a-f]{64}, not the expected one\)"
    ):
        fetch.ensure()


def test_a_missing_file_on_the_server_reports_the_http_status(
    server: WeightsServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fetch.URL_ENV, server.url("nothing-here.pth"))
    with pytest.raises(UserError, match=r"could not be fetched \(HTTP 404 Not Found\)"):
        fetch.ensure("cd" * 32)


@pytest.mark.slow
def test_unset_weights_load_the_fetched_network(
    server: WeightsServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_evaluate import _random_inception_bytes

    url, sha = server.add("pt_inception-random.pth", _random_inception_bytes(seed=3))
    monkeypatch.setenv(fetch.URL_ENV, url)
    from ganops.evaluate.weights import load_inception

    net, digest = load_inception(None, sha)  # what every Ray worker calls with spec.eval.inception_weights unset
    assert digest == sha and not net.training
    assert fetch.cached_path(sha).exists() and server.count("pt_inception-random.pth") == 1


@pytest.mark.slow
def test_a_job_with_unset_weights_is_scored_with_the_one_copy_the_driver_fetched(
    server: WeightsServer, monkeypatch: pytest.MonkeyPatch, ray_cluster: None, mnist_root: Path, tmp_path: Path
) -> None:
    # The session's GANOPS_CACHE (conftest): the embedded Ray's workers inherited it when it started.
    import json

    from ganops import jobdir
    from tests.conftest import mnist_job, run
    from tests.test_evaluate import _random_inception_bytes

    url, sha = server.add("pt_inception-job.pth", _random_inception_bytes(seed=5))
    monkeypatch.setenv(fetch.URL_ENV, url)
    job = mnist_job(tmp_path, mnist_root, "spec.eval.every_epochs=1", "spec.eval.num_samples=16",
                    "spec.eval.batch_size=16", "spec.eval.metrics=[fid,kid]", f"spec.eval.inception_sha256={sha}",
                    "spec.checkpoint.keep_best=fid", "spec.scaling.num_workers=2", "spec.train.epochs=1")  # fmt: skip
    assert run(job).epochs_done == 1
    # 512 images, global batch 64: scored once, at step 8, with the fetched network.
    record = json.loads((tmp_path / job.name / jobdir.EVAL / jobdir.eval_record_name(8)).read_text())
    assert record["inception_sha256"] == sha and record["fid"] > 0
    assert server.count("pt_inception-job.pth") == 1  # the driver's download; both workers read the cache
    assert fetch.file_sha256(fetch.cached_path(sha)) == sha


def test_offline_submit_fails_before_any_worker_without_a_traceback(tmp_path: Path) -> None:
    url = _closed_port_url()
    env = {**os.environ, fetch.URL_ENV: url, "GANOPS_CACHE": str(tmp_path / "cache")}
    t0 = time.perf_counter()
    r = subprocess.run(
        [GANOPS, "submit", str(JOBS / "cifar_dcgan.yaml"), "-q", *FAKE, "--set", f"spec.storage={tmp_path / 'runs'}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: spec.eval.inception_weights: unset"), r.stderr
    assert url in err and f"put it at {tmp_path / 'cache' / 'fid' / fetch.WEIGHTS_FILE}" in err
    assert not (tmp_path / "runs").exists()  # no worker, no run directory
    assert seconds < 30, f"took {seconds:.1f}s: the check must come before Ray starts"


def test_submit_downloads_the_weights_on_the_driver_before_the_workers(
    server: WeightsServer, cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ganops import client

    url, sha = server.add("driver.pth", os.urandom(50_000))
    monkeypatch.setenv(fetch.URL_ENV, url)
    fake = [a for a in FAKE if a != "--set"]
    job = client.load_job(JOBS / "cifar_dcgan.yaml", [*fake, f"spec.eval.inception_sha256={sha}"])
    said: list[str] = []
    client.preflight_eval_weights(job, address=None, echo=said.append)
    assert fetch.file_sha256(fetch.cached_path(sha)) == sha and said and url in said[0]
    # Joining a cluster, whose workers may be elsewhere: the URL is tried, nothing downloaded here.
    fetch.cached_path(sha).unlink()
    client.preflight_eval_weights(job, address="ray://head:10001", echo=said.append)
    assert not fetch.cached_path(sha).exists()
    # Weights named in the spec are checked where they are, not fetched; no evaluation: nothing.
    before = server.count("driver.pth")
    named = tmp_path / "w.pth"
    named.write_bytes(b"named weights")
    named_sha = hashlib.sha256(b"named weights").hexdigest()
    off = ["spec.eval.every_epochs=null", "spec.checkpoint.keep_best=null"]
    for sets in ([f"spec.eval.inception_weights={named}", f"spec.eval.inception_sha256={named_sha}"], off):
        other = client.load_job(JOBS / "cifar_dcgan.yaml", [*fake, *sets])
        client.preflight_eval_weights(other, address=None, echo=said.append)
    assert server.count("driver.pth") == before
    wrong = client.load_job(JOBS / "cifar_dcgan.yaml", [*fake, f"spec.eval.inception_weights={named}"])
    with pytest.raises(UserError, match=r"spec\.eval\.inception_weights: .*w\.pth has sha256 .*expected 6726825d"):
        client.preflight_eval_weights(wrong, address=None, echo=said.append)
    # Scored by steps only (eval.every_steps): checked the same (it was skipped as "no evaluation").
    by_steps = client.load_job(JOBS / "cifar_dcgan.yaml", [*fake, f"spec.eval.inception_weights={named}",
                                                           "spec.eval.every_epochs=null", "spec.eval.every_steps=100"])  # fmt: skip
    with pytest.raises(UserError, match=r"spec\.eval\.inception_weights: .*w\.pth has sha256"):
        client.preflight_eval_weights(by_steps, address=None, echo=said.append)
