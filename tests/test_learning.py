"""The learning tier (issue 11): the generators ganops trains must actually learn.

Every shipped job, and every loss with and without BatchNorm in D, trains its own networks
on real MNIST digits (28 px; padded to 32 px and repeated to RGB for the 32 px RGB jobs).
A small MNIST classifier, trained once per session (cached on disk), then judges 1,000
samples: the Fréchet distance of its features to held-out digits, the classes the samples
cover, and (conditional job) whether they show the class asked for. The bar is set by the
plain pytorch/examples loop trained on the same networks, weights, batches and budget in
the same session (rule: ``tests/learning/fixtures.py``); ``pytest -s`` prints the table.

Three jobs go through ``ganops submit`` on two Ray workers and are judged from their final
checkpoint; the others call the training step (``GANStep.train_batch``) directly.

    .venv/bin/python -m pytest tests/test_learning.py -s               # the default subset (CI)
    GANOPS_LEARNING=full .venv/bin/python -m pytest tests/test_learning.py -s   # every case

The default subset is the cases that catch issue 11's bug (BatchNorm in D, through the step
and through ``ganops submit``), sized for CI; the full tier takes 25-35 min on 2 CPUs
(``make test-learning``).
"""

from __future__ import annotations

import os
import time
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
from tests.learning.judge import Judge
from tests.learning.plain import PlainGAN

FULL = pytest.mark.skipif(
    os.environ.get("GANOPS_LEARNING") != "full",
    reason="full learning tier only (GANOPS_LEARNING=full, or make test-learning)",
)


def _subset(values: tuple[str, ...], default: tuple[str, ...]) -> list[object]:
    """``values`` as parameters, those outside ``default`` only in the full tier."""
    return [v if v in default else pytest.param(v, marks=FULL) for v in values]


# A case trains for minutes; on a loaded 2-CPU machine several times the 600 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# Steps per case (batch 64 unless JOB_SETS says otherwise): about what the plain loop needs
# to draw digits of most classes, within what 2 CPUs can afford. The submitted jobs train
# whole epochs of the 8,000 training digits (125 steps of 64 each).
JOB_STEPS = {
    "mnist_dcgan": 375,
    # At 1,000 steps 7 classes (FD 335) against the plain loop's 9 (FD 277); at 2,000 both 9.
    "mnist_mlp": 2000,
    "cifar_mlp": 600,
    "cifar_dcgan": 250,
    "svhn_dcgan": 250,
    "mnist_deep": 100,
    "cifar_deep": 100,
    "mnist_cgan": 375,
}
# The deep jobs cost ~1-1.5 s per step of 64 on 2 CPUs: half batches keep them affordable.
JOB_SETS = {"mnist_deep": ["spec.train.batch_size=32"], "cifar_deep": ["spec.train.batch_size=32"]}
SUBMITTED = ("cifar_dcgan", "mnist_dcgan", "mnist_cgan")  # through `ganops submit`, 2 workers
DIRECT = tuple(j for j in JOB_STEPS if j not in SUBMITTED)

LOSSES = ("bce", "minimax", "hinge", "wgan_gp", "lsgan")
# The loss matrix runs mnist_dcgan's DCGAN networks (28 px, the TF tutorial's) narrowed (G
# at a quarter of its widths, D at half): ten cases, each trained twice (ganops and plain),
# fit the budget only so; what is tested is the objective and D's normalisation, not widths.
LOSS_JOB = "mnist_dcgan"
# The EMA of G (the shipped job samples one) is off: the raw G of both loops is compared.
LOSS_SETS = ["spec.model.g_widths=[64,32,16]", "spec.model.d_widths=[32,64]", "spec.train.ema_decay=null"]
# At 300 steps an unbroken run could still cover only 6 classes (lsgan, d_norm none), and
# WGAN-GP (one critic step per G step, the job's Adam) left noise only after ~450 steps
# (FD 511 at 450, 283 with 9 classes at 600; the plain loop alike).
# WGAN-GP with a LayerNorm critic: 7 vs 8 classes at 600 steps (FD 223/286), 7 vs 8 at 800
# (FD 152/145, both well learned).
LOSS_STEPS = 500
LOSS_STEPS_FOR = {("wgan_gp", "none"): 600, ("wgan_gp", "layer"): 800, ("minimax", "batch"): 750}
# The original (saturating) minimax objective with a BatchNorm D does not leave noise within
# 1,000 steps in the plain pytorch/examples loop either (FD 1,744 / 1,703 / 1,665 / 1,637 at
# 250 / 500 / 750 / 1,000 steps; ganops alike): D wins at once and log(1 - D(G(z))) gives G
# no gradient (Goodfellow et al. 2014, section 3). A D at a quarter of G's learning rate
# keeps G's gradient alive (FD 250 / 280 at 750 steps, ganops / plain), so that case judges
# the objective instead of a stall both loops share.
LOSS_SETS_FOR = {("minimax", "batch"): ["spec.train.d_lr=5e-5"]}


def test_the_judging_classifier_reads_held_out_digits(judge: Judge) -> None:
    print(f"\nclassifier: {judge.accuracy:.2%} on {len(judge.held_out)} held-out digits")
    assert judge.accuracy >= 0.97


