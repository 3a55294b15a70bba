"""The benchmarks run end to end (tiny settings) and report what they measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.helpers import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_throughput_benchmark_measures_both_loops(mnist_root: Path, tmp_path: Path) -> None:
    bench = _load("train_throughput")
    out = bench.main(["--steps", "2", "--rounds", "1", "--warmup", "1", "--set", "spec.data.limit=512",
                      "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(out))
    (round_,) = out["rounds"]
    assert round_["ganops"] > 0 and round_["plain"] > 0
    assert round_["ratio"] == pytest.approx(round_["ganops"] / round_["plain"])
    assert out["settings"]["images"] == 512 and out["settings"]["batch"] == 128


@pytest.mark.slow
def test_first_run_benchmark_times_both_runs_and_splits_the_ganops_one(mnist_root: Path, tmp_path: Path) -> None:
    bench = _load("first_run")
    out = bench.main(["--rounds", "1", "--set", "spec.data.limit=128", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(out))
    (round_,) = out["rounds"]
    assert round_["ganops"] > 0 and round_["bare"] > 0
    assert round_["ratio"] == pytest.approx(round_["ganops"] / round_["bare"])
    # Every phase was marked (workers included), and the rows add up to the wall time.
    (ganops,) = out["splits"]["ganops"]
    assert set(ganops) == {name for name, _ in bench.GANOPS_PHASES}
    assert sum(ganops.values()) == pytest.approx(round_["ganops"], abs=0.01)
    (bare,) = out["splits"]["bare"]
    assert sum(bare.values()) == pytest.approx(round_["bare"], abs=0.01)
