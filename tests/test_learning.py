"""The learning tier: the generators ganops trains learn to draw digits.

The shipped MNIST jobs go through ``ganops submit`` on two Ray workers in the heavy tier
(``make test-heavy``, so in CI): the MNIST DCGAN and the conditional MNIST DCGAN. ``make
test-learning`` adds the cases CI's 70 minutes have no room for: a 32 px job with BatchNorm in
D (cifar_dcgan's networks) on MNIST padded to 32 px and repeated to RGB, and the SNGAN ResNet.
A small MNIST classifier, trained once per machine (cached on disk), judges 1,000 samples of
the final checkpoint's generator: the Fréchet distance of its features to held-out digits,
the classes the samples cover, and (conditional job) whether they show the class asked for.
The bar (``tests/learning/fixtures.py``) is absolute, and each case's budget is one at which
the plain pytorch/examples loop, trained on the same networks, weights and batches, passes
it too. That reference is trained only when ganops' run fails (the failure then says whether
the budget or ganops is at fault) or with ``GANOPS_LEARNING_REFERENCES=1`` (``make
test-learning``), which checks that every budget is still one the plain loop passes.

Step correctness (each loss, each normalisation, DDP) is carried by the exact step tests
(``tests/test_step_equivalence.py``), not by many short learning runs. The other shipped
jobs and the loss matrix need more than 2 CPUs afford: they are the GPU tier (marker
``gpu``, ``make test-gpu``), run where CUDA is present, or anywhere with
``GANOPS_LEARNING=full``.

    make test-heavy                                        # the two shipped MNIST jobs
    make test-learning                                     # every case, beside its reference
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.learning import runs
from tests.learning.data import Digits, mnist, write_folder
from tests.learning.fixtures import (  # noqa: F401 - fixtures
    MIN_CLASSES,
    ceiling,
    check,
    failures,
    judge,
    results_table,
)  # fmt: skip
from tests.learning.judge import Judge, Verdict
from tests.learning.plain import PlainGAN

GPU = "cuda" if torch.cuda.is_available() else "cpu"


def gpu_tier(test):
    """The GPU tier: where CUDA is present, or anywhere with GANOPS_LEARNING=full (hours on a CPU)."""
    skip = GPU != "cuda" and os.environ.get("GANOPS_LEARNING") != "full"
    test = pytest.mark.skipif(skip, reason="GPU tier (make test-gpu): needs CUDA, or GANOPS_LEARNING=full")(test)
    return pytest.mark.timeout(7200)(pytest.mark.gpu(test))


@dataclass(frozen=True)
class Case:
    job: str
    steps: int
    sets: list[str] = field(default_factory=list)
    note: str = ""


# Budgets measured on 2 CPUs (a 2-core AVX2 EPYC, 2026-12-07; docs/development.md, "The learning
# tier"), at batch 64 and seed 0: where the plain reference passes the bar, with a margin.
# mnist_dcgan and mnist_cgan are the shipped jobs as they are; the 32 px job is cifar_dcgan's
# networks at a quarter of their widths with an EMA of G (at full width on RGB the case costs
# ~15 min here; what it tests is BatchNorm in D at 32 px through the pipeline, not widths).
# 8,000 training digits: 125 steps an epoch.
SUBMITTED: dict[str, Case] = {
    # The plain loop: FD 77 and 9 classes at 1,400 steps, 62 and 9 at 1,700.
    "mnist_dcgan": Case("mnist_dcgan", 1500),
    # The plain loop: 10 classes, 100% agreement, FD 106 at 700 steps.
    "mnist_cgan": Case("mnist_cgan", 750),
}


@pytest.mark.heavy
def test_the_judging_classifier_reads_held_out_digits(judge: Judge) -> None:
    print(f"\nclassifier: {judge.accuracy:.2%} on {len(judge.held_out)} held-out digits")
    assert judge.accuracy >= 0.97


@pytest.mark.heavy
def test_noise_and_collapsed_generators_fail_the_bar_and_real_digits_pass(judge: Judge, ceiling: float) -> None:
    base = judge.baselines()
    print(f"\nceiling FD {ceiling:.1f}")
    for name, v in base.items():
        print(f"  {name:26s} {v.line()}")
    real = base.pop("real digits (held-out)")
    assert not failures(real, ceiling), "real digits must pass the bar"
    assert real.fd < ceiling / 10, "the ceiling must sit far above what real digits score"
    for name, v in base.items():
        assert failures(v, ceiling), f"{name} passes the bar: {v.line()}"
    assert base["one image repeated"].classes < MIN_CLASSES
    assert base["one class of real digits"].classes < MIN_CLASSES


@pytest.mark.heavy
def test_a_collapsed_generator_that_left_noise_fails_the_bar(judge: Judge, ceiling: float) -> None:
    # What the old relaxed rule let pass (issue 26): real digits of three classes only.
    held = judge.held_out
    three = torch.from_numpy(held.labels < 3)
    from tests.learning.data import unit

    v = judge.judge(unit(held.images)[three])
    assert v.fd < ceiling and v.classes == 3
    assert any("too few classes" in r for r in failures(v, ceiling)), v.line()


# The resnet cases' settings (LEARNING_ONLY below): G 32 wide from 7x7, D 32 wide, z 128, hinge, Adam
# 2e-4 with the SNGAN betas (0.0, 0.9), one D step per G step (the plain loop's), an EMA of G.
RESNET_SETS = [
    "spec.model.arch=resnet", "spec.model.d_norm=null", "spec.model.d_dropout=null", "spec.model.kernel_size=null",
    "spec.model.g_activation=null", "spec.model.latent_dim=128", "spec.model.g_widths=[32,32,32]",
    "spec.model.d_widths=[32,32,32,32]", "spec.train.loss=hinge", "spec.train.betas=[0.0,0.9]",
]  # fmt: skip
RESNET_STEPS = 1500
# The conditional form (mnist_cgan + RESNET_SETS: cBN in G, projection D) has no budget yet: at
# 1,000 steps both ganops and the plain loop drew the class asked for in only 19% and 15% of
# samples (FD 128 and 119), far from the 80% bar.

# -- through `ganops submit`, two Ray workers (make test-heavy) -------------------------------


@pytest.fixture(scope="session")
def mnist_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training digits as 32 px PNGs in class folders: the `folder` dataset's layout."""
    train, _ = mnist()
    return write_folder(tmp_path_factory.mktemp("mnist-folder"), train)


