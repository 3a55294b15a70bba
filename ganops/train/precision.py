"""Which arithmetic a worker trains in (``spec.train.precision``).

bfloat16 autocast pays only where the device has bfloat16 units: on a CPU without them
(AVX2 only, as many laptops and cloud CPUs) PyTorch emulates it, and the MNIST DCGAN step ran
at 16-17 img/s there against ~150 in float32. ``auto`` therefore resolves per device, on
the worker that trains (the driver may run on a machine without the GPU, or with another
CPU).
"""

from __future__ import annotations

import torch

# What torch.cpu.get_capabilities() reports for native bfloat16 arithmetic on x86 CPUs
# (oneDNN uses them for bf16 matmuls and convolutions).
_CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix arithmetic in hardware (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return any(bool(caps.get(f)) for f in _CPU_BF16_FEATURES)
    return False


def describe(device: torch.device) -> str:
    """The device as the precision choice sees it, for messages."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    caps = torch.cpu.get_capabilities()
    name = str(caps.get("cpu_name") or "CPU")
    units = [f for f in _CPU_BF16_FEATURES if caps.get(f)]
    return f"{name} ({', '.join(units)})" if units else f"{name} (no AVX512-BF16 or AMX)"


def resolve(asked: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for a spec's ``precision`` on ``device``."""
    if asked == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return asked


def emulation_warning(device: torch.device) -> str:
    return (
        f"spec.train.precision: bf16 on {describe(device)}, which has no bfloat16 units: PyTorch emulates it, "
        "and a step runs several times slower than in fp32 (measured ~9x on a 2-core AVX2 CPU); "
        "precision: auto picks fp32 here and bf16 where it is native"
    )
