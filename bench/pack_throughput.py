"""Packing throughput: ``ganops data pack`` of a folder of JPEGs against a plain PIL loop.

A folder of ``--images`` JPEGs of mixed sizes (each side 100-400 px, smooth gradients plus
noise so that they decode like photos, in two class sub-folders) is made once in a temp dir.
Then, per round, over the same files and to the same ``--image-size``:

(A) ganops:  ``client.pack_data`` (what ``ganops data pack`` runs): list the folder, decode,
    centre-crop and resize (LANCZOS) on ``--workers`` threads (``--pool``), a few chunks ahead;
    Parquet shards encoded and written on a thread, each through ``storage.write_bytes``
    (temporary name, fsync, rename) with its sha256; the state file after each shard; the
    manifest last. Everything a crash-safe pack costs is inside the time.
(B) plain:   one process, file by file: ``Image.open``, ``convert``, crop, ``resize``
    (LANCZOS), ``numpy.asarray(...).tobytes()`` into a list; nothing written.

The sides alternate who goes first each round, so load from elsewhere on a shared machine
slows both alike. Reading the result: images/s per side per round, their medians, and the
ratio A/B (median of the per-round ratios). On N idle cores expect A/B near N (decoding is
the work; B does no writing at all): below 0.8 x cores something is serialising. With
``--pools`` it also times folder.iter_images alone with processes and with threads (no
writing), the measurement behind ``iter_images``' default (threads). Always exits 0: a
measurement, not a gate.

    .venv/bin/python bench/pack_throughput.py                      # 2,000 JPEGs, 3 rounds: ~1 min on 2 CPUs
    .venv/bin/python bench/pack_throughput.py --pools              # plus decode-only: processes vs threads
    .venv/bin/python bench/pack_throughput.py --images 40 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ganops import client
from ganops.data import folder
from ganops.spec.models import DataSpec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="JPEGs in the folder (default 2000)")
    p.add_argument("--image-size", type=int, default=64, help="packed square size (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, sides alternating (default 3)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="ganops' decoders (default: one per CPU)")
    p.add_argument("--pool", choices=["threads", "processes"], default="threads", help="ganops' decoders (--pool)")
    p.add_argument("--shard-mb", type=float, default=8.0, help="shard size (default 8: several shards)")
    p.add_argument("--pools", action="store_true", help="also time iter_images alone: processes vs threads")
    p.add_argument("--dir", default=None, help="where the folder and the packs go (default: the system temp dir)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    for flag in ("images", "image_size", "rounds", "workers"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def make_folder(root: Path, n: int) -> int:
    """``n`` JPEGs of random sizes in root/a, root/b; returns their total bytes."""
    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        w, h = (int(x) for x in rng.integers(100, 401, 2))
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 127 // (w + h)], -1)
        pixels = np.clip(base + rng.integers(-25, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{i:06d}.jpg"
        Image.fromarray(pixels, "RGB").save(path, quality=90)
        total += path.stat().st_size
    return total


def ganops_side(spec: DataSpec, args: argparse.Namespace, out: str) -> float:
    t0 = time.perf_counter()
    r = client.pack_data(
        spec, out, shard_mb=args.shard_mb, workers=args.workers, show_progress=False, echo=lambda _: None
    )
    secs = time.perf_counter() - t0
    if r.manifest.num_images != args.images:
        raise RuntimeError(f"packed {r.manifest.num_images} images, expected {args.images}")
    return secs


def plain_side(files: list[Path], size: int) -> float:
    t0 = time.perf_counter()
    out = []
    for f in files:
        with Image.open(f) as im:
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.convert("RGB").crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.LANCZOS)
            out.append(np.asarray(im, dtype=np.uint8).tobytes())
    secs = time.perf_counter() - t0
    if len(out) != len(files):
        raise RuntimeError("plain loop lost images")
    return secs


def pool_side(spec: DataSpec, pool: str, workers: int) -> float:
    t0 = time.perf_counter()
    n = sum(len(imgs) for imgs, _ in folder.iter_images(spec, workers=workers, pool=pool))
    secs = time.perf_counter() - t0
    if n != spec.limit and spec.limit is not None:
        raise RuntimeError(f"iter_images gave {n} images")
    return secs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pack-bench-", dir=args.dir))
    try:
        root = work / "jpegs"
        t0 = time.perf_counter()
        jpeg_bytes = make_folder(root, args.images)
        print(
            f"folder: {args.images} JPEGs, 100-400 px a side, {jpeg_bytes / 2**20:.1f} MiB "
            f"(made in {time.perf_counter() - t0:.1f}s); packing to {args.image_size}x{args.image_size}, "
            f"{args.workers} {args.pool} on {os.cpu_count()} CPU(s)"
        )
        spec = DataSpec(dataset="folder", root=str(root), image_size=args.image_size)
        files = folder.list_images(spec).files
        rates: dict[str, list[float]] = {"ganops": [], "plain": []}
        if args.pools:
            rates |= {"iter_images processes": [], "iter_images threads": []}
        for r in range(args.rounds):
            order = ["ganops", "plain"] if r % 2 == 0 else ["plain", "ganops"]
            for side in order:
                os.sync()  # untimed: neither side pays for the other's writeback
                if side == "ganops":
                    secs = ganops_side(spec, args, str(work / f"pack-{r}"))
                    shutil.rmtree(work / f"pack-{r}")
                else:
                    secs = plain_side(files, args.image_size)
                rates[side].append(args.images / secs)
            if args.pools:
                for pool in ("processes", "threads"):
                    rates[f"iter_images {pool}"].append(args.images / pool_side(spec, pool, args.workers))
            print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rates.items()))
        ratios = [a / b for a, b in zip(rates["ganops"], rates["plain"], strict=True)]
        result = {
            "images": args.images, "image_size": args.image_size, "workers": args.workers, "cpus": os.cpu_count(),
            "median_img_s": {k: statistics.median(v) for k, v in rates.items()}, "ratio": statistics.median(ratios),
        }  # fmt: skip
        med = result["median_img_s"]
        print("median: " + "  ".join(f"{k} {v:.0f} img/s" for k, v in med.items()))
        print(f"ratio ganops/plain: {result['ratio']:.2f}  (per round: {', '.join(f'{x:.2f}' for x in ratios)})")
        if args.pools:
            print(f"iter_images processes/threads: {med['iter_images processes'] / med['iter_images threads']:.2f}")
        if result["ratio"] < 0.8 * min(args.workers, os.cpu_count() or 1):
            print("note: below 0.8 x the cores used; the machine may be busy (run again) or something serialises")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
