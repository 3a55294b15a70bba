"""DiffAugment and ADA (ganops.augment): each policy is differentiable and does what its paper's
code does to an image; p picks the samples; ADA's p rises while D overfits a tiny real set
and falls when D cannot tell real from fake. (Exactness of the step with augmentation, on 2
DDP ranks against the papers' loop: tests/test_step_equivalence.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ganops import client
from ganops.augment import COLUMNS, POLICIES, UNIFORMS, ada_adjust, augment
from ganops.data import idx
from ganops.train.step import GANStep
from tests.helpers import JOBS


def _draws(n: int, **cols: float) -> torch.Tensor:
    u = torch.full((n, UNIFORMS), 0.5, dtype=torch.float64)
    for name, value in cols.items():
        u[:, COLUMNS.index(name)] = value
    return u


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_passes_gradients_to_what_it_keeps(policy: str) -> None:
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    u = torch.rand(4, UNIFORMS, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = augment(x, u, [policy], 1.0)
    assert not torch.equal(y, x)
    (grad,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every sample reaches x
    if policy != "color":
        # Geometric policies move or drop pixels: exactly the pixels kept get a gradient of 1.
        (ones,) = torch.autograd.grad(augment(x, u, [policy], 1.0).sum(), x)
        kept = (augment(torch.ones_like(x), u, [policy], 1.0) != 0).to(x.dtype)
        assert ones.sum() == kept.sum() and ones.max() == 1


def test_translation_shifts_by_whole_pixels_with_zero_fill() -> None:
    x = torch.arange(64, dtype=torch.float64).view(1, 1, 8, 8) + 1
    # 8 px: shifts in [-1, 1]; u = 0.9 -> +1 row (content moves up), u = 0.1 -> -1 col (moves right).
    y = augment(x, _draws(1, shift_rows=0.9, shift_cols=0.1), ["translation"], 1.0)
    expect = torch.zeros_like(x)
    expect[..., :7, 1:] = x[..., 1:, :7]
    assert torch.equal(y, expect)


def test_cutout_zeroes_a_half_size_square_clipped_at_the_border() -> None:
    x = torch.ones(2, 1, 8, 8, dtype=torch.float64)
    # Offsets in [0, 8] (randint(0, 8 + 1)); the square starts 2 before: 0.5 -> row 4 -> rows 2-5.
    y = augment(x, _draws(2, cut_row=0.5, cut_col=0.0), ["cutout"], 1.0)
    zeroed = y[0, 0] == 0
    assert zeroed[2:6, :2].all() and zeroed.sum() == 4 * 2  # columns -2..1: clipped to 0..1


def test_color_changes_brightness_saturation_and_contrast_only() -> None:
    gray = torch.full((1, 3, 4, 4), 0.2, dtype=torch.float64)
    y = augment(gray, _draws(1, brightness=0.75), ["color"], 1.0)  # + 0.25; no colour, no contrast to scale
    assert torch.allclose(y, gray + 0.25)


def test_p_picks_the_samples_each_policy_transforms() -> None:
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    u = _draws(6, shift_rows=0.99)
    u[:, COLUMNS.index("apply_translation")] = torch.tensor([0.1, 0.2, 0.4, 0.6, 0.8, 0.95], dtype=torch.float64)
    moved = [not torch.equal(a, b) for a, b in zip(augment(x, u, ["translation"], 0.5), x, strict=True)]
    assert moved == [True, True, True, False, False, False]
    assert torch.equal(augment(x, u, ["translation"], 0.0), x)
    assert all(not torch.equal(a, b) for a, b in zip(augment(x, u, ["translation"], 1.0), x, strict=True))


def test_ada_moves_p_by_the_images_seen_and_never_below_zero() -> None:
    p = torch.tensor(0.01, dtype=torch.float64)
    assert float(ada_adjust(p, torch.tensor(0.9), 0.6, 64 * 4, 500)) == pytest.approx(0.01 + 256 / 500_000)
    assert float(ada_adjust(p, torch.tensor(0.1), 0.6, 64 * 4, 0.5)) == 0.0
    assert float(ada_adjust(p, torch.tensor(0.6), 0.6, 64 * 4, 500)) == 0.01  # at the target: stays


# -- ADA on a real training step (in-process, no Ray): does p follow D's overfitting? ---------

SMALL = [
    "spec.data.download=false", "spec.model.g_widths=[16,8]", "spec.model.d_widths=[8,16]",
    "spec.model.d_norm=none", "spec.model.kernel_size=3", "spec.train.ema_decay=null", "spec.train.precision=fp32",
    "spec.augment.policy=[translation,cutout]", "spec.augment.ada_target=0.6", "spec.augment.ada_kimg=2",
    "spec.train.batch_size=32", "spec.scaling.num_workers=1",
]  # fmt: skip


def _train(mnist_root: Path, images: torch.Tensor, overrides: list[str], steps: int) -> list[float]:
    job = client.load_job(JOBS / "mnist_dcgan.yaml", [f"spec.data.root={mnist_root}", *SMALL, *overrides])
    torch.manual_seed(0)
    step = GANStep(job.spec, (1, 28, 28), None, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ps = []
    for i in range(steps):
        batch = images[torch.randint(0, len(images), (32,), generator=g)]
        step.train_batch(batch, None)
        if (i + 1) % 10 == 0:
            ps.append(float(step.augment_p))
    return ps


@pytest.fixture(scope="module")
def mnist(mnist_root: Path) -> torch.Tensor:
    spec = client.load_job(JOBS / "mnist_dcgan.yaml", [f"spec.data.root={mnist_root}", "spec.data.download=false",
                                                       "spec.data.split=test", "spec.data.limit=2048"]).spec.data  # fmt: skip
    data = idx.load(spec)
    return torch.from_numpy(data.images).float() / 127.5 - 1


def test_ada_raises_p_while_d_overfits_a_tiny_real_set(mnist: torch.Tensor, mnist_root: Path) -> None:
    # 16 real images, a D learning 10x faster than G: D soon scores every real image positive
    # (r_t -> 1 > 0.6), and p, starting at 0, must climb, step after step.
    ps = _train(mnist_root, mnist[:16], ["spec.train.d_lr=2e-3", "spec.train.g_lr=2e-4"], 60)
    assert ps[-1] > 0.3, ps
    assert all(b >= a for a, b in zip(ps[1:], ps[2:], strict=False)), ps


def test_ada_lowers_p_while_d_cannot_tell_real_from_fake(mnist: torch.Tensor, mnist_root: Path) -> None:
    # A D that cannot learn (learning rate 0, its last layer zeroed: every score is 0, so
    # r_t = 0 < 0.6): p, starting at 0.5, falls to 0 and stays there.
    job_sets = ["spec.augment.p=0.5"]
    job = client.load_job(JOBS / "mnist_dcgan.yaml", [f"spec.data.root={mnist_root}", *SMALL, *job_sets])
    torch.manual_seed(0)
    step = GANStep(job.spec, (1, 28, 28), None, torch.device("cpu"))
    with torch.no_grad():
        step.d.linear.weight.zero_()
        step.d.linear.bias.zero_()
    for group in step.opt_d.param_groups:
        group["lr"] = 0.0
    ps = []
    for i in range(48):  # 0.5 / (32 * 4 / 2000) = 7.8 adjustments: 0 after 32 steps
        step.train_batch(mnist[i * 32 : (i + 1) * 32], None)
        ps.append(float(step.augment_p))
    assert ps[3] < 0.5 and ps[-1] == 0.0, ps[:10]
    assert all(b <= a for a, b in zip(ps, ps[1:], strict=False)), ps


def test_a_resumed_step_continues_adas_p_and_its_open_interval(mnist: torch.Tensor, mnist_root: Path) -> None:
    # stylegan2-ada-pytorch#81: a resumed run must not restart p. 6 steps = one adjustment and
    # half of the next interval; the copy loaded from the state dict then moves p as the original.
    job = client.load_job(JOBS / "mnist_dcgan.yaml", [f"spec.data.root={mnist_root}", *SMALL, "spec.augment.p=0.5"])
    torch.manual_seed(0)
    step = GANStep(job.spec, (1, 28, 28), None, torch.device("cpu"))
    for i in range(6):
        step.train_batch(mnist[i * 32 : (i + 1) * 32], None)
    state = step.state_dict()
    resumed = GANStep(job.spec, (1, 28, 28), None, torch.device("cpu"))
    resumed.load_state_dict(state)
    resumed.noise.set_state(step.noise.get_state())  # the loop restores the noise stream itself
    assert float(resumed.augment_p) == float(step.augment_p) != 0.5
    for i in range(6, 8):  # the interval that was open ends here, in both
        step.train_batch(mnist[i * 32 : (i + 1) * 32], None)
        resumed.train_batch(mnist[i * 32 : (i + 1) * 32], None)
    assert float(resumed.augment_p) == float(step.augment_p)
    assert resumed.state_dict()["augment"] == step.state_dict()["augment"]