def _plain_reference(job_spec, steps: int, judge: Judge) -> Callable[[], Verdict]:
    """The plain loop on the job's networks with the workers' initial weights, the same steps
    and global batch: trained when ``check`` asks for it (ganops failed, or every reference
    was asked for)."""
    from ganops.train.loop import rank_seed
    from ganops.train.step import GANStep

    shape = runs.image_shape(job_spec)

    def train() -> Verdict:
        torch.manual_seed(rank_seed(job_spec.train.seed, 0))  # what every worker seeds its weights with
        init = GANStep(job_spec, shape, 10, torch.device("cpu"))
        ref = PlainGAN(job_spec, shape, 10, torch.device("cpu"), init=(init.g.state_dict(), init.d.state_dict()))
        train_digits, _ = mnist()
        for i, (real, y) in enumerate(
            runs.batches(train_digits, shape, job_spec.train.batch_size, job_spec.train.seed)
        ):
            if i == steps:
                break
            ref.train_batch(real, y)
        return judge.judge_generator(ref.sampler)

    return train


@pytest.mark.heavy
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("case", list(SUBMITTED))
def test_the_job_submitted_to_two_ray_workers_learns_mnist_digits(
    case: str, judge: Judge, ceiling: float, ray_cluster: None, mnist_folder: Path, tmp_path: Path
) -> None:
    _submit_and_judge(case, SUBMITTED[case], judge, ceiling, mnist_folder, tmp_path)


# In make test-learning (beside their references) only: CI's 70 minutes have no room for them
# (the 32 px case took 265 s of CI's heavy tier). BatchNorm in D and DDP are also carried by
# mnist_dcgan (BatchNorm in D at 28 px) and exactly by the step tests; what these add is the
# 32 px RGB pipeline, and the SNGAN ResNets (spectral-norm D, hinge, the SNGAN betas) narrowed
# for 2 CPUs on the MNIST job.
LEARNING_ONLY: dict[str, Case] = {
    # The plain loop (one process): FD 150 and 8 classes at 1,000 steps, 94 and 8 at 1,300; on
    # 2 workers at 1,375 steps the plain loop had 9 classes (FD 88) and ganops 7 (FD 106, the
    # eighth at 4.3%): 8 classes is the edge there, so the budget is 1,750.
    "batchnorm-d-32px": Case(
        "cifar_dcgan",
        1750,
        ["spec.model.g_widths=[128,64,32]", "spec.model.d_widths=[32,64,128]", "spec.train.ema_decay=0.99"],
    ),  # fmt: skip
    "resnet-sn": Case("mnist_dcgan", RESNET_STEPS, [*RESNET_SETS]),
}


@pytest.mark.heavy
@pytest.mark.timeout(3600)
@pytest.mark.skipif(
    os.environ.get("GANOPS_LEARNING_REFERENCES") != "1", reason="make test-learning only (CI's time budget)"
)
@pytest.mark.parametrize("case", list(LEARNING_ONLY))
def test_the_jobs_beyond_cis_budget_submitted_to_two_ray_workers_learn_mnist_digits(
    case: str, judge: Judge, ceiling: float, ray_cluster: None, mnist_folder: Path, tmp_path: Path
) -> None:
    _submit_and_judge(case, LEARNING_ONLY[case], judge, ceiling, mnist_folder, tmp_path)


