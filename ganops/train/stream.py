"""Per-rank batches streamed from a pack (``spec.data.dataset: shards``) through Ray Data.

The in-memory path (``RankBatches``) gives every worker a copy of the split; a pack can be
far larger than a worker's memory, so here Ray Data reads the Parquet shards (from local
storage or S3) in its own tasks and ``Dataset.streaming_split`` hands each rank a disjoint,
equal share. A worker holds a few batches (the prefetch and the local shuffle buffer), never
the dataset: Ray Data's blocks wait in the object store, under its backpressure.

Per epoch, rank 0 builds the epoch's dataset (the shard order permuted by (seed, epoch)) and
splits it; the iterators reach the other ranks through a small named actor (``_Board``)
because they are Ray objects and torch.distributed's pickling is not Ray's. Each rank then
shuffles locally (a buffer seeded by (seed, epoch, rank)).

Resume is exact: every row carries its pack ``index``, and each rank records the indexes
it trained on this epoch (one bit per image). A checkpoint stores the union over the ranks
(``Checkpoints``); a resumed epoch reads only shards with images left and drops the rows
already seen, so no image is shown twice and none is skipped, whatever the world size and
however streaming_split dealt the rows before. (As in every epoch, up to one global batch
at its end, plus fewer than ``world`` rows of the equal split, is not shown.)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
import torch
from torch import Tensor

from ganops.data import shards
from ganops.errors import UserError, user_error_in
from ganops.spec.models import DataSpec
from ganops.train.ranks import Ranks, rank_seed

# Batches each rank's iterator fetches ahead: enough to hide a read behind a step.
PREFETCH_BATCHES = 2
# The local shuffle buffer, in batches: rows from this many batches (several Parquet row
# groups from different shards) are mixed before a batch is drawn.
SHUFFLE_BATCHES = 4
# Ray Data's read tasks reserve no CPU: on a machine whose CPUs the training workers hold
# (the embedded default) a task asking for one would never run. Decoding is a frombuffer,
# done on the training worker; the reads are I/O.
READ_CPUS = 0.0
# ...so Ray would start a worker process per queued read task (each ~200 MB): cap them.
# Two per training rank keep a read in flight behind each rank's step.
READ_TASKS_PER_RANK = 2


@ray.remote(num_cpus=0)
class _Board:
    """Rank 0 pins an epoch's split here; every rank takes its own iterator."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._splits: list[Any] = []

    def put(self, key: str, splits: list[Any]) -> None:
        self._key, self._splits = key, splits  # the previous epoch's are released

    def get(self, key: str, rank: int) -> Any:
        if key != self._key:
            raise RuntimeError(f"no split {key} (holding {self._key})")
        return self._splits[rank]


# What pyarrow's OSErrors say when a file's bytes, not the connection, are at fault.
_PARQUET_DAMAGE = re.compile(r"deserializ|thrift|corrupt|invalid|unexpected end|magic bytes|decompress", re.I)


def _bad_bytes(e: BaseException) -> bool:
    """pyarrow's word for a file it cannot parse: ArrowInvalid (a ValueError), or an OSError
    that says so; other OSErrors (an S3 hiccup, a timeout) are not the data's fault."""
    if isinstance(e, (ConnectionError, TimeoutError)):
        return False
    return isinstance(e, ValueError) or (isinstance(e, OSError) and _PARQUET_DAMAGE.search(str(e)) is not None)


_UNREADABLE_TAIL = "; run `ganops data verify` on the pack (it reads every row) and repack what it names"
_UNREADABLE = re.compile(
    re.escape(shards.ROOT_FIELD) + r": shard \S+, row group \d+, cannot be read \(.*?\)" + re.escape(_UNREADABLE_TAIL)
)


