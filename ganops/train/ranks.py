"""Who this worker is among the ranks, and the few collectives the loop needs.

With one worker every collective is the identity, so the loop reads the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def rank_seed(seed: int, rank: int, salt: int = 0) -> int:
    """Distinct, reproducible seeds per rank (and per purpose via ``salt``)."""
    return (seed * 1_000_003 + rank * 7919 + salt * 104_729) % (2**63 - 1)


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    device: torch.device

    @property
    def is_chief(self) -> bool:
        """Rank 0: the one that writes and reports."""
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, in rank order (None on the others)."""
        if self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` on every rank, in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensor(self, t: torch.Tensor) -> None:
        """Rank 0's values into ``t`` on every rank, in place."""
        if self.world > 1:
            dist.broadcast(t, src=0)

    def max_tensor(self, t: torch.Tensor) -> None:
        """The element-wise maximum over the ranks into ``t`` on every rank, in place."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over the ranks: one small all-reduce."""
        if self.world == 1:
            return values
        t = torch.tensor(list(values.values()), device=self.device)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world).tolist(), strict=True))
