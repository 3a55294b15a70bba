"""The network zoo: shapes, defaults from the tutorials, conditioning, init, every loss."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ganops.errors import UserError
from ganops.losses import LOSSES, gradient_penalty, interpolates
from ganops.nets import ARCHS, build_discriminator, build_generator, default_widths
from ganops.spec import models as spec_models
from ganops.spec.models import ModelSpec
from tests.helpers import JOBS

N = 4  # > 1: BatchNorm needs a batch in train mode
NUM_CLASSES = 10

# Every supported (arch, image shape) the brief names; mlp takes any size.
NETS = [
    ("mlp", (1, 28, 28)),
    ("mlp", (3, 32, 32)),
    ("dcgan", (1, 28, 28)),
    ("dcgan", (3, 32, 32)),
    ("dcgan", (3, 64, 64)),
    ("deep", (1, 28, 28)),
    ("deep", (3, 32, 32)),
    ("resnet", (1, 28, 28)),
    ("resnet", (3, 32, 32)),  # 64 px: test_resnet_at_28_and_64_px (12 M + 10 M parameters)
]
CONDITIONING: dict[str, dict[str, Any]] = {
    "unconditional": {},
    "projection": {"conditional": True, "d_conditioning": "projection"},
    "concat": {"conditional": True, "d_conditioning": "concat"},
}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _nets(arch: str, shape: tuple[int, int, int], **fields: Any) -> tuple[nn.Module, nn.Module]:
    model = ModelSpec(arch=arch, **fields)
    classes = NUM_CLASSES if model.conditional else None
    return build_generator(model, shape, classes), build_discriminator(model, shape, classes)


def _labels(model_fields: dict[str, Any], n: int = N) -> Tensor | None:
    return torch.randint(0, NUM_CLASSES, (n,)) if model_fields.get("conditional") else None


def _output_shapes(net: nn.Module, kinds: tuple[type[nn.Module], ...], *inputs: Tensor) -> list[tuple[int, ...]]:
    """Per-sample output shapes of the layers of the given kinds, in call order."""
    shapes: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
        for m in net.modules()
        if isinstance(m, kinds)
    ]
    with torch.no_grad():
        net(*inputs)
    for h in hooks:
        h.remove()
    return shapes


def _count(net: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


# --- building and shapes ---------------------------------------------------------------


def test_registry_matches_the_arch_names_the_spec_accepts() -> None:
    assert tuple(ARCHS) == spec_models.ARCHS


@pytest.mark.parametrize("cond", CONDITIONING)
@pytest.mark.parametrize(("arch", "shape"), NETS, ids=[f"{a}-{s[0]}x{s[1]}" for a, s in NETS])
def test_every_arch_builds_and_maps_noise_to_images_and_images_to_logits(
    arch: str, shape: tuple[int, int, int], cond: str
) -> None:
    fields = CONDITIONING[cond]
    G, D = _nets(arch, shape, **fields)
    z, y = torch.randn(N, G.latent_dim), _labels(fields)

    x = G(z, y)
    assert x.shape == (N, *shape)
    assert x.min() >= -1 and x.max() <= 1
    logits = D(x, y)
    assert logits.shape == (N,)
    assert torch.isfinite(logits).all()

    G.eval()  # sampling mode: BatchNorm running stats, no dropout
    with torch.no_grad():
        assert G(z, y).shape == (N, *shape)
    assert G.image_shape == shape
    assert G.num_classes == D.num_classes == (NUM_CLASSES if fields else None)


def test_generator_samples_a_single_image_in_eval_mode() -> None:
    G, _ = _nets("mlp", (1, 28, 28))  # BatchNorm1d: the one that fails on N=1 in train mode
    G.eval()
    with torch.no_grad():
        assert G(torch.randn(1, 100)).shape == (1, 1, 28, 28)


def test_mlp_takes_any_image_size() -> None:
    G, D = _nets("mlp", (1, 20, 24), g_widths=[16], d_widths=[16])
    x = G(torch.randn(N, 100))
    assert x.shape == (N, 1, 20, 24)
    assert D(x).shape == (N,)


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
@pytest.mark.parametrize("arch", ["dcgan", "deep"])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_conv_archs_keep_exact_sizes_for_odd_and_even_kernels(arch: str, size: int, kernel_size: int) -> None:
    # Five widths: dcgan gets stride-1 layers before its stride-2 ones at every size.
    G, D = _nets(arch, (3, size, size), kernel_size=kernel_size, g_widths=[16, 16, 8, 8, 4], d_widths=[4, 8, 8])
    x = G(torch.randn(2, 100))
    assert x.shape == (2, 3, size, size)
    assert D(x).shape == (2,)


# --- defaults from the tutorials -------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "size", "g_widths", "d_widths"),
    [
        ("mlp", 28, [256, 512, 1024], [1024, 512, 256]),
        ("mlp", 64, [256, 512, 1024], [1024, 512, 256]),
        ("dcgan", 28, [256, 128, 64], [64, 128]),
        ("dcgan", 32, [512, 256, 128], [64, 128, 256]),
        ("dcgan", 64, [512, 256, 128, 64], [64, 128, 256, 512]),
        ("deep", 28, [256, 128, 64, 32], [64, 128, 256, 512]),
        ("deep", 32, [256, 128, 64, 32], [64, 128, 256, 512]),
    ],
)
def test_default_widths_are_the_tutorials(arch: str, size: int, g_widths: list[int], d_widths: list[int]) -> None:
    assert default_widths(arch, size) == (g_widths, d_widths)


def test_mlp_defaults_are_the_fully_connected_tutorial_net() -> None:
    G, D = _nets("mlp", (1, 28, 28))
    assert [m.out_features for m in G.modules() if isinstance(m, nn.Linear)] == [256, 512, 1024, 784]
    assert [m.out_features for m in D.modules() if isinstance(m, nn.Linear)] == [1024, 512, 256, 1]
    assert _count(G, nn.BatchNorm1d) == 3 and _count(G, nn.LeakyReLU) == 3
    assert [m.p for m in D.modules() if isinstance(m, nn.Dropout)] == [0.3] * 3
    assert _count(D, nn.BatchNorm1d) == 0


# (size, G seed map, G transposed-conv outputs, D conv outputs)
DCGAN_SHAPES = [
    (28, (256, 7, 7), [(128, 7, 7), (64, 14, 14), (1, 28, 28)], [(64, 14, 14), (128, 7, 7)]),
    (32, (512, 4, 4), [(256, 8, 8), (128, 16, 16), (3, 32, 32)], [(64, 16, 16), (128, 8, 8), (256, 4, 4)]),
    (
        64,
        (512, 4, 4),
        [(256, 8, 8), (128, 16, 16), (64, 32, 32), (3, 64, 64)],
        [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)],
    ),
]


@pytest.mark.parametrize(("size", "seed", "g_convs", "d_convs"), DCGAN_SHAPES)
def test_dcgan_defaults_have_the_tutorial_layer_shapes(
    size: int, seed: tuple[int, ...], g_convs: list[tuple[int, ...]], d_convs: list[tuple[int, ...]]
) -> None:
    channels = 1 if size == 28 else 3
    G, D = _nets("dcgan", (channels, size, size))
    G.eval()
    assert _output_shapes(G, (nn.Unflatten,), torch.randn(2, 100)) == [seed]
    assert _output_shapes(G, (nn.ConvTranspose2d,), torch.randn(2, 100)) == g_convs
    assert all(m.kernel_size == (5, 5) for m in G.modules() if isinstance(m, nn.ConvTranspose2d))
    assert _output_shapes(D, (nn.Conv2d,), torch.randn(2, channels, size, size)) == d_convs


def test_dcgan_at_28_is_the_tensorflow_tutorial_net() -> None:
    G, D = _nets("dcgan", (1, 28, 28))
    assert _count(G, nn.LeakyReLU) == 3 and _count(G, nn.ReLU) == 0
    assert _count(D, nn.BatchNorm2d) == 0
    assert [m.p for m in D.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3]


@pytest.mark.parametrize("size", [32, 64])
def test_dcgan_at_32_and_64_normalises_all_but_the_first_d_layer(size: int) -> None:
    G, D = _nets("dcgan", (3, size, size))
    assert _count(G, nn.ReLU) == len(default_widths("dcgan", size)[0]) and _count(G, nn.LeakyReLU) == 0
    convs = _count(D, nn.Conv2d)
    assert _count(D, nn.BatchNorm2d) == convs - 1
    assert _count(D, nn.Dropout) == 0


@pytest.mark.parametrize(("size", "start"), [(28, 7), (32, 8)])
def test_deep_defaults_are_the_atienza_tutorial_net(size: int, start: int) -> None:
    channels = 1 if size == 28 else 3
    G, D = _nets("deep", (channels, size, size))
    G.eval()
    z = torch.randn(2, 100)
    assert _output_shapes(G, (nn.Unflatten,), z) == [(256, start, start)]
    mid, full = 2 * start, 4 * start
    assert _output_shapes(G, (nn.Conv2d,), z) == [
        (128, mid, mid),
        (64, full, full),
        (32, full, full),
        (channels, full, full),
    ]
    assert _count(G, nn.Upsample) == 2 and _count(G, nn.ReLU) == 4
    assert [m.p for m in G.modules() if isinstance(m, nn.Dropout)] == [0.4]

    d_convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.stride[0], m.kernel_size[0]) for m in d_convs] == [
        (64, 2, 5),
        (128, 2, 5),
        (256, 2, 5),
        (512, 1, 5),
    ]
    assert [m.p for m in D.modules() if isinstance(m, nn.Dropout)] == [0.4] * 4
    assert _count(D, nn.BatchNorm2d) == 0


def test_spec_fields_override_the_arch_defaults() -> None:
    G, D = _nets(
        "dcgan",
        (3, 32, 32),
        g_widths=[64, 32, 16],
        d_widths=[8, 16],
        g_activation="leaky_relu",
        d_norm="none",
        d_dropout=0.1,
        kernel_size=3,
    )
    assert [m.out_channels for m in G.modules() if isinstance(m, nn.ConvTranspose2d)] == [32, 16, 3]
    assert [m.out_channels for m in D.modules() if isinstance(m, nn.Conv2d)] == [8, 16]
    assert _count(G, nn.ReLU) == 0 and _count(G, nn.LeakyReLU) == 3
    assert _count(D, nn.BatchNorm2d) == 0
    assert [m.p for m in D.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.1]
    assert all(m.kernel_size == (3, 3) for m in D.modules() if isinstance(m, nn.Conv2d))


# --- init ------------------------------------------------------------------------------


def test_dcgan_init_draws_weights_from_n_0_002_and_bn_scales_around_1() -> None:
    G, D = _nets("dcgan", (3, 64, 64), init="dcgan")
    biggest = max((m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)), key=lambda m: m.weight.numel())
    assert biggest.weight.std().item() == pytest.approx(0.02, abs=0.001)
    assert biggest.weight.mean().item() == pytest.approx(0.0, abs=0.001)
    for net in (G, D):
        scales = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
        assert scales.mean().item() == pytest.approx(1.0, abs=0.01)
        assert 0.01 < scales.std().item() < 0.03  # drawn, not left at exactly 1
        assert all(m.bias.abs().sum() == 0 for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_default_init_leaves_pytorchs_own() -> None:
    G, _ = _nets("dcgan", (3, 64, 64), init="default")
    biggest = max((m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)), key=lambda m: m.weight.numel())
    assert abs(biggest.weight.std().item() - 0.02) > 0.005
    assert all((m.weight == 1).all() for m in G.modules() if isinstance(m, nn.BatchNorm2d))


# --- conditioning ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_conditional_generator_draws_different_images_for_different_labels(arch: str) -> None:
    G, _ = _nets(arch, (1, 28, 28), conditional=True)
    G.eval()
    z = torch.randn(1, G.latent_dim).expand(NUM_CLASSES, -1)
    with torch.no_grad():
        x = G(z, torch.arange(NUM_CLASSES)).flatten(1)
    gaps = torch.cdist(x, x) + torch.eye(NUM_CLASSES)  # ignore each image's distance to itself
    assert gaps.min() > 1e-3


@pytest.mark.parametrize("d_conditioning", ["projection", "concat"])
def test_conditional_discriminator_scores_the_same_image_differently_per_label(d_conditioning: str) -> None:
    _, D = _nets("dcgan", (1, 28, 28), conditional=True, d_conditioning=d_conditioning)
    D.eval()
    x = torch.rand(1, 1, 28, 28).expand(NUM_CLASSES, -1, -1, -1) * 2 - 1
    with torch.no_grad():
        logits = D(x, torch.arange(NUM_CLASSES))
    assert logits.unique().numel() == NUM_CLASSES


@pytest.mark.parametrize("arch", list(ARCHS))
def test_unconditional_nets_have_no_label_parameters_and_ignore_labels(arch: str) -> None:
    # DDP refuses parameters that get no gradient, so none may exist for unused labels.
    G, D = _nets(arch, (1, 28, 28))
    G.eval()
    D.eval()
    assert _count(G, nn.Embedding) == _count(D, nn.Embedding) == 0
    z, y = torch.randn(2, 100), torch.tensor([1, 2])
    with torch.no_grad():
        x = G(z)
        assert torch.equal(G(z, y), x)
        assert torch.equal(D(x, y), D(x))


def test_conditional_generator_requires_labels() -> None:
    G, _ = _nets("dcgan", (1, 28, 28), conditional=True)
    with pytest.raises(ValueError, match="labels"):
        G(torch.randn(N, 100))


def test_conditional_discriminator_requires_labels() -> None:
    _, D = _nets("deep", (1, 28, 28), conditional=True, d_conditioning="concat")
    with pytest.raises(ValueError, match="labels"):
        D(torch.zeros(N, 1, 28, 28))


def test_labels_must_match_the_batch() -> None:
    G, _ = _nets("mlp", (1, 28, 28), conditional=True)
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        G(torch.randn(N, 100), torch.zeros(3, dtype=torch.long))


def test_conditional_model_without_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="spec.model.conditional"):
        build_generator(ModelSpec(conditional=True), (1, 28, 28), None)
    with pytest.raises(ValueError, match="spec.model.conditional"):
        build_discriminator(ModelSpec(conditional=True), (1, 28, 28), None)


def test_embed_dim_sets_the_label_embedding_size() -> None:
    G, _ = _nets("dcgan", (1, 28, 28), conditional=True, embed_dim=7)
    assert G.embed.embedding_dim == 7
    assert G.body[0].in_features == 100 + 7
    G, _ = _nets("dcgan", (1, 28, 28), conditional=True)
    assert G.embed.embedding_dim == 50


# --- errors ----------------------------------------------------------------------------


def test_unknown_arch_lists_the_valid_names() -> None:
    # The spec's Literal stops this earlier; construct() skips validation to reach the registry.
    model = ModelSpec.model_construct(**{**ModelSpec().model_dump(), "arch": "stylegan9"})
    for call in (
        lambda: build_generator(model, (1, 28, 28), None),
        lambda: build_discriminator(model, (1, 28, 28), None),
        lambda: default_widths("stylegan9", 28),
    ):
        with pytest.raises((KeyError, ValueError), match="'stylegan9'.*mlp, dcgan, deep, resnet"):
            call()


@pytest.mark.parametrize("arch", ["dcgan", "deep"])
@pytest.mark.parametrize("shape", [(3, 48, 48), (3, 32, 28)])
def test_unsupported_resolution_names_the_arch_and_the_supported_sizes(arch: str, shape: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match=rf"spec\.model\.arch: '{arch}' supports 28x28, 32x32, 64x64.*not"):
        build_generator(ModelSpec(arch=arch), shape, None)
    with pytest.raises(ValueError, match=f"'{arch}'"):
        build_discriminator(ModelSpec(arch=arch), shape, None)
    with pytest.raises(ValueError, match=f"'{arch}'"):
        default_widths(arch, 48)


def test_too_few_generator_widths_for_the_resolution_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec\.model\.g_widths: dcgan at 64x64 needs at least 4"):
        build_generator(ModelSpec(arch="dcgan", g_widths=[64, 32]), (3, 64, 64), None)
    with pytest.raises(ValueError, match=r"spec\.model\.g_widths"):
        build_generator(ModelSpec(arch="deep", g_widths=[64]), (1, 28, 28), None)


def test_empty_or_too_many_discriminator_widths_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec\.model\.d_widths: needs at least one"):
        build_discriminator(ModelSpec(arch="mlp", d_widths=[]), (1, 28, 28), None)
    with pytest.raises(ValueError, match=r"spec\.model\.d_widths.*fewer widths"):
        build_discriminator(ModelSpec(arch="dcgan", kernel_size=4, d_widths=[4] * 8), (1, 28, 28), None)


def test_spec_errors_are_user_errors_the_cli_prints_without_a_traceback() -> None:
    with pytest.raises(UserError):
        build_generator(ModelSpec(arch="dcgan"), (3, 48, 48), None)


# --- training with every loss ----------------------------------------------------------

# One shape per arch, small widths: the arch's structure, at a fraction of the time.
# dcgan at 32 so that D has BatchNorm (except for wgan_gp, which needs none).
LOSS_NETS: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {
    "mlp": ((1, 28, 28), {"g_widths": [32, 64], "d_widths": [64, 32]}),
    "dcgan": ((3, 32, 32), {"g_widths": [32, 16, 8], "d_widths": [8, 16, 32]}),
    "deep": ((1, 28, 28), {"g_widths": [32, 16, 8, 4], "d_widths": [8, 16, 16, 32]}),
    "resnet": ((1, 28, 28), {"g_widths": [16, 8, 8], "d_widths": [8, 8, 16, 16]}),
}


def _assert_all_grads(net: nn.Module, which: str, shift_invariant: bool = False) -> None:
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{which}.{name} got no gradient (DDP would fail)"
        assert torch.isfinite(p.grad).all(), f"{which}.{name} has a non-finite gradient"
        if shift_invariant and name == "linear.bias":
            # mean(fake) - mean(real) (and hinge inside its margin) ignores a shared offset:
            # the output bias's gradient is exactly 0 by construction, not by a bug.
            continue
        assert p.grad.abs().sum() > 0, f"{which}.{name} has an all-zero gradient"


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("cond", CONDITIONING)
@pytest.mark.parametrize("arch", list(LOSS_NETS))
def test_every_net_trains_with_every_loss(arch: str, cond: str, loss_name: str) -> None:
    shape, widths = LOSS_NETS[arch]
    loss = LOSSES[loss_name]
    fields = {**CONDITIONING[cond], **widths}
    if loss.gradient_penalty and arch != "resnet":  # resnet's D has no norm layers
        fields["d_norm"] = "layer"  # BatchNorm mixes samples, which breaks per-sample gradient norms
    G, D = _nets(arch, shape, **fields)
    z, y = torch.randn(N, G.latent_dim), _labels(fields)
    real = torch.rand(N, *shape) * 2 - 1

    # (1) D step: real and fake as separate batches, as the training loop does.
    fake = G(z, y)
    d_loss = loss.d_loss(D(real, y), D(fake.detach(), y), 0.1)
    if loss.gradient_penalty:
        x_hat = interpolates(real, fake.detach(), torch.rand(N))
        d_loss = d_loss + 10.0 * gradient_penalty(D(x_hat, y), x_hat)
    d_loss.backward()
    _assert_all_grads(D, "D", shift_invariant=loss_name in ("hinge", "wgan_gp"))
    assert not any(p.grad is not None for p in G.parameters()), "D's loss must not reach G"

    # (2) G step through D.
    D.zero_grad(set_to_none=True)
    loss.g_loss(D(fake, y)).backward()
    _assert_all_grads(G, "G")


def test_generator_survives_pickling_for_checkpoints_and_model_logging() -> None:
    G, _ = _nets("deep", (1, 28, 28), conditional=True, g_widths=[16, 8, 4])
    G.eval()
    clone = pickle.loads(pickle.dumps(G))
    z, y = torch.randn(2, 100), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(clone(z, y), G(z, y))
    assert clone.latent_dim == 100 and clone.num_classes == NUM_CLASSES


@pytest.mark.parametrize("arch,shape", NETS)
@pytest.mark.parametrize("d_norm", [None, "batch", "layer", "none"])
def test_the_specs_batchnorm_check_agrees_with_the_nets(
    arch: str, shape: tuple[int, int, int], d_norm: str | None
) -> None:
    # Validation decides "BatchNorm critic?" without torch; it must say what the nets build.
    model = ModelSpec(arch=arch, d_norm=d_norm)  # type: ignore[arg-type]
    if arch == "resnet" and d_norm in ("batch", "layer"):
        # No norm layers in SNGAN's D: refused by the nets and, without torch, by validation.
        with pytest.raises(UserError, match=r"spec\.model\.d_norm: resnet has no"):
            build_discriminator(model, shape, None)
        with pytest.raises(ValueError, match=r"model\.d_norm: resnet has no"):
            spec_models.check_model(model)
        return
    D = build_discriminator(model, shape, None)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())
    assert spec_models.batchnorm_critic(model, shape[1]) == has_bn
    if d_norm == "layer":
        assert any(isinstance(m, (nn.GroupNorm, nn.LayerNorm)) for m in D.modules())


def test_a_layer_norm_critic_scores_each_sample_alone() -> None:
    # What makes it fit wgan_gp: a sample's score does not depend on the rest of its batch.
    _, D = _nets("dcgan", (3, 32, 32), d_norm="layer", d_widths=[8, 16, 32])
    x = torch.rand(6, 3, 32, 32)
    assert torch.allclose(D(x)[:2], D(x[:2]), atol=1e-6)


# --- resnet (SNGAN, Mimicry's layout) and spectral norm ---------------------------------


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _spectral(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]


def test_resnet_at_32_is_mimicrys_sngan_32() -> None:
    from ganops.nets.resnet import ConditionalBatchNorm2d, DBlock, GBlock

    G, D = _nets("resnet", (3, 32, 32), latent_dim=128)
    z = torch.randn(N, 128)
    # G: linear 128 -> 4x4x256, three up-blocks 256 -> 256 (4 -> 8 -> 16 -> 32), BN, ReLU, 3x3 conv.
    blocks = [m for m in G.modules() if isinstance(m, GBlock)]
    assert [b.upsample for b in blocks] == [True] * 3
    assert (G.body.linear.in_features, G.body.linear.out_features) == (128, 4 * 4 * 256)
    assert _output_shapes(G, (GBlock,), z) == [(256, 8, 8), (256, 16, 16), (256, 32, 32)]
    assert not any(isinstance(m, ConditionalBatchNorm2d) for m in G.modules())
    # D: an optimised block 3 -> 128 and a down-block (32 -> 16 -> 8), two plain blocks, sum pooling.
    d_blocks = [m for m in D.modules() if isinstance(m, DBlock)]
    assert [(b.first, b.downsample) for b in d_blocks] == [(True, True), (False, True), (False, False), (False, False)]
    x = torch.rand(N, 3, 32, 32)
    assert _output_shapes(D, (DBlock,), x) == [(128, 16, 16), (128, 8, 8), (128, 8, 8), (128, 8, 8)]
    # Parameter counts, layer for layer those of Mimicry's ResNetGenerator32/Discriminator32.
    assert (_params(G), _params(D)) == (4_276_739, 1_053_825)
    # Spectral norm on every D layer (shortcuts and the output linear too), none in G.
    assert all(nn.utils.parametrize.is_parametrized(m, "weight") for m in _spectral(D))
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in G.modules())


@pytest.mark.parametrize(("size", "g", "d"), [(28, 4_119_555, 1_053_825), (64, 12_220_675, 10_141_441)])
def test_resnet_at_28_and_64_px(size: int, g: int, d: int) -> None:
    from ganops.nets.resnet import DBlock

    G, D = _nets("resnet", (3, size, size), latent_dim=128)
    x = torch.rand(N, 3, size, size)
    assert G(torch.randn(N, 128)).shape == x.shape
    downs = [b.downsample for b in D.modules() if isinstance(b, DBlock)]
    assert downs == ([True, True, False, False] if size == 28 else [True] * 5)  # 28 -> 14 -> 7; 64 -> 2
    assert (_params(G), _params(D)) == (g, d)


def test_spectral_norm_holds_each_d_layers_largest_singular_value_at_one() -> None:
    _, D = _nets("resnet", (1, 28, 28), d_widths=[8, 16, 16, 16])
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        for m in _spectral(D):
            m.parametrizations.weight.original.mul_(3)  # far from 1 to start with
        for _ in range(30):  # one power iteration per training forward
            D(x)
        for m in _spectral(D):
            w = m.weight.flatten(1)  # the normalised weight the layer uses
            raw = m.parametrizations.weight.original.flatten(1)
            assert float(torch.linalg.matrix_norm(w, ord=2)) == pytest.approx(1.0, abs=2e-3), m
            assert float(torch.linalg.matrix_norm(raw, ord=2)) > 1.5, m  # it did normalise


def test_d_spectral_norm_is_off_for_the_dcgan_family_unless_asked() -> None:
    _, D = _nets("dcgan", (1, 28, 28), conditional=True)
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in D.modules())
    _, D = _nets("dcgan", (1, 28, 28), conditional=True, d_spectral_norm=True)
    assert all(nn.utils.parametrize.is_parametrized(m, "weight") for m in _spectral(D))  # projection too
    _, D = _nets("resnet", (1, 28, 28), d_spectral_norm=False, d_widths=[8, 8])
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in D.modules())
    # Concat conditioning's label map is D's input, not one of its layers: left alone.
    _, D = _nets("dcgan", (1, 28, 28), conditional=True, d_conditioning="concat", d_spectral_norm=True)
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in D.label_map.modules())


def test_conditional_resnet_is_biggan_style_cbn_in_g_and_a_projection_d() -> None:
    from ganops.nets.resnet import ConditionalBatchNorm2d

    G, D = _nets("resnet", (1, 28, 28), conditional=True, g_widths=[16, 8, 8], d_widths=[8, 8])
    assert G.embed is None  # no embedding joined to z: the class enters through every block's BN
    cbns = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert len(cbns) == 4 and isinstance(G.body.bn, nn.BatchNorm2d)  # 2 per block; the last BN plain
    assert D.project is not None and D.label_map is None
    # cBN: class k's gain and bias are row k of its embedding, applied to the plain BN output.
    cbn = cbns[0]
    with torch.no_grad():
        cbn.embed.weight.normal_()
    x, y = torch.randn(6, cbn.channels, 4, 4), torch.tensor([0, 1, 2, 3, 4, 5])
    gain, bias = cbn.embed.weight[y, : cbn.channels], cbn.embed.weight[y, cbn.channels :]
    plain = nn.functional.batch_norm(x, None, None, training=True)
    assert torch.allclose(cbn(x, y), gain[:, :, None, None] * plain + bias[:, :, None, None], atol=1e-5)


def test_a_resnet_d_blocks_shortcut_sees_the_input_not_its_rectified_copy() -> None:
    # The documented departure from Mimicry (whose in-place ReLU also rectifies the shortcut's input).
    from ganops.nets.resnet import DBlock

    block = DBlock(4, 4, downsample=False, k=3, first=False)
    nn.init.zeros_(block.c2.weight)
    nn.init.zeros_(block.c2.bias)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(block(x), x)  # negative entries pass the identity shortcut unchanged


def test_resnet_is_initialised_as_the_sngan_code() -> None:
    from ganops.nets.resnet import GBlock

    G, _ = _nets("resnet", (1, 28, 28))
    block = next(m for m in G.modules() if isinstance(m, GBlock))
    for conv, gain in ((block.c1, 2**0.5), (block.c2, 2**0.5), (block.c_sc, 1.0)):
        fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
        bound = gain * (6 / (fan_in + fan_out)) ** 0.5  # Glorot uniform: U(-bound, bound)
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"d_dropout": 0.3}, "d_dropout"),
        ({"g_dropout": 0.1}, "g_dropout"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"g_widths": [64, 64]}, "g_widths"),
    ],
)
def test_resnet_refuses_what_it_cannot_build_naming_the_field(fields: dict[str, Any], field: str) -> None:
    model = ModelSpec(arch="resnet", **fields)
    with pytest.raises(UserError, match=rf"spec\.model\.{field}"):
        build_generator(model, (1, 28, 28), None) if field == "g_widths" else build_discriminator(
            model, (1, 28, 28), None
        )
    if field != "g_widths":
        with pytest.raises(ValueError, match=rf"model\.{field}"):
            spec_models.check_model(model)


def test_a_spectrally_normalised_d_reloads_from_its_state_dict_with_its_power_iteration() -> None:
    # A checkpoint keeps each layer's raw weight and the power iteration's u and v: a resumed
    # run (and generate --best-of's D) scores exactly as the saved D did.
    model = ModelSpec(arch="resnet", conditional=True, d_widths=[8, 8])
    D = build_discriminator(model, (1, 28, 28), NUM_CLASSES)
    x, y = torch.rand(N, 1, 28, 28), torch.arange(N)
    for _ in range(3):
        D(x, y)  # training forwards move u and v
    state = pickle.loads(pickle.dumps(D.state_dict()))
    assert any(k.endswith("parametrizations.weight.0._u") for k in state)
    torch.manual_seed(1)  # another init, other random u and v
    other = build_discriminator(model, (1, 28, 28), NUM_CLASSES)
    other.load_state_dict(state)
    D.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(other(x, y), D(x, y))


def test_dcgan_init_of_a_conditional_resnet_leaves_cbns_affine_free_batchnorm_alone() -> None:
    # cifar_biggan_diffaug's N(0, 0.02) init: conditional BatchNorm's inner BN has no weight.
    from ganops.nets.resnet import ConditionalBatchNorm2d

    G, _ = _nets("resnet", (3, 32, 32), conditional=True, init="dcgan", g_widths=[32, 32, 32, 32])
    assert float(G.body.blocks[0].c1.weight.std()) == pytest.approx(0.02, rel=0.1)
    cbn = next(m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d))
    assert float(cbn.embed.weight[:, : cbn.channels].mean()) == pytest.approx(1.0, abs=0.01)  # gains still ~1


@pytest.mark.parametrize(("job", "shape"), [("mnist_dcgan", (1, 28, 28)), ("mnist_cgan", (1, 28, 28)),
                                            ("cifar_sngan", (3, 32, 32)), ("cifar_biggan_diffaug", (3, 32, 32)),
                                            ("cifar_mlp", (3, 32, 32))])  # fmt: skip
def test_the_meta_device_sizes_are_the_built_networks_own(job: str, shape: tuple[int, int, int]) -> None:
    from ganops.client import load_job
    from ganops.nets import build_discriminator, build_generator, size

    model = load_job(JOBS / f"{job}.yaml").spec.model
    classes = 10 if model.conditional else None
    sized = size.measure(model, shape, classes)
    g, d = build_generator(model, shape, classes), build_discriminator(model, shape, classes)
    assert sized.g_params == sum(p.numel() for p in g.parameters())
    assert sized.d_params == sum(p.numel() for p in d.parameters())
    assert sized.g_activations > math.prod(shape) and sized.d_activations > math.prod(shape)


def test_a_network_no_worker_can_hold_is_refused_naming_the_fields() -> None:
    from ganops.errors import UserError
    from ganops.nets import size
    from ganops.spec.models import ModelSpec, TrainSpec

    huge = ModelSpec(arch="dcgan", latent_dim=10**13)
    with pytest.raises(UserError, match=r"spec\.model: G has [0-9,]{20,} parameters .*\(1 TiB\)"):
        size.check_fits(huge, TrainSpec(), (1, 28, 28), None, workers=2, memory=None)
    fine = ModelSpec(arch="dcgan")
    sized = size.check_fits(fine, TrainSpec(), (1, 28, 28), None, workers=2, memory=(8 * 2**30, 2))
    need = sized.training_bytes(TrainSpec(), 32)
    with pytest.raises(UserError, match=r"2 worker\(s\) share"):
        size.check_fits(fine, TrainSpec(), (1, 28, 28), None, workers=2, memory=(need, 2))


def test_a_pods_memory_limit_bounds_what_a_worker_has(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # /proc/meminfo is the host's; a pod's limit is its cgroup's (files in the kernel's format).
    from ganops.nets import size

    (tmp_path / "meminfo").write_text("MemTotal:       25165824 kB\nMemAvailable:   20971520 kB\n")
    (tmp_path / "memory.max").write_text("4294967296\n")
    (tmp_path / "memory.current").write_text("1073741824\n")
    monkeypatch.setattr(size, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(size, "CGROUP_FILES", ((str(tmp_path / "memory.max"), str(tmp_path / "memory.current")),))
    assert size.available_memory() == 3 * 2**30  # the pod's 4 GiB less the 1 GiB it uses, not the host's 20
    (tmp_path / "memory.max").write_text("max\n")
    assert size.available_memory() == 20 * 2**30