def _read_units(
    batch: dict[str, np.ndarray],
    fs: Any,
    paths: list[str],
    columns: list[str],
    seen: np.ndarray | None,
    limit: int | None,
) -> Any:
    """Ray Data UDF: read the row groups named in ``batch`` (one, as the dataset is built),
    minus rows already trained on this epoch and rows past ``limit``."""
    tables = []
    for shard, group in zip(batch["shard"], batch["group"], strict=True):
        path = paths[int(shard)]
        try:
            t = shards.read_row_group(fs, path, int(group), columns)
        except Exception as e:
            if not _bad_bytes(e):
                raise  # an S3 hiccup, a lost node: Ray's retries
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(
                f"{shards.ROOT_FIELD}: shard {path}, row group {int(group)}, cannot be read ({first}){_UNREADABLE_TAIL}",
                field=shards.ROOT_FIELD,
            ) from None
        if seen is not None or limit is not None:
            idx = t.column("index").to_numpy()
            keep = np.ones(len(idx), bool)
            if limit is not None:
                keep &= idx < limit
            if seen is not None:
                keep &= ~_test(seen, np.minimum(idx, len(seen) * 8 - 1))
            t = t.filter(keep)  # a numpy mask will do
        tables.append(t)
    return tables[0] if len(tables) == 1 else shards.concat(tables)


