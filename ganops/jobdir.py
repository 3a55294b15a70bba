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

A checkpoint directory without ``checkpoint.json`` was interrupted while being written
and is never resumed from.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from ganops import storage

CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
SPEC_FILE = "spec.yaml"
MARKER = "checkpoint.json"
STATE_FILE = "state.pt"
GIF_FILE = "training.gif"

_CKPT_RE = re.compile(r"^epoch_(\d{4,})(?:_batch_(\d{5,}))?$")


def checkpoint_name(epoch: int, batch: int = 0) -> str:
    """``epoch`` counts completed epochs; ``batch`` the batches done in the next one."""
    return f"epoch_{epoch:04d}" if batch == 0 else f"epoch_{epoch:04d}_batch_{batch:05d}"


def sample_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.png"


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

    def complete_checkpoints(self) -> list[CheckpointInfo]:
        """Checkpoints whose marker was written, oldest first."""
        found = []
        for name in storage.list_dir(self.checkpoints):
            m = _CKPT_RE.match(name)
            if not m:
                continue
            marker = self.checkpoints.child(name, MARKER)
            try:
                meta = json.loads(storage.read_bytes(marker))
            except (FileNotFoundError, OSError, ValueError):
                continue  # incomplete: interrupted while being written
            found.append(
                CheckpointInfo(
                    uri=self.checkpoints.child(name).uri,
                    name=name,
                    epoch=int(m.group(1)),
                    batch=int(m.group(2) or 0),
                    step=int(meta.get("step", 0)),
                    meta=meta,
                )
            )
        return sorted(found, key=lambda c: (c.epoch, c.batch))

    def latest_checkpoint(self) -> CheckpointInfo | None:
        done = self.complete_checkpoints()
        return done[-1] if done else None

    def sample_grids(self) -> list[str]:
        return [n for n in storage.list_dir(self.samples) if re.match(r"^epoch_\d+\.png$", n)]

    def archive(self) -> str:
        """Move the whole job directory aside (``--restart``) and return where it went."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        dest = storage.locate(f"{self.root.uri}.restart-{stamp}")
        storage.move_dir(self.root, dest)
        return dest.uri
