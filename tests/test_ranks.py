"""What the ranks exchange for a checkpoint, on 2 real gloo ranks (child processes, no Ray).

Only rank 0 writes a checkpoint, so only rank 0 may receive the other ranks' RNG states,
weight checksums and stream bits: sent to every rank (an all-gather), a streamed pack's bits
alone cost each rank every other rank's megabytes at every save.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import JOBS, free_port

WORLD = 2
NOISE_SEED = 100  # rank r's noise stream starts from NOISE_SEED + r: each rank's state is its own
# cifar_dcgan at widths that build in milliseconds: the collection, not the nets, is under test.
SMALL = [
    "spec.data.dataset=fake", "spec.data.root=", "spec.data.download=false",
    "spec.model.g_widths=[32,16,8]", "spec.model.d_widths=[8,16,32]", "spec.train.batch_size=16",
]  # fmt: skip


def seen_bits(rank: int) -> np.ndarray:
    """Rank ``rank``'s stream bits in this test: a pattern no other rank has."""
    return np.full(4, 1 << rank, dtype=np.uint8)


class StreamBits:
    """A streamed pack's batches as a checkpoint sees them: this rank's bits of the epoch."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def seen_bits(self) -> np.ndarray:
        return seen_bits(self.rank)


def _collect(rank: int, world: int, tmp: str) -> list[dict[str, Any]] | None:
    """What a checkpoint save collects on this rank: ``Checkpoints._gather_ranks`` itself."""
    from ganops import client, jobdir
    from ganops.train.checkpoints import Checkpoints, FixedNoise, Position
    from ganops.train.ranks import Ranks
    from ganops.train.step import GANStep

    cpu = torch.device("cpu")
    job = client.load_job(JOBS / "cifar_dcgan.yaml", SMALL)
    torch.manual_seed(0)  # the same weights on every rank, as DDP keeps them
    step = GANStep(job.spec, (3, 32, 32), None, cpu, noise_seed=NOISE_SEED + rank)
    noise = FixedNoise(z=torch.zeros(1, job.spec.model.latent_dim), y=None, cols=1)
    ckpts = Checkpoints(job, jobdir.JobDir(tmp, job.name), step, Ranks(rank, world, cpu), Position(), noise,
                        stream=StreamBits(rank))  # type: ignore[arg-type]  # fmt: skip
    return ckpts._gather_ranks()


def _rank_main(rank: int, world: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        torch.save({"got": _collect(rank, world, tmp)}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # a process group: two spawned ranks import torch, Ray and the nets (~12 s on 2 CPUs)
def test_only_rank_0_receives_the_ranks_rng_states_checksums_and_stream_bits_for_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.start_processes(_rank_main, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False)["got"] for r in range(WORLD)]

    # Rank 0, which writes the checkpoint, has every rank's state, in rank order.
    chief = got[0]
    assert chief is not None and len(chief) == WORLD
    for r, state in enumerate(chief):
        assert np.array_equal(state["seen"], seen_bits(r))
        expected_noise = torch.Generator().manual_seed(NOISE_SEED + r).get_state()
        assert torch.equal(state["rng"]["noise"], expected_noise)
    assert chief[0]["checksum"] == chief[1]["checksum"]  # the same weights on both ranks
    # Rank 1 writes nothing: it must not be sent rank 0's state (nor its own back).
    assert got[1] is None, f"rank 1 received {len(got[1])} ranks' checkpoint state"