def _test(bits: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (bits[idx >> 3] >> (idx & 7).astype(np.uint8)) & 1 == 1


def _set(bits: np.ndarray, idx: np.ndarray) -> None:
    np.bitwise_or.at(bits, idx >> 3, (np.uint8(1) << (idx & 7).astype(np.uint8)))


class StreamBatches:
    """``RankBatches``' interface (``per_epoch``, ``epoch(e, start)``) over a pack, plus the
    state a checkpoint needs (``seen_bits`` / ``load_state``)."""

    def __init__(
        self, data: DataSpec, batch_size: int, ranks: Ranks, seed: int = 0, device: torch.device | None = None
    ) -> None:
        assert data.root is not None
        self.root = data.root
        self.manifest = m = shards.read_manifest(data.root)
        self.num_images = min(m.num_images, data.limit) if data.limit is not None else m.num_images
        self.limit = data.limit if data.limit is not None and data.limit < m.num_images else None
        self.batch_size, self.ranks, self.seed = batch_size, ranks, seed
        self.device = device or torch.device("cpu")
        self.labelled = m.labelled
        self.per_epoch = (self.num_images // ranks.world) // batch_size
        from ganops.data import ImageInfo

        self.info = ImageInfo(m.shape, m.num_classes, self.num_images, m.class_names)
        self._seen = np.zeros((m.num_images + 7) // 8, np.uint8)
        self._seen_epoch: int | None = None
        self._calls = 0
        loc = shards.locate_root(data.root)
        self._fs = loc.fs
        self._paths = [loc.child(s.file).path for s in m.shards]
        self._board: Any = None
        if ranks.world > 1:
            name = ranks.broadcast(f"ganops-feed-{uuid.uuid4().hex[:12]}" if ranks.is_chief else None)
            if ranks.is_chief:
                self._board = _Board.options(name=name).remote()
                ray.get(self._board.put.remote("", []))  # created before the others look
            ranks.broadcast(None)  # a barrier: the actor exists
            if not ranks.is_chief:
                self._board = ray.get_actor(name)

    # -- checkpoint state -------------------------------------------------------------
    def seen_bits(self) -> np.ndarray:
        """This rank's images trained on in the current epoch (one bit per pack index)."""
        return self._seen

    def load_state(self, epoch: int, seen: np.ndarray) -> None:
        """The union of every rank's bits at the checkpoint: those images are done."""
        if seen.shape != self._seen.shape:
            raise ValueError(
                f"the checkpoint's stream state covers {seen.size * 8} images, the pack {self._seen.size * 8}"
            )
        self._seen = seen.copy()
        self._seen_epoch = epoch

    # -- batches ---------------------------------------------------------------------------
    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Batches of ``epoch``: images in [-1, 1], labels or None. ``start`` > 0 continues the
        epoch a checkpoint stopped in (its images come from the restored state, not ``start``)."""
        if start == 0:
            self._seen[:] = 0
        elif self._seen_epoch != epoch:
            raise RuntimeError(f"resuming epoch {epoch} at batch {start} without the stream state of that epoch")
        self._seen_epoch = epoch
        split = self._split(epoch, resumed=start > 0)
        b = self.batch_size
        shape = self.manifest.shape
        batches = iter(
            split.iter_batches(
                batch_size=b,
                batch_format="pyarrow",
                drop_last=True,
                prefetch_batches=PREFETCH_BATCHES,
                local_shuffle_buffer_size=b * SHUFFLE_BATCHES,
                local_shuffle_seed=rank_seed(self.seed, self.ranks.rank, salt=1000 + epoch),
            )
        )
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - a data error is re-raised as one, the rest as it came
                raise self._data_error(e) from None
            idx = batch.column("index").to_numpy()
            try:
                decoded = shards.decode(batch.column("image"), shape)
            except ValueError as e:
                raise self._data_error(e) from None
            # Arrow's buffers are read-only; torch wants to own writable memory (one uint8 copy).
            images = torch.from_numpy(np.array(decoded))
            real = images.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
            y = None
            if self.labelled:
                y = torch.from_numpy(batch.column("label").to_numpy().astype(np.int64, copy=True)).to(self.device)
            _set(self._seen, idx)  # before the step: a checkpoint after it counts this batch
            yield real, y

    def _data_error(self, e: BaseException) -> BaseException:
        """A read that failed on the pack's bytes as the ``UserError`` it is (raised by
        ``_read_units`` in a Ray Data task, naming the shard, and wrapped by Ray on its way
        here; or a decode here): retrying it would fail the same way, and Ray Train's restarts
        are for lost workers. Anything else (a lost node, a killed task) comes back as it was."""
        found_error = user_error_in(e)
        if found_error is not None:
            return found_error
        # Ray Data re-raises a UDF's exception as UserCodeException inside RayTaskErrors whose
        # pickled causes lose the original: its message survives in their text.
        found = _UNREADABLE.search(str(e))
        if found:
            return UserError(found.group(0), field=shards.ROOT_FIELD)
        if isinstance(e, ValueError) and not isinstance(e, ray.exceptions.RayError):  # decode: not the shape
            return UserError(
                f"{shards.ROOT_FIELD}: the pack at {self.root} holds an image that is not the manifest's shape "
                f"({str(e)[:200]}); run `ganops data verify {self.root}`",
                field=shards.ROOT_FIELD,
            )
        return e

    def _split(self, epoch: int, resumed: bool) -> Any:
        """This rank's iterator over the epoch's dataset (built and split on rank 0)."""
        self._calls += 1
        key = f"{epoch}:{self._calls}"
        r = self.ranks
        splits = self._build(epoch, resumed) if r.is_chief else None
        if r.world == 1:
            assert splits is not None
            return splits[0]
        if r.is_chief:
            ray.get(self._board.put.remote(key, splits))
        r.broadcast(None)  # every rank waits until rank 0 has pinned the split
        return ray.get(self._board.get.remote(key, r.rank))

    def _build(self, epoch: int, resumed: bool) -> list[Any]:
        """The epoch's dataset: one read task per Parquet row group, in an order seeded by
        (seed, epoch), each task reading and filtering its row group; split equally.

        Row groups rather than ``read_parquet``: its file listing runs as a task that wants
        a CPU, which the training workers hold on the embedded Ray (it never ran), and
        row groups shuffle finer than shards."""
        import ray.data

        # An epoch's execution plan and progress bars would land in every job log, each epoch:
        # ganops prints its own progress line.
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        m = self.manifest
        seen = self._seen if resumed and self._seen.any() else None
        units = []
        for shard, group, first in shards.row_groups(m):
            if self.limit is not None and first >= self.limit:
                continue
            last = min(first + m.rows_per_group, m.shards[shard].first_index + m.shards[shard].num_images)
            if seen is not None and _test(seen, np.arange(first, last)).all():
                continue  # every image of this row group was shown before the checkpoint
            units.append({"shard": shard, "group": group})
        order = np.random.default_rng([self.seed, epoch]).permutation(len(units))
        units = [units[i] for i in order]
        columns = ["index", "image"] + (["label"] if self.labelled else [])
        if not units:
            ds = ray.data.from_items([])
        else:
            ds = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
                _read_units, fn_args=(self._fs, self._paths, columns, seen, self.limit),
                batch_size=None, batch_format="numpy", num_cpus=READ_CPUS,
                concurrency=READ_TASKS_PER_RANK * self.ranks.world,
            )  # fmt: skip
        return ds.streaming_split(self.ranks.world, equal=True)
