"""The run's page in the MLflow UI tells the story of a training run.

The description (MLflow's markdown note) is checked as text first; then a run trained here
is opened in headless Chromium on a real ``mlflow server`` and the page is checked as a user
sees it: the description, a loss chart and the sample grid rendered. Screenshots of the page
are kept (under the test's tmp dir, and in ``$GANOPS_TEST_ARTIFACTS`` when set: ``make test``
sets it to ``test-artifacts/``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ganops import run_note
from ganops.run_note import Best, NoteFacts
from ganops.tracking import scoped_tracking_uri
from tests.conftest import mnist_job
from tests.runs import TRACKED_MODEL

RUN_ID = "0123456789abcdef0123456789abcdef"
REGISTERED = "mnist-dcgan-ui"


def _facts(job: Any, **kw: Any) -> NoteFacts:
    base: dict[str, Any] = {
        "job": job, "run_id": RUN_ID, "tracking_uri": "https://alice:s3cret@mlflow.example.com/", "experiment": "ui",
        "status": "FINISHED", "epochs_done": 3, "step": 24, "data": "mnist, test split: 512 images of 1×28×28",
        "networks": "dcgan, z 100; G 256→128→64 (2.28 M params), D 64→128, norm none (212.9 k params)",
        "latest_checkpoint": "s3://team/runs/mnist-dcgan/checkpoints/epoch_0003",
        "model_uri": "models:/m-42", "grid_artifact": run_note.GRID_ARTIFACT, "grid_epoch": 3,
        "gif_artifact": run_note.GIF_ARTIFACT,
    }  # fmt: skip
    return NoteFacts(**{**base, **kw})


def test_the_description_tells_job_data_networks_epochs_best_fid_and_the_generate_command(mnist_root: Path) -> None:
    job = mnist_job("/tmp/runs", mnist_root, "spec.train.epochs=3", "spec.eval.every_epochs=1",
                    f"spec.tracking.register_as={REGISTERED}")  # fmt: skip
    best = Best(fid=41.234, epoch=2, step=16, checkpoint="s3://team/runs/mnist-dcgan/best/epoch_0002", kid=0.0123)
    note = run_note.render(_facts(job, best=best, registered_version="5", champion_version="4"))
    assert note.startswith("### mnist-dcgan: finished, 3/3 epochs, best FID 41.23\n")
    for text in (
        "**Job** `mnist-dcgan` in experiment `ui`",
        "**Dataset** mnist, test split: 512 images of 1×28×28",
        "**Networks** dcgan, z 100; G 256→128→64 (2.28 M params), D 64→128",
        "loss bce, batch 64 on 2 workers",
        "**Epochs done** 3 of 3 epochs (24 steps)",
        "**Best FID** 41.23, KID 0.0123 at epoch 2 (step 16)",
        "**Best checkpoint** `s3://team/runs/mnist-dcgan/best/epoch_0002`",
        f"**Generator** `models:/m-42`, registered as `{REGISTERED}` version 5 "
        "(best FID: version 4, alias `@champion`)",
        f"![samples after epoch 3](get-artifact?path=samples%2Ffinal_grid.png&run_uuid={RUN_ID})",
        f"[training GIF](get-artifact?path=samples%2Ftraining.gif&run_uuid={RUN_ID})",
        f"```\nganops generate --run-id {RUN_ID} --tracking-uri https://mlflow.example.com/ "
        "--out ./generated/mnist-dcgan\n```",
        "MLFLOW_TRACKING_USERNAME",
    ):
        assert text in note, text
    # A note is readable by everyone who can see the run: no credentials of the tracking URI.
    assert "s3cret" not in note and "alice" not in note


def test_a_run_in_the_embedded_store_is_generated_from_with_its_storage_root(mnist_root: Path) -> None:
    job = mnist_job("/tmp/runs", mnist_root)
    facts = _facts(job, tracking_uri="sqlite:////tmp/runs/mlflow.db", storage_flag="/tmp/runs")
    assert run_note.generate_command(facts) == [
        "ganops", "generate", "--run-id", RUN_ID, "--storage", "/tmp/runs", "--out", "./generated/mnist-dcgan",
    ]  # fmt: skip
    note = run_note.render(facts)
    assert "**Best FID** not measured (spec.eval.every_epochs and every_steps are unset)" in note
    assert "MLFLOW_TRACKING_USERNAME" not in note


def test_a_starting_run_says_what_trains_and_when_the_rest_appears(mnist_root: Path) -> None:
    job = mnist_job("/tmp/runs", mnist_root, "spec.train.epochs=5")
    facts = _facts(job, status="RUNNING", epochs_done=2, step=16, model_uri=None, grid_artifact=None,
                   gif_artifact=None, networks=run_note.describe_networks(job))  # fmt: skip
    note = run_note.render(facts)
    assert note.startswith("### mnist-dcgan: training, 2/5 epochs\n")
    assert "**Networks** dcgan, z 100, G 128→64→32, D 32→64" in note
    assert "appear here when training ends" in note and "--run-id" not in note and "![" not in note


def test_the_description_is_written_when_a_run_opens_and_again_when_it_ends(mnist_root: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from ganops import jobdir, storage, tracking
    from ganops.images import grid, png_bytes

    job = mnist_job(tmp_path / "runs", mnist_root, "spec.train.epochs=4")
    jd = jobdir.JobDir(job.spec.storage, job.name)
    ref = tracking.open_run(job, jd, warn=lambda _m: None)  # the embedded store of spec.storage
    run_note.update(ref, job, jd, None, "RUNNING", warn=pytest.fail)
    note = MlflowClient(ref.tracking_uri).get_run(ref.run_id).data.tags[run_note.NOTE_TAG]
    assert note.startswith("### mnist-dcgan: training, 0/4 epochs\n") and "first 512 images" in note

    png = png_bytes(grid(np.zeros((4, 1, 28, 28), dtype=np.uint8)))
    storage.write_bytes(jd.samples.child(jobdir.sample_name(2)), png)
    run_note.update(ref, job, jd, None, "KILLED", warn=pytest.fail)
    run = MlflowClient(ref.tracking_uri).get_run(ref.run_id)
    note = run.data.tags[run_note.NOTE_TAG]
    assert note.startswith("### mnist-dcgan: stopped early, 0/4 epochs\n")
    assert f"![samples after epoch 2](get-artifact?path=samples%2Ffinal_grid.png&run_uuid={ref.run_id})" in note
    logged = MlflowClient(ref.tracking_uri).download_artifacts(ref.run_id, run_note.GRID_ARTIFACT)
    assert Path(logged).read_bytes() == png
    assert "No generator was logged" in note


# -- a real run, on a real server, in a real browser ---------------------------------------


def _browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver): Debian's packages, installed by `make browser`."""
    chromium = os.environ.get("GANOPS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("GANOPS_CHROMEDRIVER") or shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]', or make setup)")
    if not chromium or not driver:
        pytest.skip("headless Chromium is not installed: run `make browser` (apt-get install chromium chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser_paths()
    options = Options()
    options.binary_location = chromium
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,2000"):  # fmt: skip
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="module")
def ui_run(tracked_run: dict[str, Any]) -> dict[str, Any]:
    """The session's tracked run (tests/runs.py: 2 workers, on the session's MLflow server, its
    generator registered), as the UI shows it after its resume to 3 epochs."""
    from mlflow import MlflowClient

    result, uri = tracked_run["second"], tracked_run["uri"]
    mlflow = MlflowClient(uri)
    run = mlflow.get_run(result.mlflow_run_id)
    page = f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return {"result": result, "job": tracked_run["resumed_job"], "run": run, "uri": uri, "client": mlflow,
            "url": page, "note": run.data.tags.get(run_note.NOTE_TAG, "")}  # fmt: skip


