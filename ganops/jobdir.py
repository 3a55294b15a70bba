"""Layout of a job's directory in storage, readable without torch or Ray.

    <storage>/<name>/
      spec.yaml                  the resolved spec of the latest submit
      checkpoints/               Ray Train's run directory (RunConfig name)
        epoch_0005/              one self-sufficient checkpoint per save
          state.pt  spec.yaml
          checkpoint.json        completion marker, written last
        epoch_0006_batch_00120/  written on Ctrl-C, mid-epoch
      samples/
        epoch_0005.png           G(fixed noise) after epoch 5
        training.gif
      best/                      checkpoint.keep_best: the best-scoring checkpoint, outside
        epoch_0004/              Ray's run directory so that num_to_keep never prunes it
          state.pt  spec.yaml  checkpoint.json (marker last, with the scores)
      eval/
        step_00000096.json       the scores of each evaluation, with what they depend on
        best.json                the best score so far (survives resumes)

A checkpoint directory without ``checkpoint.json`` was interrupted while being written
and is never resumed from.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from ganops import storage

CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
BEST = "best"
EVAL = "eval"
SPEC_FILE = "spec.yaml"
MARKER = "checkpoint.json"
STATE_FILE = "state.pt"
GIF_FILE = "training.gif"
BEST_FILE = "best.json"
RESTART_TOKEN_FILE = "restart-token"

_CKPT_RE = re.compile(r"^epoch_(\d{4,})(?:_batch_(\d{5,}))?$")


def checkpoint_name(epoch: int, batch: int = 0) -> str:
    """``epoch`` counts completed epochs; ``batch`` the batches done in the next one."""
    return f"epoch_{epoch:04d}" if batch == 0 else f"epoch_{epoch:04d}_batch_{batch:05d}"


def sample_name(epoch: int, batch: int = 0) -> str:
    """Named as the checkpoint of the same point, so names sort in training order."""
    return f"{checkpoint_name(epoch, batch)}.png"


def eval_record_name(step: int) -> str:
    return f"step_{step:08d}.json"


@dataclass(frozen=True)
class CheckpointInfo:
    uri: str
    name: str
    epoch: int
    batch: int
    step: int
    meta: dict[str, object]


class JobDir:
    def __init__(self, storage_root: str, name: str) -> None:
        self.root = storage.locate(storage.join(storage.resolve(storage_root), name))

    @property
    def uri(self) -> str:
        return self.root.uri

    @property
    def checkpoints(self) -> storage.Location:
        return self.root.child(CHECKPOINTS)

    @property
    def samples(self) -> storage.Location:
        return self.root.child(SAMPLES)

    def exists(self) -> bool:
        return storage.exists(self.root) and bool(storage.list_dir(self.root))

    @property
    def best(self) -> storage.Location:
        return self.root.child(BEST)

    @property
    def eval_dir(self) -> storage.Location:
        return self.root.child(EVAL)

    def complete_checkpoints(self) -> list[CheckpointInfo]:
        """Checkpoints whose marker was written, oldest first."""
        return _complete(self.checkpoints)

    def best_checkpoint(self) -> CheckpointInfo | None:
        """The complete checkpoint under ``best/`` (the newest, should an older one remain)."""
        done = _complete(self.best)
        return done[-1] if done else None

    def read_best(self) -> dict[str, Any] | None:
        """``eval/best.json``: the best score so far and where its model went."""
        try:
            return json.loads(storage.read_bytes(self.eval_dir.child(BEST_FILE)))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def write_best(self, record: dict[str, Any]) -> None:
        storage.write_bytes(self.eval_dir.child(BEST_FILE), json.dumps(record, indent=1, sort_keys=True).encode())

    def write_eval_record(self, step: int, record: dict[str, Any]) -> storage.Location:
        loc = self.eval_dir.child(eval_record_name(step))
        storage.write_bytes(loc, json.dumps(record, indent=1, sort_keys=True).encode())
        return loc

    def replace_best(self, local_dir: str, name: str) -> CheckpointInfo:
        """Make the checkpoint in ``local_dir`` the best one, as ``best/<name>/``.

        The new directory is complete (its marker written last) before the old one is
        deleted, so an interruption at any point leaves at least one complete best.
        """
        dest = self.best.child(name)
        upload_marker_last(local_dir, dest)
        for old in storage.list_dir(self.best):
            if old != name and _CKPT_RE.match(old):
                self.best.fs.delete_dir(self.best.child(old).path)
        info = self.best_checkpoint()
        assert info is not None and info.name == name
        return info

    def latest_checkpoint(self) -> CheckpointInfo | None:
        done = self.complete_checkpoints()
        return done[-1] if done else None

    def sample_grids(self) -> list[str]:
        """Per-epoch grids and the grid of a mid-epoch stop (spec.train.stop_on, max_minutes), in training order."""
        return [n for n in storage.list_dir(self.samples) if re.match(r"^epoch_\d+(_batch_\d+)?\.png$", n)]

    def restart_token(self) -> str | None:
        """The token of the --restart that began this run (``submit --restart-token``)."""
        try:
            return storage.read_bytes(self.root.child(RESTART_TOKEN_FILE)).decode().strip() or None
        except (FileNotFoundError, OSError, UnicodeDecodeError):
            return None

    def write_restart_token(self, token: str) -> None:
        storage.write_bytes(self.root.child(RESTART_TOKEN_FILE), token.encode())

    def archive(self) -> str:
        """Move the whole job directory aside (``--restart``) and return where it went."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        dest = storage.locate(f"{self.root.uri}.restart-{stamp}")
        n = 1
        while storage.exists(dest):  # two restarts within a second
            n += 1
            dest = storage.locate(f"{self.root.uri}.restart-{stamp}-{n}")
        storage.move_dir(self.root, dest)
        return dest.uri


def _complete(parent: storage.Location) -> list[CheckpointInfo]:
    """Checkpoint directories under ``parent`` whose marker was written, oldest first."""
    found = []
    for name in storage.list_dir(parent):
        m = _CKPT_RE.match(name)
        if not m:
            continue
        marker = parent.child(name, MARKER)
        try:
            meta = json.loads(storage.read_bytes(marker))
        except (FileNotFoundError, OSError, ValueError):
            continue  # incomplete: interrupted while being written
        found.append(
            CheckpointInfo(
                uri=parent.child(name).uri,
                name=name,
                epoch=int(m.group(1)),
                batch=int(m.group(2) or 0),
                step=int(meta.get("step", 0)),
                meta=meta,
            )
        )
    return sorted(found, key=lambda c: (c.epoch, c.batch))


def upload_marker_last(local_dir: str, dest: storage.Location) -> None:
    """Copy a local checkpoint directory to ``dest`` with its completion marker written last.

    A directory of that name already there (without a marker: a leftover of an interrupted
    write) is replaced.
    """
    if storage.exists(dest):
        dest.fs.delete_dir(dest.path)
    names = sorted(os.listdir(local_dir), key=lambda n: n == MARKER)
    for n in names:
        with open(os.path.join(local_dir, n), "rb") as f:
            storage.write_bytes(dest.child(n), f.read())
