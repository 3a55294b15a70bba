"""The benchmarks run end to end (tiny settings) and report what they measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO


def _load(name: str):  # noqa: ANN202 - a script module
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
