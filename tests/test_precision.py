"""``spec.train.precision``: auto resolves per device to what it runs natively, a resumed job
keeps what it started with, and the choice is shown where users look (issue 27)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ganops import client
from ganops.train import precision
from ganops.train.progress import format_line
from ganops.train.step import GANStep
from tests.helpers import JOBS

CPU = torch.device("cpu")


def _cpuinfo_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    line = next(line for line in text.splitlines() if line.startswith("flags"))
    return set(line.split(":", 1)[1].split())


def test_auto_follows_the_bfloat16_units_the_kernel_reports_for_this_cpu() -> None:
    # Checked against the kernel's own report, not torch's: AVX512-BF16 or AMX-BF16 means native.
    native = bool({"avx512_bf16", "amx_bf16"} & _cpuinfo_flags())
    assert precision.native_bf16(CPU) is native
    assert precision.resolve("auto", CPU) == ("bf16" if native else "fp32")
    print(f"\nthis CPU: {precision.describe(CPU)} -> auto = {precision.resolve('auto', CPU)}")


@pytest.mark.parametrize(
    "units,expected",
    [({"avx512_bf16": True}, "bf16"), ({"amx_bf16": True}, "bf16"), ({"avx2": True, "avx512_f": True}, "fp32")],
)
def test_auto_picks_bf16_only_with_bfloat16_units(monkeypatch: pytest.MonkeyPatch, units: dict, expected: str) -> None:
    # Another CPU than this one can only be described, not had: its capability report is faked.
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"cpu_name": "test CPU", **units})
    assert precision.resolve("auto", CPU) == expected
    assert precision.resolve("fp32", CPU) == "fp32" and precision.resolve("bf16", CPU) == "bf16"  # as asked


def test_the_emulation_warning_names_the_cpu_the_slowdown_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"cpu_name": "AMD EPYC", "avx2": True})
    text = precision.emulation_warning(CPU)
    assert "AMD EPYC (no AVX512-BF16 or AMX)" in text and "slower" in text and "precision: auto" in text


def _step(*sets: str) -> GANStep:
    job = client.load_job(
        JOBS / "mnist_dcgan.yaml",
        ["spec.data.root=/unused", "spec.model.g_widths=[16,8]", "spec.model.d_widths=[8,16]", *sets],
    )
    return GANStep(job.spec, (1, 28, 28), None, CPU)


def test_the_shipped_main_job_asks_for_auto() -> None:
    job = client.load_job(JOBS / "mnist_dcgan.yaml", [])
    assert job.spec.train.precision == "auto"


def test_a_resumed_auto_job_keeps_the_precision_its_checkpoint_was_trained_in() -> None:
    started = _step("spec.train.precision=bf16")  # as if the first attempt ran where bf16 is native
    state = started.state_dict()
    assert state["precision"] == "bf16"
    resumed = _step("spec.train.precision=auto")
    resumed.load_state_dict(state)
    assert resumed.precision == "bf16"
    # An explicit setting is what the user asks for now: it wins over the checkpoint's.
    explicit = _step("spec.train.precision=fp32")
    explicit.load_state_dict(state)
    assert explicit.precision == "fp32"
    # A checkpoint from before the field (no entry): auto resolves afresh.
    old = {k: v for k, v in state.items() if k != "precision"}
    fresh = _step("spec.train.precision=auto")
    fresh.load_state_dict(old)
    assert fresh.precision == precision.resolve("auto", CPU)


def test_the_resolved_precision_drives_autocast() -> None:
    step = _step("spec.train.precision=auto")
    seen: list[torch.dtype] = []
    conv = next(m for m in step.d.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    step.precision = "bf16"  # what a resumed bf16 checkpoint sets
    step.train_batch(torch.rand(4, 1, 28, 28) * 2 - 1, None)
    assert set(seen) == {torch.bfloat16}
    seen.clear()
    step.precision = "fp32"
    step.train_batch(torch.rand(4, 1, 28, 28) * 2 - 1, None)
    assert set(seen) == {torch.float32}


def test_the_progress_line_shows_the_resolved_precision() -> None:
    report = {"epoch": 1, "epochs": 3, "step": 10, "images_per_s": 512.4, "d_loss": 1.2, "g_loss": 0.8,
              "d_x": 0.6, "d_g_z": 0.3, "precision": "fp32"}  # fmt: skip
    assert "512 img/s fp32  D 1.200" in format_line(report, None)


def test_an_unknown_precision_lists_the_choices() -> None:
    from ganops.errors import UserError

    with pytest.raises(UserError) as e:
        client.load_job(JOBS / "mnist_dcgan.yaml", ["spec.train.precision=fp16"])
    assert "spec.train.precision" in str(e.value) and all(c in str(e.value) for c in ("auto", "fp32", "bf16"))