def _keep(src: Path) -> None:
    """Copy a screenshot to $GANOPS_TEST_ARTIFACTS (CI uploads that directory)."""
    print(f"screenshot: {src}")
    dest = os.environ.get("GANOPS_TEST_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, Path(dest) / src.name)
        print(f"screenshot: {Path(dest) / src.name}")


def _generate_command(note: str) -> str:
    m = re.search(r"```\n(ganops generate [^\n]+)\n```", note)
    assert m, f"no `ganops generate` command in the run's description:\n{note}"
    return m.group(1)


@pytest.mark.slow
def test_the_run_logs_the_final_grid_the_gif_the_curves_and_a_model_with_a_signature(ui_run: dict) -> None:
    import mlflow

    c, run = ui_run["client"], ui_run["run"]
    assert {a.path for a in c.list_artifacts(run.info.run_id, "samples")} == {
        run_note.GRID_ARTIFACT, run_note.GIF_ARTIFACT}  # fmt: skip
    for key in ("d_loss", "g_loss", "d_x", "d_g_z", "images_per_s"):
        assert c.get_metric_history(run.info.run_id, key), key
    with scoped_tracking_uri(ui_run["uri"]):  # models:/ URIs resolve on the run's server
        info = mlflow.models.get_model_info(run.data.tags["ganops.model_uri"])
    assert info.signature is not None  # z in, images out: what serving and `ganops generate` rely on
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 100)
    assert tuple(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 28, 28)
    versions = c.search_model_versions(f"name='{TRACKED_MODEL}'")
    assert {v.run_id for v in versions} == {run.info.run_id}  # one version per finished submit
    latest = max(int(v.version) for v in versions)
    assert f"registered as `{TRACKED_MODEL}` version {latest}" in ui_run["note"]
    assert run.data.tags[run_note.NETWORKS_TAG] in ui_run["note"]


