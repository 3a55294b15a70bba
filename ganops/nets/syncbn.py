"""BatchNorm over the global batch (``spec.scaling.sync_batchnorm``).

With plain BatchNorm under DDP every worker normalises with its own share of the batch,
so the same global batch trains differently on 1 and on N workers. Synchronised, the
statistics are the global batch's on any worker count, for one all-reduce per BatchNorm
layer per forward (and one per backward).

PyTorch's ``nn.SyncBatchNorm`` runs only on accelerators (it raises on CPU tensors), so on
CPU a small equivalent built on the differentiable ``torch.distributed.nn`` all-reduce takes
its place; on CUDA PyTorch's fused kernels are used. Both keep BatchNorm's parameter and
buffer names, so checkpoints load into plain networks and back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of every rank's gradient (what the
    global-batch statistics need); torch.distributed.nn's twin is deprecated."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:  # noqa: ARG004
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # noqa: ARG004
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the batch on all ranks together."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        sync = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not sync:
            return super().forward(x)
        # Statistics in float32 at least (bfloat16 under autocast): sums of squares in
        # bfloat16 lose the variance, and the running buffers are float32 (or float64).
        dtype, x = x.dtype, x.to(torch.promote_types(x.dtype, torch.float32))
        c = x.size(1)
        dims = [0, *range(2, x.dim())]
        count = x.new_full((1,), x.numel() // c)
        # One all-reduce of [sum, sum of squares, count]; autograd sends the gradient back
        # through another (the all-reduce of the sums' gradients that SyncBatchNorm does too).
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = totals[-1]
        mean = totals[:c] / n
        var = (totals[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)


def _swap(net: nn.Module, old: tuple[type[nn.Module], ...], make: Callable[[nn.Module], type[nn.Module]]) -> nn.Module:
    """Replace each ``old`` layer of ``net`` by one of class ``make(layer)``, same state."""
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, old):
                assert isinstance(child, nn.modules.batchnorm._NormBase)
                cls = make(child)
                new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                new.load_state_dict(child.state_dict())
                new.train(child.training)
                # Restored on export: a synchronised layer takes any input rank.
                new._ganops_plain = getattr(child, "_ganops_plain", type(child))  # type: ignore[assignment]
                setattr(
                    parent, name, new.to(device=child.running_mean.device if child.running_mean is not None else None)
                )
    return net


def convert_sync_batchnorm(net: nn.Module, cuda: bool) -> nn.Module:
    """``net`` with every BatchNorm synchronised across ranks (in place; returned)."""
    make = nn.SyncBatchNorm if cuda else CrossRankBatchNorm
    return _swap(net, _BN, lambda _layer: make)


def revert_sync_batchnorm(net: nn.Module) -> nn.Module:
    """``net`` with plain BatchNorm again (in place; returned): for export and inference."""
    return _swap(
        net, (CrossRankBatchNorm, nn.SyncBatchNorm), lambda layer: getattr(layer, "_ganops_plain", nn.BatchNorm2d)
    )