def _submit_and_judge(case: str, c: Case, judge: Judge, ceiling: float, mnist_folder: Path, tmp_path: Path) -> None:
    from ganops import jobdir
    from ganops.nets import build_generator
    from tests.conftest import run

    train: Digits = mnist()[0]
    per_epoch = len(train) // runs.BATCH
    epochs = -(-c.steps // per_epoch)
    data = (
        # 32 px RGB jobs read the digits through the folder reader, as their real data path would.
        ["spec.data.dataset=folder", f"spec.data.root={mnist_folder}", "spec.data.image_size=32",
         "spec.data.channels=3"]
        if runs.image_shape(runs.load_spec(c.job).spec) == (3, 32, 32)
        else [f"spec.data.limit={len(train)}"]
    )  # fmt: skip
    sets = [*data, *c.sets, f"spec.train.epochs={epochs}", f"spec.checkpoint.every_epochs={epochs}",
            "spec.samples.num=16", "spec.scaling.num_workers=2", f"spec.storage={tmp_path}",
            "spec.train.log_every_steps=50",
            # The 32 px jobs score FID by default: 10,000 samples per evaluation are not this test's.
            "spec.eval.every_epochs=null", "spec.checkpoint.keep_best=null"]  # fmt: skip
    job_obj = runs.load_spec(c.job, *sets)
    t0 = time.perf_counter()
    result = run(job_obj)
    seconds = time.perf_counter() - t0
    assert result.epochs_done == epochs
    state = torch.load(Path(result.latest_checkpoint) / jobdir.STATE_FILE, map_location="cpu", weights_only=True)
    spec = job_obj.spec
    g = build_generator(spec.model, runs.image_shape(spec), 10 if spec.model.conditional else None)
    nets = state["nets"]
    g.load_state_dict(nets["g_ema"] if nets.get("g_ema") is not None else nets["g"])
    done = state["position"]["step"]
    check(f"{case} (ganops submit, 2 workers)", done, judge.judge_generator(g), _plain_reference(spec, done, judge),
          seconds, ceiling, conditional=spec.model.conditional)  # fmt: skip


# -- the GPU tier (make test-gpu) -----------------------------------------------------------

# Steps per case at batch 64 (32 for the deep jobs): about what the plain loop needs to draw
# digits of most classes; not yet measured against the full bar (no GPU was at hand).
JOB_STEPS = {
    "mnist_dcgan": 1000,
    "mnist_mlp": 2000,
    "cifar_mlp": 1000,
    "cifar_dcgan": 1000,
    "svhn_dcgan": 1000,
    "mnist_deep": 500,
    "cifar_deep": 500,
    "mnist_cgan": 1000,
}
JOB_SETS = {"mnist_deep": ["spec.train.batch_size=32"], "cifar_deep": ["spec.train.batch_size=32"]}
LOSSES = ("bce", "minimax", "hinge", "wgan_gp", "lsgan")
LOSS_JOB = "mnist_dcgan"
LOSS_SETS = ["spec.train.ema_decay=null"]
LOSS_STEPS = 1000
# The original (saturating) minimax objective with a BatchNorm D stalls in the plain loop too
# (D wins at once and log(1 - D(G(z))) gives G no gradient): a D at a quarter of G's rate.
LOSS_SETS_FOR = {("minimax", "batch"): ["spec.train.d_lr=5e-5"]}


@gpu_tier
@pytest.mark.parametrize("job", list(JOB_STEPS))
def test_every_shipped_job_generator_learns_mnist_digits(job: str, judge: Judge, ceiling: float) -> None:
    spec = runs.load_spec(job, *JOB_SETS.get(job, [])).spec
    t0 = time.perf_counter()
    pair = runs.train_pair(spec, JOB_STEPS[job], device=GPU)
    assert pair.plain is not None
    check(f"{job} (GANStep, {GPU})", pair.steps, judge.judge_generator(pair.ganops), judge.judge_generator(pair.plain),
          time.perf_counter() - t0, ceiling, conditional=spec.model.conditional)  # fmt: skip


@gpu_tier
@pytest.mark.parametrize("loss,d_norm", [(loss, norm) for loss in LOSSES for norm in ("batch", "none")])
def test_every_loss_learns_mnist_digits_with_and_without_batchnorm_in_d(
    loss: str, d_norm: str, judge: Judge, ceiling: float
) -> None:
    norm = "layer" if (loss, d_norm) == ("wgan_gp", "batch") else d_norm  # a per-sample penalty: LayerNorm
    sets = [*LOSS_SETS, *LOSS_SETS_FOR.get((loss, norm), []), f"spec.train.loss={loss}", f"spec.model.d_norm={norm}"]
    spec = runs.load_spec(LOSS_JOB, *sets).spec
    t0 = time.perf_counter()
    pair = runs.train_pair(spec, LOSS_STEPS, device=GPU)
    assert pair.plain is not None
    check(f"{LOSS_JOB} loss={loss} d_norm={norm}", pair.steps, judge.judge_generator(pair.ganops),
          judge.judge_generator(pair.plain), time.perf_counter() - t0, ceiling)  # fmt: skip
