"""The GANJob spec as pydantic models: the one definition the CLI, the workers and the
Kubernetes CRD are built from.

Every model forbids unknown keys (a typo must not silently fall back to a default), and
constraints live on the fields so that errors name the exact path
(``spec.train.lr: must be > 0``).
"""

from __future__ import annotations

import math
import os
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ganops.errors import FieldValueError, clip, short

API_VERSION = "ganops.io/v1alpha1"
KIND = "GANJob"

# Names of the registries the workers build from. Kept here (not imported from the torch
# side) so that validating a spec never imports torch; tests check the two agree.
ARCHS = ("mlp", "dcgan", "deep", "resnet")
# The square sizes each conv arch builds nets for (None: any); equal to ganops.nets' own
# (a test checks), here so that the pre-flight check imports no torch.
ARCH_RESOLUTIONS: dict[str, tuple[int, ...] | None] = {
    "mlp": None,
    "dcgan": (28, 32, 64),
    "deep": (28, 32, 64),
    "resnet": (28, 32, 64),
}
LOSSES = ("bce", "minimax", "hinge", "wgan_gp", "lsgan")
DATASETS = ("mnist", "fashion_mnist", "cifar10", "svhn", "folder", "fake", "shards")
OPTIMIZERS = ("adam", "rmsprop")

# metadata.name becomes a directory, an MLflow tag and a Kubernetes object name, so it
# follows the strictest of those: an RFC 1123 label. Matched with fullmatch: `$` would
# also match before a final newline.
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

# torch.manual_seed takes [-2**63, 2**64 - 1] and numpy's SeedSequence any integer >= 0;
# the seed also feeds torch generators as seed + epoch. The bound is JSON's largest exact
# integer (2**53 - 1): Kubernetes reads a CRD's `maximum` as a float, and 2**63 - 1 came
# back from the API server as -2**63, which refused every seed.
MAX_SEED = 2**53 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]

# Longest path or URI accepted (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096