def test_noise_and_collapsed_generators_fail_the_bar_and_real_digits_pass(judge: Judge, ceiling: float) -> None:
    base = judge.baselines()
    print(f"\nceiling FD {ceiling:.1f}")
    for name, v in base.items():
        print(f"  {name:26s} {v.line()}")
    real = base.pop("real digits (held-out)")
    assert not failures(real, None, ceiling), "real digits must pass the bar"
    assert real.fd < ceiling / 10, "the ceiling must sit far above what real digits score"
    for name, v in base.items():
        # Failures fail on their own, and next to a reference that learned nothing either.
        assert failures(v, None, ceiling), f"{name} passes the bar: {v.line()}"
        assert failures(v, v, ceiling), f"{name} passes the bar next to itself: {v.line()}"
    assert base["one image repeated"].classes < MIN_CLASSES
    assert base["one class of real digits"].classes < MIN_CLASSES


@pytest.mark.parametrize("job", _subset(DIRECT, ()))
def test_the_shipped_job_generator_learns_mnist_digits(job: str, judge: Judge, ceiling: float) -> None:
    spec = runs.load_spec(job, *JOB_SETS.get(job, [])).spec
    t0 = time.perf_counter()
    pair = runs.train_pair(spec, JOB_STEPS[job])
    assert pair.plain is not None
    check(f"{job} (GANStep, batch {spec.train.batch_size})", pair.steps, judge.judge_generator(pair.ganops), judge.judge_generator(pair.plain),
          time.perf_counter() - t0, ceiling, conditional=spec.model.conditional)  # fmt: skip


@pytest.mark.parametrize(
    "loss,d_norm",
    [
        # By default only bce with BatchNorm in D (issue 11's case). Coverage at these budgets
        # flips between runs for every loop (hinge + BatchNorm in CI: FD 229 and 6 classes
        # against the plain loop's FD 289 and 8), so the other cases are in the full tier.
        (loss, norm) if (loss, norm) == ("bce", "batch") else pytest.param(loss, norm, marks=FULL)
        for loss in LOSSES
        for norm in ("batch", "none")
    ],
)
def test_every_loss_learns_mnist_digits_with_and_without_batchnorm_in_d(
    loss: str, d_norm: str, judge: Judge, ceiling: float
) -> None:
    norm = d_norm
    if loss == "wgan_gp" and d_norm == "batch":
        # A per-sample gradient penalty and BatchNorm do not mix: the normalised critic of
        # WGAN-GP is a LayerNorm one.
        norm = "layer"
    sets = [*LOSS_SETS, *LOSS_SETS_FOR.get((loss, norm), []), f"spec.train.loss={loss}", f"spec.model.d_norm={norm}"]
    spec = runs.load_spec(LOSS_JOB, *sets).spec
    t0 = time.perf_counter()
    pair = runs.train_pair(spec, LOSS_STEPS_FOR.get((loss, norm), LOSS_STEPS))
    assert pair.plain is not None
    check(f"{LOSS_JOB} loss={loss} d_norm={norm}", pair.steps, judge.judge_generator(pair.ganops),
          judge.judge_generator(pair.plain), time.perf_counter() - t0, ceiling)  # fmt: skip


# -- through `ganops submit`, two Ray workers -----------------------------------------------


@pytest.fixture(scope="session")
def mnist_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training digits as 32 px PNGs in class folders: the `folder` dataset's layout."""
    train, _ = mnist()
    return write_folder(tmp_path_factory.mktemp("mnist-folder"), train)


def _plain_reference(job_spec, steps: int, judge: Judge) -> object:
    """The plain loop on the job's networks with the workers' initial weights, same steps and global batch."""
    from ganops.train.loop import rank_seed
    from ganops.train.step import GANStep

    shape = runs.image_shape(job_spec)
    torch.manual_seed(rank_seed(job_spec.train.seed, 0))  # what every worker seeds its weights with
    init = GANStep(job_spec, shape, 10, torch.device("cpu"))
    ref = PlainGAN(job_spec, shape, 10, torch.device("cpu"), init=(init.g.state_dict(), init.d.state_dict()))
    train, _ = mnist()
    for i, (real, y) in enumerate(runs.batches(train, shape, job_spec.train.batch_size, job_spec.train.seed)):
        if i == steps:
            break
        ref.train_batch(real, y)
    return judge.judge_generator(ref.netG)


@pytest.mark.parametrize("job", _subset(SUBMITTED, ("cifar_dcgan",)))
def test_the_job_submitted_to_two_ray_workers_learns_mnist_digits(
    job: str, judge: Judge, ceiling: float, ray_cluster: None, mnist_folder: Path, tmp_path: Path
) -> None:
    from ganops import jobdir
    from ganops.nets import build_generator
    from tests.conftest import run

    train: Digits = mnist()[0]
    steps = JOB_STEPS[job]
    per_epoch = len(train) // runs.BATCH
    epochs = -(-steps // per_epoch)
    data = (
        # 32 px RGB jobs read the digits through the folder reader, as their real data path would.
        ["spec.data.dataset=folder", f"spec.data.root={mnist_folder}", "spec.data.image_size=32",
         "spec.data.channels=3"]
        if runs.image_shape(runs.load_spec(job).spec) == (3, 32, 32)
        else [f"spec.data.limit={len(train)}"]
    )  # fmt: skip
    sets = [*data, f"spec.train.epochs={epochs}", f"spec.checkpoint.every_epochs={epochs}", "spec.samples.num=16",
            "spec.scaling.num_workers=2", f"spec.storage={tmp_path}", "spec.train.log_every_steps=50",
            # The 32 px jobs score FID by default: 10,000 samples per evaluation are not this test's.
            "spec.eval.every_epochs=null", "spec.checkpoint.keep_best=null"]  # fmt: skip
    job_obj = runs.load_spec(job, *sets)
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
    check(f"{job} (ganops submit, 2 workers)", done, judge.judge_generator(g), _plain_reference(spec, done, judge),
          seconds, ceiling, conditional=spec.model.conditional)  # fmt: skip