@pytest.mark.slow
def test_the_generate_command_in_the_description_runs_as_written(ui_run: dict, tmp_path: Path) -> None:
    command = _generate_command(ui_run["note"])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the command must carry where the run is
    done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "generated" / "mnist-dcgan"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest and len(list(out.rglob("*.png"))) >= 64


@pytest.mark.slow
def test_the_run_page_shows_the_description_a_loss_chart_and_the_sample_grid(
    browser: Any,
    ui_run: dict,
    tmp_path: Path,  # browser first: without one, skip before training
) -> None:
    from PIL import Image
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run = ui_run["run"]
    browser.get(ui_run["url"])
    note_css = '[data-testid="note-editor-preview-content"]'
    try:
        WebDriverWait(browser, 90).until(
            lambda d: any("mnist-dcgan" in e.text for e in d.find_elements(By.CSS_SELECTOR, note_css))
        )
    except TimeoutException:
        browser.save_screenshot(str(tmp_path / "run-page-overview.png"))
        _keep(tmp_path / "run-page-overview.png")
        pytest.fail(f"the run page {ui_run['url']} shows no description naming the job 'mnist-dcgan'")
    # The UI folds a long description: unfold it, as a reader would.
    for toggle in browser.find_elements(By.CSS_SELECTOR, '[data-testid="show-comment-toggle"]'):
        if "more" in toggle.text.lower():
            toggle.click()
    note = browser.find_element(By.CSS_SELECTOR, note_css)
    codes = note.find_elements(By.CSS_SELECTOR, "pre code")
    assert codes, f"the description on the page shows no `ganops generate` command:\n{note.text}"
    assert codes[0].is_displayed() and codes[0].text.strip() == _generate_command(ui_run["note"])
    epochs = ui_run["job"].spec.train.epochs
    assert f"Epochs done {epochs} of {epochs} epochs" in note.text
    grid_png = Path(ui_run["client"].download_artifacts(run.info.run_id, run_note.GRID_ARTIFACT))
    width = Image.open(grid_png).width

    def grid_loaded(d: Any) -> Any:
        return d.execute_script(
            "const i = [...arguments[0].querySelectorAll('img')].find(i => i.src.includes('final_grid.png'));"
            "return i && i.complete ? i.naturalWidth : null;", note)  # fmt: skip

    loaded = WebDriverWait(browser, 60).until(grid_loaded, "the sample grid in the description never loaded")
    assert loaded == width  # the very PNG that was logged, not a broken-image placeholder
    browser.execute_script("arguments[0].scrollIntoView()", note)
    browser.save_screenshot(str(tmp_path / "run-page-overview.png"))
    _keep(tmp_path / "run-page-overview.png")

    # Model metrics: one chart card per metric, plotly drawing a line for the loss.
    browser.get(ui_run["url"] + "/model-metrics")
    chart = (
        "const card = [...document.querySelectorAll('[data-testid=\"experiment-view-compare-runs-card\"]')]"
        "  .find(c => c.querySelector('h4[title=\"g_loss\"]'));"
        "const line = card && card.querySelector('.js-plotly-plot svg path.js-line');"
        "return line ? line.getAttribute('d') : null;"
    )
    points = ui_run["client"].get_metric_history(run.info.run_id, "g_loss")
    logged = ui_run["result"].step // ui_run["job"].spec.train.log_every_steps  # a point every log_every_steps
    assert len(points) == logged
    seen: list[str] = []

    def whole_line(d: Any) -> bool:
        # The page draws the line as the history arrives (a long run's in pages): wait for all of it.
        path = d.execute_script(chart)
        seen.append(path or "")
        return bool(path) and path.count("L") == len(points) - 1

    try:
        WebDriverWait(browser, 90).until(whole_line)
    except TimeoutException:
        pytest.fail(f"the g_loss chart never drew a line through its {len(points)} points; last drawn: {seen[-1]}")
    finally:
        browser.save_screenshot(str(tmp_path / "run-page-model-metrics.png"))
        _keep(tmp_path / "run-page-model-metrics.png")