def _path_string(v: str) -> str:
    # Checked as a string, before anything touches the file system: os.stat and friends
    # raise ValueError (a traceback) on a NUL byte, and a control character is never meant.
    bad = next((c for c in v if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        what = "a NUL byte" if bad == "\0" else f"the control character {bad!r}"
        raise ValueError(f"must not contain {what}")
    return v


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


# A local path or a URI (s3://..., sqlite:///...). Empty is left to each field: `--set
# spec.data.root=` clears an optional one.
PathStr = Annotated[str, Field(max_length=MAX_PATH_CHARS), AfterValidator(_path_string)]
RequiredPath = Annotated[PathStr, AfterValidator(_not_blank)]

# S3's bucket naming rules: 3-63 lowercase letters, digits, dots and hyphens, a letter or digit
# at each end.
S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# The kernel's trees: reading a folder under /proc or /sys fails at random (EINVAL) or takes
# minutes, and writing there is never meant. /dev/shm is a tmpfs users keep data in.
SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def _not_the_root(v: str) -> str:
    # The whole file system is no dataset: a folder reader walked all of it (51 s) and took
    # whatever images it met.
    if v.strip() and "://" not in v and os.path.normpath(os.path.abspath(os.path.expanduser(v))) == "/":
        raise ValueError("is the file system's root: name the folder that holds the dataset")
    return v


def _location(v: str) -> str:
    """A local path or s3://BUCKET[/KEY], parsed once, here: what storage, data and weights
    fields accept. Empty is left to each field (`--set spec.data.root=` clears it)."""
    if not v.strip():
        return v
    scheme, sep, rest = v.partition("://")
    if sep:
        if scheme != "s3":
            raise ValueError(f"unsupported scheme in {short(v)} (use a local path or s3://BUCKET/PREFIX)")
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise ValueError(f"an s3:// URI needs a bucket: s3://BUCKET/PREFIX (got {short(v)})")
        if not S3_BUCKET.fullmatch(bucket):
            raise ValueError(
                f"{short(bucket)} is not an S3 bucket name (3-63 lowercase letters, digits, dots and "
                "hyphens, starting and ending with a letter or digit)"
            )
        return v
    where = os.path.normpath(os.path.abspath(os.path.expanduser(v)))
    for top in SYSTEM_DIRS:
        inside = where == top or where.startswith(top + "/")
        if inside and not (where == "/dev/shm" or where.startswith("/dev/shm/")):
            raise ValueError(f"{short(v)} is under {top}, the kernel's: not a place for data, weights or runs")
    return v


Location = Annotated[PathStr, AfterValidator(_location)]
RequiredLocation = Annotated[RequiredPath, AfterValidator(_location)]

# MLflow's tracking stores: its REST server, Databricks, and SQLAlchemy databases (a dialect,
# optionally +driver); a path or file:// is its file store.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")


def _tracking_uri(v: str) -> str:
    scheme, sep, _ = v.partition("://")
    if sep and scheme.split("+", 1)[0].lower() not in TRACKING_SCHEMES:
        raise ValueError(
            f"unsupported scheme in {short(v)} (MLflow tracking: http(s)://HOST:PORT, sqlite:///PATH, "
            "postgresql://, mysql://, mssql://, databricks://)"
        )
    return v


TrackingUri = Annotated[PathStr, AfterValidator(_tracking_uri)]


class _Strict(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `nan` must be refused here, not train NaNs.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True, allow_inf_nan=False
    )


# Kubernetes' label names and values (apimachinery validation.IsQualifiedName / IsValidLabelValue).
_LABEL_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Kubernetes' int32 fields (activeDeadlineSeconds of a RayJob, ttlSecondsAfterFinished).
INT32_MAX = 2**31 - 1


class Metadata(_Strict):
    name: str = Field(max_length=63)
    """Job name: the storage directory, the MLflow run name and the Kubernetes object name."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels, copied to MLflow tags and Kubernetes labels (so Kubernetes' rules: a key is an
    optional DNS-subdomain prefix and '/', then a name of at most 63 letters, digits, '-',
    '_' and '.'; a value is such a name or empty)."""

    @field_validator("labels")
    @classmethod
    def _k8s_labels(cls, v: dict[str, str]) -> dict[str, str]:
        # Checked here, not by the API server when the operator creates the RayJob: the
        # GANJob would be accepted and then fail, and a local run would tag MLflow with them.
        for key, value in v.items():
            prefix, _, name = key.rpartition("/")
            if (prefix and (len(prefix) > 253 or not _SUBDOMAIN_RE.fullmatch(prefix))) or not _LABEL_RE.fullmatch(name):
                raise ValueError(
                    f"label key {short(key)} is not a Kubernetes label key (an optional DNS-subdomain prefix and "
                    "'/', then at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric)"
                )
            if not isinstance(value, str) or (value and not _LABEL_RE.fullmatch(value)):
                raise ValueError(
                    f"label {short(key)}: value {short(value)} is not a Kubernetes label value (at most 63 "
                    "letters, digits, '-', '_' or '.', starting and ending alphanumeric, or empty)"
                )
        return v

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError(
                "must be lowercase letters, digits and '-', start and end with a letter or digit "
                "(it names a directory and a Kubernetes object)"
            )
        return v


# The fake dataset's defaults (ganops.data.fake uses these) and the most memory it may take.
FAKE_IMAGE_SIZE = 32
FAKE_NUM_IMAGES = 2048
FAKE_CHANNELS = 3
FAKE_MAX_BYTES = 1 << 30
# Far beyond any GAN here, but small enough that a typo cannot ask for terabytes.
MAX_IMAGE_SIZE = 4096
MAX_CLASSES = 100_000


class DataSpec(_Strict):
    dataset: Literal["mnist", "fashion_mnist", "cifar10", "svhn", "folder", "fake", "shards"]
    """Which reader to use; `shards`: a pack from `ganops data pack`, streamed through Ray Data."""
    root: Annotated[Location, AfterValidator(_not_the_root)] | None = None
    """Directory holding the dataset's official files, or the pack (required for all but `fake`)."""
    split: Literal["train", "test"] = "train"
    """Which official split to read."""
    download: bool = False
    """Fetch the official files into `root` when they are missing (needs internet)."""
    image_size: Annotated[int, Field(gt=0, le=MAX_IMAGE_SIZE)] | None = None
    """Resize folder images to this square size (folder only; others have a fixed size)."""
    channels: Literal[1, 3] | None = None
    """1 (grey) or 3 (RGB) for folder and fake data; fixed for the named datasets."""
    limit: PositiveInt | None = None
    """Use only the first N images (quick runs, smoke tests)."""
    num_classes: Annotated[int, Field(gt=0, le=MAX_CLASSES)] | None = None
    """Classes of the fake dataset (others know their own)."""

    @model_validator(mode="after")
    def _root_needed(self) -> DataSpec:
        if self.dataset != "fake" and not self.root:
            raise FieldValueError("root", f"required for dataset '{self.dataset}' (the directory holding its files)")
        if self.dataset not in ("folder", "fake") and self.image_size is not None:
            raise FieldValueError(
                "image_size", f"only for 'folder' and 'fake' datasets ('{self.dataset}' has a fixed size)"
            )
        if self.dataset not in ("folder", "fake") and self.channels is not None:
            raise FieldValueError(
                "channels", f"only for 'folder' and 'fake' datasets ('{self.dataset}' has fixed channels)"
            )
        if self.dataset == "fake":
            self._fake_fits()
        if self.dataset == "shards" and self.download:
            raise FieldValueError("download", "a pack is made with `ganops data pack`, not downloaded; set false")
        return self

    def _fake_fits(self) -> None:
        # The fake dataset is made in memory on every worker: `limit: 10**12` would ask
        # for terabytes. Bound its size up front rather than fail in numpy.
        n = self.limit if self.limit is not None else FAKE_NUM_IMAGES
        size = self.image_size or FAKE_IMAGE_SIZE
        nbytes = n * (self.channels or FAKE_CHANNELS) * size * size
        if nbytes > FAKE_MAX_BYTES:
            field = "limit" if self.limit is not None else "image_size"
            raise FieldValueError(
                field,
                f"the fake dataset would be {n} images of {size}x{size} ({nbytes / 2**30:.3g} GiB); "
                f"it is made in memory and may be at most {FAKE_MAX_BYTES // 2**30} GiB",
            )


class ModelSpec(_Strict):
    arch: Literal["mlp", "dcgan", "deep", "resnet"] = "dcgan"
    """Network family: fully-connected `mlp`, `dcgan`, the deeper CNN `deep`, or `resnet`: the
    SNGAN ResNets as Mimicry builds them (spectral norm on every D layer; when conditional,
    conditional BatchNorm in G and a projection D, BigGAN style)."""
    latent_dim: PositiveInt = 100
    """Size of the noise vector z."""
    conditional: bool = False
    """Class-conditional G and D (needs a labelled dataset): G joins a class embedding to z
    (resnet: conditional BatchNorm in every block), D as `d_conditioning` says."""
    embed_dim: PositiveInt | None = None
    """Class embedding size for conditional models (default: 50)."""
    d_conditioning: Literal["projection", "concat"] = "projection"
    """How D sees the class: projection discriminator or a concatenated label map."""
    g_widths: list[PositiveInt] | None = None
    """Generator layer widths, widest first (default: the arch's, per resolution)."""
    d_widths: list[PositiveInt] | None = None
    """Discriminator layer widths, narrowest first (default: the arch's, per resolution)."""
    kernel_size: PositiveInt | None = None
    """Convolution kernel size of the conv archs (default: 5; resnet 3)."""
    g_activation: Literal["relu", "leaky_relu"] | None = None
    """Generator hidden activation (default: the arch's)."""
    d_norm: Literal["batch", "layer", "none"] | None = None
    """Normalisation in D (default: the arch's: `batch` for dcgan at 32 and 64 px, else `none`).
    `layer` normalises each sample alone; wgan_gp needs `layer` or `none`."""
    d_dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Dropout after each D block (default: the arch's)."""
    g_dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Dropout in G (the deep arch uses it; default: the arch's)."""
    init: Literal["dcgan", "xavier", "default"] | None = None
    """`dcgan`: weights from N(0, 0.02), BatchNorm scale from N(1, 0.02); `xavier`: Glorot
    uniform as the SNGAN code (gain sqrt 2 in residual branches); `default`: PyTorch's
    (default: the arch's: resnet `xavier`, the others `dcgan`)."""
    d_spectral_norm: bool | None = None
    """Spectral normalisation of every D layer (Miyato et al. 2018; default: the arch's:
    on for resnet, off for the others)."""


class TrainSpec(_Strict):
    epochs: PositiveInt = 25
    """Epochs to train in total (a resumed job trains up to this count)."""
    batch_size: PositiveInt = 128
    """Global batch: each of N workers gets batch_size / N."""
    loss: Literal["bce", "minimax", "hinge", "wgan_gp", "lsgan"] = "bce"
    """GAN objective: non-saturating `bce`, original `minimax`, `hinge`, `wgan_gp`, `lsgan`."""
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """One-sided label smoothing: real targets become 1 - s (bce and minimax)."""
    gp_weight: Annotated[float, Field(ge=0)] = 10.0
    """Gradient-penalty weight for wgan_gp."""
    optimizer: Literal["adam", "rmsprop"] = "adam"
    """Optimizer for both nets."""
    lr: PositiveFloat = 2e-4
    """Learning rate for both nets unless `g_lr` / `d_lr` are set."""
    g_lr: PositiveFloat | None = None
    """G's learning rate, when it differs from `lr` (e.g. the TTUR of Heusel et al.)."""
    d_lr: PositiveFloat | None = None
    """D's learning rate, when it differs from `lr`."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.999)
    """Adam betas."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """L2 penalty in both optimizers (PyTorch's weight_decay)."""
    eps: Annotated[float, Field(gt=0, lt=1)] = 1e-8
    """Term added to the optimizer's denominator (PyTorch's default; Keras uses 1e-7)."""
    rmsprop_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.99
    """RMSprop's decay of the squared-gradient average (Keras calls it rho and defaults to 0.9; PyTorch to 0.99)."""
    clip_grad_value: PositiveFloat | None = None
    """Clip each gradient element to [-v, v] before a step (Keras' clipvalue)."""
    clip_grad_norm: PositiveFloat | None = None
    """Clip the gradient norm of each net to this value before a step."""
    d_steps: PositiveInt = 1
    """Discriminator steps per generator step (each on its own real batch)."""
    r1_gamma: Annotated[float, Field(ge=0)] = 0.0
    """R1 (Mescheder et al. 2018): D's loss gains gamma / 2 * E ||grad D(x)||^2 at the real
    images (before augmentation, as StyleGAN2-ADA). 0: off. StyleGAN2-ADA's CIFAR-10 setting: 0.01."""
    r2_gamma: Annotated[float, Field(ge=0)] = 0.0
    """R2: the same penalty at the fake images of the D step. 0: off."""
    reg_interval: PositiveInt = 16
    """Lazy regularisation (StyleGAN2): R1/R2 as their own D update every N D steps, scaled by
    N, with D's learning rate and Adam betas (RMSprop's alpha) rescaled by c = N / (N + 1)
    (lr * c, beta ** c). 1: the penalty joins every D step's loss, nothing rescaled."""
    lr_decay: Literal["none", "linear"] = "none"
    """`linear`: both learning rates fall linearly toward 0 over the run's G steps, as in
    Mimicry's SNGAN recipe: lr * (1 - k / K) for G step k of K = epochs * batches per epoch /
    d_steps (the D steps before G step k use the same rate). A resumed run continues the
    schedule; a time budget does not shorten it."""
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Keep an exponential moving average of G's weights with this decay (e.g. 0.999)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 where the training device runs bfloat16 natively (CUDA GPUs with bf16;
    CPUs with AVX512-BF16 or AMX), else fp32; a resumed job keeps what its first attempt
    chose. `bf16`: forward passes under bfloat16 autocast (weights, optimizer state and
    checkpoints stay float32), 1.45x the speed of fp32 on a CPU with AMX, several times
    slower than fp32 where bfloat16 is emulated (a warning says so). `fp32`: float32 only.
    float16 is not offered because it needs loss scaling."""
    seed: Seed = 0
    """Seed for weights, data order and noise; each rank derives its own (0 to 2**53 - 1)."""
    log_every_steps: PositiveInt = 50
    """Report progress and metrics every N steps (rank 0, batched)."""
    on_divergence: Literal["stop", "rollback"] = "stop"
    """A non-finite loss or weight (checked every 10 steps and before every checkpoint):
    `stop` ends the job at once with an error naming the step and the loss (no checkpoint
    is written from the diverged state); `rollback` reloads the newest complete checkpoint
    and continues with both learning rates times `rollback_lr_factor`, at most
    `max_rollbacks` times."""
    rollback_lr_factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """What each rollback multiplies the learning rates by (kept in later checkpoints)."""
    max_rollbacks: Annotated[int, Field(ge=1, le=100)] = 3
    """Rollbacks allowed in one run before a divergence stops it."""
    fid_patience: Annotated[int, Field(ge=1, le=1000)] = 3
    """Evaluations in a row with an FID worse than the best before the run counts as
    regressing (the `fid_regression` health signal)."""
    max_minutes: Annotated[float, Field(gt=0, le=525600)] | None = None
    """A time budget: stop after this many minutes of training in one submission (checked
    every 10 steps, start-up not counted), as a stop_on signal stops: a checkpoint where it
    stopped, the GIF and the generator logged. Submitting again trains on from there, with a
    fresh budget. Unset: train to `epochs`."""
    stop_on: list[Literal["fid_regression", "d_overpowers_g"]] = Field(default_factory=list, max_length=2)
    """Health signals that end training early (a final checkpoint is written; with
    `checkpoint.keep_best: fid` the best one stays in best/): `fid_regression`,
    `d_overpowers_g`. Either is always reported, as the MLflow tag `ganops.health`."""

    @model_validator(mode="after")
    def _clip_once(self) -> TrainSpec:
        if self.clip_grad_value is not None and self.clip_grad_norm is not None:
            raise FieldValueError("clip_grad_value", "set at most one of clip_grad_value and clip_grad_norm")
        return self

    @property
    def lr_g(self) -> float:
        return self.g_lr if self.g_lr is not None else self.lr

    @property
    def lr_d(self) -> float:
        return self.d_lr if self.d_lr is not None else self.lr


class ScalingSpec(_Strict):
    num_workers: PositiveInt = 2
    """Data-parallel training workers (one DDP rank each)."""
    use_gpu: bool = False
    """One GPU per worker."""
    resources_per_worker: dict[str, Annotated[float, Field(ge=0)]] | None = None
    """Ray resources each worker reserves, e.g. {CPU: 4, GPU: 1} (default: an even share of the CPUs)."""
    max_failures: Annotated[int, Field(ge=0, le=1000)] = 3
    """Worker-group failures survived (a worker process or node lost: OOM kill, preemption,
    node drain): Ray Train restarts every worker and they resume from the newest complete
    checkpoint. 0: the first failure fails the job. Errors in the job itself (bad data, a
    diverged run) are not retried."""
    sync_batchnorm: bool = False
    """Normalise G's and D's BatchNorm layers over the global batch instead of each worker's
    share, so the same global batch trains the same on 1 or N workers. Costs one all-reduce
    per BatchNorm layer per forward and backward; off, each worker's share must be large
    enough for steady statistics (tens of images, as the tutorials' single-GPU batches)."""


class CheckpointSpec(_Strict):
    every_epochs: PositiveInt = 1
    """Write a checkpoint every N epochs (and always at the end)."""
    every_steps: PositiveInt | None = None
    """Also write one every N steps, mid-epoch too: a lost worker or preempted node then
    costs at most N steps (a mid-epoch checkpoint resumes exactly, as Ctrl-C's does)."""
    every_minutes: Annotated[float, Field(gt=0, le=10080)] | None = None
    """Also write one when this many minutes have passed since the last (checked every 10
    steps): bounds the work lost in wall time, whatever a step costs."""
    keep: PositiveInt = 3
    """Keep the newest N checkpoints."""
    keep_best: Literal["fid"] | None = None
    """Also keep the checkpoint with the best score of this metric (needs `eval`)."""


class SamplesSpec(_Strict):
    every_epochs: PositiveInt = 1
    """Write a grid of G(fixed noise) every N epochs."""
    num: Annotated[int, Field(ge=1, le=1024)] = 64
    """Images in each grid (conditional models: one row per class)."""
    gif: bool = True
    """Assemble the grids into an animated GIF at the end."""


class TrackingSpec(_Strict):
    uri: TrackingUri | None = None
    """MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a SQLite store under the storage root)."""
    experiment: str | None = None
    """MLflow experiment (default: 'ganops')."""
    register_as: str | None = None
    """Register the final generator under this model name."""


METRICS = ("fid", "kid", "is", "pr")


def check_metrics(v: list[str] | None) -> list[str] | None:
    """A metrics list names at least one metric, and each once."""
    if v is not None and not v:
        raise ValueError("name at least one of " + ", ".join(METRICS))
    if v is not None and len(set(v)) != len(v):
        raise ValueError("lists a metric twice")
    return v


AUGMENT_POLICIES = ("color", "translation", "cutout")


class AugmentSpec(_Strict):
    """Differentiable augmentation of everything D sees (real and fake, in the D and the G
    step): DiffAugment's policies (Zhao et al. 2020), each applied to a sample with
    probability `p`, and ADA's controller of p (Karras et al. 2020)."""

    policy: list[Literal["color", "translation", "cutout"]] = Field(default_factory=list)
    """DiffAugment policies, any combination, applied in the order listed: `color`
    (brightness, saturation, contrast), `translation` (by up to 1/8 of the size, zero fill),
    `cutout` (a half-size square). Empty: no augmentation."""
    p: Annotated[float, Field(ge=0, le=1)] | None = None
    """Probability that each policy transforms a sample (default: 1, DiffAugment's; with
    `ada_target`, where p starts: 0 as in StyleGAN2-ADA)."""
    ada_target: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Adapt p (ADA): every `ada_interval` D steps r_t = E[sign D(real)] over them and the
    workers, and p moves by sign(r_t - target) * batch_size * ada_interval / (ada_kimg * 1000),
    never below 0. StyleGAN2-ADA uses 0.6. Unset: p stays fixed."""
    ada_interval: PositiveInt = 4
    """D steps between two adjustments of p."""
    ada_kimg: PositiveFloat = 500
    """Thousands of real images over which p can move by 1 (StyleGAN2-ADA: 500)."""

    @model_validator(mode="after")
    def _ada_needs_policy(self) -> AugmentSpec:
        if self.ada_target is not None and not self.policy:
            raise FieldValueError("ada_target", "adapts the probability of `policy`, which is empty")
        if len(set(self.policy)) != len(self.policy):
            raise FieldValueError("policy", f"lists a policy twice: {self.policy}")
        return self

    @property
    def start_p(self) -> float:
        if self.p is not None:
            return self.p
        return 0.0 if self.ada_target is not None else 1.0


class EvalSpec(_Strict):
    every_epochs: PositiveInt | None = None
    """Score G every N epochs and at the end (unset, with `every_steps` unset too: no
    evaluation during training)."""
    every_steps: PositiveInt | None = None
    """Score G every N steps (batches; with `train.d_steps` k, every N/k G steps), mid-epoch
    too, and at the end: for long epochs, or a schedule in steps as the papers give it
    (Mimicry: FID every 5,000 G steps). May be combined with `every_epochs`."""
    num_samples: Annotated[int, Field(ge=2)] = 10000
    """Generated (and reference) images per evaluation; the literature uses 50000 for FID."""
    metrics: list[Literal["fid", "kid", "is", "pr"]] = Field(default_factory=lambda: list(METRICS))
    """Which scores: Fréchet and kernel Inception distance, Inception score, precision/recall."""
    inception_weights: Location | None = None
    """The FID Inception-v3 weights (pt_inception-2015-12-05), a local path or s3:// URI (unset: the
    published file, downloaded once per machine into $GANOPS_CACHE)."""
    inception_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    """Expected sha256 of `inception_weights` (default: the pinned pytorch-fid file's); other
    weights give scores that cannot be compared with anyone else's."""
    batch_size: PositiveInt = 100
    """Images per Inception forward pass."""
    reference_split: Literal["train", "test"] | None = None
    """Split of the real data the scores compare against (default: `data.split`)."""

    _metrics = field_validator("metrics")(classmethod(lambda _cls, v: check_metrics(v)))

    @property
    def enabled(self) -> bool:
        """Whether G is scored during training."""
        return self.every_epochs is not None or self.every_steps is not None


# The image size of each dataset with a fixed one; `fake` defaults to 32 (ganops.data.fake).
FIXED_IMAGE_SIZES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn": 32}


def static_image_size(data: DataSpec) -> int | None:
    """The square image size the spec alone implies (None: known only from the files)."""
    if data.dataset in FIXED_IMAGE_SIZES:
        return FIXED_IMAGE_SIZES[data.dataset]
    if data.dataset == "fake":
        return data.image_size or FAKE_IMAGE_SIZE
    return data.image_size


def batchnorm_critic(model: ModelSpec, image_size: int | None) -> bool:
    """Whether D gets BatchNorm: asked for, or the arch's default at this size.

    Mirrors the nets' defaults (dcgan: BatchNorm at 32 and 64 px; tests/test_nets.py checks
    the two agree) so that validation needs no torch. An unknown size counts as no.
    """
    if model.d_norm is not None:
        return model.d_norm == "batch"
    return model.arch == "dcgan" and image_size is not None and image_size != 28


def model_for_resume(model: dict[str, Any]) -> dict[str, Any]:
    """A dumped `spec.model` with the arch defaults that decide the weights filled in, so a
    checkpoint written before a field became arch-dependent (kernel_size 5, init dcgan, no
    d_spectral_norm) still matches the same job spec now."""
    resnet = model.get("arch") == "resnet"  # tests/test_spec.py checks these against the nets
    arch_default = {
        "kernel_size": 3 if resnet else 5,
        "init": "xavier" if resnet else "dcgan",
        "d_spectral_norm": resnet,
    }
    return {**model, **{k: v for k, v in arch_default.items() if model.get(k) is None}}


def check_model(model: ModelSpec) -> None:
    """What the nets refuse, refused at validation (no torch): resnet has no normalisation
    or dropout layers in D and no dropout in G, and keeps sizes with odd kernels only."""
    if model.arch != "resnet":
        return
    for field, value in (("d_norm", model.d_norm), ("d_dropout", model.d_dropout), ("g_dropout", model.g_dropout)):
        if value not in (None, "none", 0, 0.0):
            raise FieldValueError(
                f"model.{field}", f"resnet has no such layers (its D is spectrally normalised), got {value!r}"
            )
    if model.kernel_size is not None and model.kernel_size % 2 == 0:
        raise FieldValueError(
            "model.kernel_size", f"resnet's convs keep the size with odd kernels, got {model.kernel_size}"
        )


# Kubernetes resource quantities, kept apart because a CPU quantity in a memory field (or
# "16Gi" for CPU) passes a generic pattern and only fails when the operator makes the pod.
_CPU_RE = re.compile(r"([0-9]+(\.[0-9]+)?|\.[0-9]+)m?")  # "2", "1.5", "500m"
_MEMORY_RE = re.compile(r"[0-9]+(\.[0-9]+)?(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")  # "16Gi", "512Mi", "1000000"
_MAX_QUANTITY_CHARS = 24


def _quantity_text(v: Any) -> Any:
    """YAML reads `4` and `1.5` as numbers; a quantity is a string to Kubernetes (and the CRD)."""
    if isinstance(v, bool):
        return v  # left for the string check to refuse: `true` is not an amount
    if isinstance(v, int):
        # A huge int must not reach float formatting (OverflowError) nor str() (4,300-digit limit).
        return str(v) if v.bit_length() <= 64 else f"<a {v.bit_length()}-bit integer>"
    if isinstance(v, float):
        if not math.isfinite(v):
            return repr(v)
        return f"{v:.6f}".rstrip("0").rstrip(".") if abs(v) < 1e15 else repr(v)
    return v


def _quantity_check(kind: str, pattern: re.Pattern[str], example: str) -> Any:
    def check(v: str) -> str:
        if len(v) > _MAX_QUANTITY_CHARS or not pattern.fullmatch(v):
            raise ValueError(f"{clip(repr(v))} is not a {kind} quantity (e.g. {example})")
        if not any(c in "123456789" for c in v.rstrip("kMGTPEimn")):
            raise ValueError(f"{clip(repr(v))} must be more than zero")
        return v

    return AfterValidator(check)


CpuQuantity = Annotated[str, BeforeValidator(_quantity_text), _quantity_check("CPU", _CPU_RE, "2, 500m or 1.5")]
MemoryQuantity = Annotated[str, BeforeValidator(_quantity_text), _quantity_check("memory", _MEMORY_RE, "16Gi or 512Mi")]


class Toleration(_Strict):
    """A Kubernetes toleration (the pod field of the same name)."""

    key: str | None = None
    """The taint key to tolerate (empty with operator Exists: every taint)."""
    operator: Literal["Equal", "Exists"] | None = None
    """Equal (key and value match) or Exists (the key alone); Kubernetes' default is Equal."""
    value: str | None = None
    """The taint value to match (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect to tolerate (empty: every effect)."""
    toleration_seconds: int | None = None
    """NoExecute only: how long the pod stays on a node once tainted (empty: forever)."""


class ClusterSpec(_Strict):
    """Where the job's pods run on Kubernetes (`--target k8s`); ignored by the other targets."""

    image: str | None = None
    """Container image of the head and worker pods (default: the operator's)."""
    service_account: str | None = None
    """ServiceAccount of the pods, e.g. one bound to a cloud role for S3 (default: the operator's)."""
    secret: str | None = None
    """Secret whose keys become the pods' environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    MLFLOW_TRACKING_TOKEN... (default: the operator's). Credentials never go in the spec."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must match, e.g. {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations of the pods, e.g. for tainted GPU nodes."""
    worker_cpu: CpuQuantity | None = None
    """CPU of each worker pod (default: the operator's; Ray reserves it for the worker's torch threads)."""
    worker_memory: MemoryQuantity | None = None
    """Memory of each worker pod (default: the operator's)."""
    head_cpu: CpuQuantity | None = None
    """CPU of the head pod, which runs the driver and no training worker (default: the operator's)."""
    head_memory: MemoryQuantity | None = None
    """Memory of the head pod (default: the operator's)."""
    gpu_resource: str | None = None
    """Extended resource name of a GPU on the nodes, with scaling.use_gpu (default: the
    operator's, nvidia.com/gpu)."""
    active_deadline_seconds: Annotated[int, Field(gt=0, le=INT32_MAX)] | None = None
    """Fail the job after this many seconds (the RayJob's activeDeadlineSeconds)."""
    backoff_limit: Annotated[int, Field(ge=0, le=100)] | None = None
    """Retries of a failed job on a fresh Ray cluster (the RayJob's backoffLimit); each resumes
    from the checkpoints in storage (unset: the operator's default, the chart's `jobs.backoffLimit`, 2)."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=INT32_MAX)] = 600
    """Delete the Ray cluster this long after the job ends (its logs go with it)."""


class GANJobSpec(_Strict):
    data: DataSpec
    """The images to learn: dataset, where its files are, split, size."""
    model: ModelSpec = Field(default_factory=ModelSpec)
    """G and D: architecture, widths, latent size, conditioning, normalisation."""
    train: TrainSpec = Field(default_factory=TrainSpec)
    """The objective, optimizers, batch, epochs, seed."""
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    """DiffAugment / ADA: differentiable augmentation of what D sees."""
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    """Data-parallel workers and what each reserves."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """How often to checkpoint and how many to keep."""
    samples: SamplesSpec = Field(default_factory=SamplesSpec)
    """The per-epoch sample grids and the training GIF."""
    storage: Location = "./runs"
    """Local directory or s3://bucket/prefix; the job writes under <storage>/<metadata.name>/."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """The MLflow server, experiment and model registry name."""
    eval: EvalSpec = Field(default_factory=EvalSpec)
    """FID / KID / IS / precision-recall during training."""
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    """Pod sizes, image and placement on Kubernetes (unset: the operator's defaults)."""

    @model_validator(mode="after")
    def _cross_field(self) -> GANJobSpec:
        workers = self.scaling.num_workers
        if self.train.batch_size % workers:
            raise FieldValueError(
                "train.batch_size",
                f"{self.train.batch_size} is not divisible by scaling.num_workers={workers} "
                "(the batch is global: each worker gets batch_size / num_workers)",
            )
        check_model(self.model)
        if self.train.loss == "wgan_gp" and batchnorm_critic(self.model, static_image_size(self.data)):
            raise FieldValueError(
                "model.d_norm",
                "wgan_gp cannot train a BatchNorm critic (the gradient penalty is per sample, "
                "BatchNorm mixes the samples of a batch)"
                + ("" if self.model.d_norm == "batch" else f" and '{self.model.arch}' uses BatchNorm at this size")
                + "; set spec.model.d_norm: layer (the WGAN-GP paper's choice) or none",
            )
        if self.checkpoint.keep_best is not None:
            metric = self.checkpoint.keep_best
            if not self.eval.enabled or metric not in self.eval.metrics:
                raise FieldValueError(
                    "checkpoint.keep_best",
                    f"'{metric}' needs eval.every_epochs or eval.every_steps, and '{metric}' in eval.metrics",
                )
        if "fid_regression" in self.train.stop_on and (not self.eval.enabled or "fid" not in self.eval.metrics):
            raise FieldValueError(
                "train.stop_on",
                "'fid_regression' needs eval.every_epochs or eval.every_steps, and 'fid' in eval.metrics",
            )
        if "d_overpowers_g" in self.train.stop_on and self.train.loss == "wgan_gp":
            raise FieldValueError(
                "train.stop_on", "'d_overpowers_g' is not watched for wgan_gp (its critic has no floor)"
            )
        return self


class _Resource(_Strict):
    """What the ganops kinds (GANJob, GANGeneration) share besides their fields (which
    each declares itself, so that apiVersion and kind come first when dumped)."""

    @property
    def name(self) -> str:
        metadata: Metadata = getattr(self, "metadata")  # noqa: B009 - declared by each kind
        return metadata.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class GANJob(_Resource):
    apiVersion: Literal["ganops.io/v1alpha1"] = API_VERSION  # noqa: N815 - Kubernetes field name
    kind: Literal["GANJob"] = KIND
    metadata: Metadata
    spec: GANJobSpec
