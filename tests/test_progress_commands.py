"""The live progress lines of the long commands other than training: reference statistics
and scoring in ``ganops evaluate``, and ``ganops generate`` (here and on Ray workers), in
logs, on a real pseudo-terminal, and silenced by ``-q``."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from ganops.cli import main
from ganops.generate.job import generate
from ganops.generate.source import Source, resolve
from tests.helpers import REPO, generation
from tests.test_evaluate import _random_inception_bytes

pytestmark = pytest.mark.slow

# "generating  128/300 images  812 img/s  ETA 7s", and the last: "...  in 1.2s"
RUNNING = re.compile(r"^(?P<label>[a-z ]+)  (?P<done>[\d,]+)/(?P<total>[\d,]+) images  \d+ img/s  ETA \d+[hms]")
FINAL = re.compile(r"^(?P<label>[a-z ]+)  (?P<done>[\d,]+)/(?P<total>[\d,]+) images  \d+ img/s  in [\dhms.]+$")


@pytest.fixture(scope="module")
def trained(two_worker_run) -> Source:
    """The generator of the session's main run (tests/runs.py)."""
    return resolve(two_worker_run.tracking_uri, run_id=two_worker_run.run_id)


def _lines(err: str, label: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{label}  ")]


def _assert_counts_to(err: str, label: str, total: int) -> None:
    """In logs: the first count (with its rate and ETA) at once, and the last with the full count."""
    lines = _lines(err, label)
    assert len(lines) >= 2, err
    first, last = RUNNING.match(lines[0]), FINAL.match(lines[-1])
    assert first and int(first["done"].replace(",", "")) < total and int(first["total"].replace(",", "")) == total
    assert last and last["done"] == last["total"] == f"{total:,}", lines[-1]


def _generate_args(source: Source, out: Path, *extra: str) -> list[str]:
    return ["generate", "--run-id", source.run_id, "--tracking-uri", source.tracking_uri, "--out", str(out),
            "--num", "300", "--batch-size", "64", "--shard-size", "128", *extra]  # fmt: skip


def test_generate_prints_images_per_second_an_eta_and_the_final_count_in_logs(
    trained: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(_generate_args(trained, tmp_path / "gen"))
    err = capsys.readouterr().err
    assert "\r" not in err  # no terminal: plain lines, nothing redrawn
    _assert_counts_to(err, "generating", 300)


def test_generate_redraws_one_line_in_place_on_a_terminal_and_ends_it(trained: Source, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ganops.cli", *_generate_args(trained, tmp_path / "gen")],
                            stdout=subprocess.DEVNULL, stderr=slave, cwd=REPO)  # fmt: skip
    os.close(slave)
    raw = b""
    while True:  # read as it comes: a full pty buffer would block the command
        if select.select([master], [], [], 1.0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            raw += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=300) == 0, raw.decode(errors="replace")
    text = raw.decode().replace("\r\n", "\n")
    draws = [d.split("\n")[0] for d in text.split("\r\x1b[K")[1:]]  # each redraw of the line
    assert len(draws) >= 2 and RUNNING.match(draws[0]) and draws[0].startswith("generating  128/300 images")
    assert FINAL.match(draws[-1]) and draws[-1].startswith("generating  300/300 images")
    # The line was rewritten, not repeated: no newline until the last draw ends it.
    before_last = text[: text.rindex("\r\x1b[K")]
    assert "\n" not in before_last[before_last.index("\r\x1b[Kgenerating") :]
    assert re.search(r"in [\dhms.]+\n", text) and "done: 300 images" in text


def test_generate_with_q_prints_no_progress_line_but_still_its_summary(
    trained: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(_generate_args(trained, tmp_path / "gen", "-q"))
    err = capsys.readouterr().err
    assert not _lines(err, "generating") and "done: 300 images in 3 shards" in err


def test_shards_made_by_ray_workers_are_counted_on_the_drivers_line(
    trained: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = generation(str(tmp_path / "gen"), num=70, batch_size=16, shard_size=16, workers=2)
    result = generate(trained, gen, show_progress=True, echo=lambda _m: None)
    assert result.count == 70
    _assert_counts_to(capsys.readouterr().err, "generating", 70)


@pytest.fixture(scope="module")
def inception(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    data = _random_inception_bytes(seed=7)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


def _evaluate(source: Source, inception: tuple[str, str], num: int, *extra: str) -> None:
    main(["evaluate", "--run-id", source.run_id, "--tracking-uri", source.tracking_uri, "--metrics", "fid",
          "--num-samples", str(num), "--batch-size", "2", "--inception-weights", inception[0],
          "--inception-sha256", inception[1], "--no-log", *extra])  # fmt: skip


def test_evaluate_shows_the_reference_statistics_and_the_scoring_as_they_run(
    trained: Source, inception: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _evaluate(trained, inception, 4)
    captured = capsys.readouterr()
    _assert_counts_to(captured.err, "reference statistics", 4)
    _assert_counts_to(captured.err, "scoring samples", 4)
    assert captured.out.startswith("metric  value\nfid ")  # the scores stay on stdout, apart from the lines


def test_evaluate_with_q_prints_no_progress_line(
    trained: Source, inception: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _evaluate(trained, inception, 3, "-q")  # 3: a reference not cached yet, so it is computed
    captured = capsys.readouterr()
    assert "3 images (computed)" in captured.err
    assert not _lines(captured.err, "reference statistics") and not _lines(captured.err, "scoring samples")
    assert "img/s" not in captured.err and captured.out.startswith("metric  value\nfid ")
