"""The GAN step's contract with BatchNorm and bf16, in one process.

Under DDP (2 gloo ranks) every step variant is checked exactly against the papers' loop in
``tests/test_step_equivalence.py``: that also counts the all-reduces per step and shows
SyncBN training the global batch."""

from __future__ import annotations

import pytest
import torch

from ganops import client
from ganops.train.step import GANStep
from tests.helpers import JOBS

# cifar_dcgan's shape (32x32 RGB, BatchNorm in G and D) at widths that run in seconds.
SMALL = [
    "spec.data.dataset=fake", "spec.data.root=", "spec.data.download=false",
    "spec.model.g_widths=[32,16,8]", "spec.model.d_widths=[8,16,32]", "spec.train.batch_size=16",
]  # fmt: skip


def small_job(*overrides: str):
    return client.load_job(JOBS / "cifar_dcgan.yaml", SMALL + list(overrides))


def data(steps: int, n: int = 16) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    batches = [torch.rand(n, 3, 32, 32, generator=g) * 2 - 1 for _ in range(steps)]
    zs = [torch.randn(n, 100, generator=g) for _ in range(steps)]
    return batches, zs


def test_batchnorm_d_scores_real_and_fake_each_with_their_own_statistics() -> None:
    job = small_job()
    torch.manual_seed(0)
    step = GANStep(job.spec, (3, 32, 32), None, torch.device("cpu"))
    real, z = data(1)[0][0], data(1)[1][0]
    step.sample_z = lambda n: z  # type: ignore[method-assign]
    seen: list[torch.Tensor] = []
    bn = next(m for m in step.d.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
    step.train_batch(real, None)
    # D step: real alone, fake alone; G step: fake alone. Three BatchNorm batches of 16,
    # never one of 32, and as many running-statistics updates as pytorch/examples' loop.
    assert [t.size(0) for t in seen] == [16, 16, 16]
    assert int(bn.num_batches_tracked) == 3


def test_bf16_runs_the_forwards_in_bfloat16_and_keeps_float32_weights_and_state() -> None:
    torch.manual_seed(0)
    step = GANStep(small_job("spec.train.precision=bf16").spec, (3, 32, 32), None, torch.device("cpu"))
    dtypes: list[torch.dtype] = []
    for net in (step.g, step.d):
        conv = next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))
        conv.register_forward_hook(lambda _m, _inp, out: dtypes.append(out.dtype))
    batches, zs = data(2)
    for real in batches:
        step.train_batch(real, None)
    # G in the D step, D on real and fake, D in the G step: every conv ran in bfloat16...
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes
    # ...while the weights, the optimizer state and the statistics stay float32.
    state = step.state_dict()
    tensors = [*state["g"].values(), *state["d"].values()]  # type: ignore[union-attr]
    tensors += [t for s in state["opt_d"]["state"].values() for t in s.values() if t.dim() > 0]  # type: ignore[index]
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float32}
    stats = step.take_stats()
    assert all(v == v and abs(v) < 1e3 for v in stats.values()), stats  # finite
    # And sampling (grids, evaluation, export) is plain float32 outside autocast.
    assert step.sampler(torch.randn(2, 100)).dtype == torch.float32


def test_linear_lr_decay_resumes_where_the_schedule_was_mid_g_step() -> None:
    # 8 batches, 2 D steps per G step: rates 1, 3/4, 1/2, 1/4 of the spec's. Stopped after 3
    # batches (inside G step 1), the resumed step continues at 3/4, then 1/2, as the original.
    job = small_job("spec.train.lr_decay=linear", "spec.train.d_steps=2", "spec.train.lr=1e-3")
    batches, _ = data(5)
    torch.manual_seed(0)
    step = GANStep(job.spec, (3, 32, 32), 10, torch.device("cpu"))
    step.run_batches = 8
    for real in batches[:3]:
        step.train_batch(real, None)
    resumed = GANStep(job.spec, (3, 32, 32), 10, torch.device("cpu"))
    resumed.run_batches = 8
    resumed.load_state_dict(step.state_dict())
    rates = []
    for s in (step, resumed):
        assert s.opt_d.param_groups[0]["lr"] == s.opt_g.param_groups[0]["lr"] == 1e-3 * 3 / 4
        for real in batches[3:5]:
            s.train_batch(real, None)
        rates.append((s.opt_g.param_groups[0]["lr"], s.opt_d.param_groups[0]["lr"]))
    assert rates == [(1e-3 / 2, 1e-3 / 2)] * 2


@pytest.mark.parametrize("name", ["cifar_sngan", "cifar_biggan_diffaug"])
def test_the_resnet_cifar_jobs_start_on_a_cpu_as_shipped(name: str) -> None:
    # Their real runs need GPUs. Here: the shipped file's nets (full widths), objective,
    # d_steps, augmentation and optimizer, at a batch of 2, train one G step on CIFAR-shaped data.
    job = client.load_job(JOBS / f"{name}.yaml", ["spec.data.dataset=fake", "spec.data.root=",
                                                 "spec.data.download=false", "spec.train.batch_size=2",
                                                 "spec.scaling.num_workers=1"])  # fmt: skip
    t = job.spec.train
    torch.manual_seed(0)
    step = GANStep(job.spec, (3, 32, 32), 10, torch.device("cpu"))
    before = {k: v.clone() for k, v in step.g.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for _ in range(t.d_steps):
        step.train_batch(torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.randint(0, 10, (2,), generator=g))
    assert (step.stats.d_steps, step.stats.g_steps) == (t.d_steps, 1)
    stats = step.take_stats()
    assert all(v == v and abs(v) < 1e6 for v in stats.values()), stats  # finite
    assert any(not torch.equal(before[k], v) for k, v in step.g.state_dict().items())  # G took its step


def test_the_divergence_error_advises_what_is_not_already_set() -> None:
    from ganops.spec.models import TrainSpec
    from ganops.train.divergence import DivergedError

    err = DivergedError("training diverged at step 7: g_loss not finite from step 7 (rank 0)")
    assert err.final_message(TrainSpec()).endswith("set spec.train.on_divergence: rollback")
    told = err.final_message(TrainSpec(on_divergence="rollback", max_rollbacks=2))
    assert "on_divergence" not in told and "spec.train.max_rollbacks, now 2" in told
