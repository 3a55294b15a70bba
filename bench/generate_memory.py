"""Generation memory: the driver's peak RSS for a small and a large ``--num``.

``ganops generate`` must hold per process what one shard needs, whatever ``--num``: the
shard plan is arithmetic, latents are made per shard from (seed, index), and the manifest
is streamed to disk as shards come back. This runs the same generation at each size in
``--sizes`` (default 10,000 and 1,000,000 images), each in a fresh process through the SDK
call the CLI makes (``client.generate``: checks, the MLflow run, shards, preview, manifest),
and reports that process's peak RSS (``ru_maxrss``; the encoding pool's workers hold one
chunk of a shard each and are not counted). The ratio of the largest size's driver peak to the smallest's is the
result; the goal is <= 1.2 (it would grow with --num if anything were held per image or
per shard).

What it generates, to keep 1M images to a couple of minutes on 2 CPUs: mnist_dcgan's
architecture with ``--g-widths`` (default 16,8: ~28k img/s here against ~1.2k for the job's
256,128,64) at random weights, logged to a throwaway embedded MLflow store as training
logs its generator. The output is real (``--format npz`` by default: one file per shard of
1024, ~0.8 GB for 1M images, to ``--dir``, default /dev/shm, removed after each size);
``--format png`` writes one file per image, which also measures the per-image records the
manifest lists (slower: ~1-10k files/s). ``--ganops-root`` runs the children on another
checkout (e.g. the previous commit, ``git worktree add /tmp/old HEAD~1``) to compare.

    .venv/bin/python bench/generate_memory.py                                # ~3 min on 2 CPUs
    .venv/bin/python bench/generate_memory.py --sizes 10000,200000 --format png
    .venv/bin/python bench/generate_memory.py --sizes 200,2000 --shard-size 64   # smoke, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,1000000", help="--num values, comma-separated (default 10000,1000000)")
    p.add_argument("--format", choices=["npz", "png", "both"], default="npz", help="output format (default npz)")
    p.add_argument("--shard-size", type=int, default=1024, help="images per shard (default 1024)")
    p.add_argument("--batch-size", type=int, default=256, help="G batch size (default 256)")
    p.add_argument("--g-widths", default="16,8", help="generator widths of the mnist_dcgan model (default 16,8)")
    p.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None, help="where outputs go")
    p.add_argument("--ganops-root", default=str(REPO), help="the checkout whose ganops the children run")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    p.add_argument("--child", nargs=3, metavar=("STORE", "RUN_ID", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--num", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.size_list = [int(s) for s in args.sizes.split(",")]
        args.widths = [int(w) for w in args.g_widths.split(",")]
    except ValueError:
        p.error("--sizes and --g-widths take comma-separated whole numbers")
    if not args.size_list or min(args.size_list) < 1 or args.shard_size < 1 or args.batch_size < 1:
        p.error("--sizes, --shard-size and --batch-size must be at least 1")
    return args


def _log_generator(store: str, widths: list[int]) -> str:
    """A random-weight generator logged as training logs one; returns its run id."""
    import torch
    import yaml

    from ganops import client
    from ganops.nets import build_generator
    from ganops.tracking import embedded_store, log_generator, mlflow_client

    uri, artifacts = embedded_store(store)
    job = client.load_job(
        REPO / "jobs" / "mnist_dcgan.yaml", [f"spec.storage={store}", f"spec.model.g_widths={widths}"]
    )
    mlflow = mlflow_client(uri)
    run_id = mlflow.create_run(mlflow.create_experiment("bench", artifact_location=artifacts)).info.run_id
    mlflow.log_text(run_id, yaml.safe_dump(job.to_dict(), sort_keys=False), "spec.yaml")
    torch.manual_seed(0)
    g = build_generator(job.spec.model, (1, 28, 28), None).eval()

    def fail(message: str) -> None:
        raise RuntimeError(message)

    mlflow.set_tag(run_id, "ganops.model_uri", log_generator(uri, run_id, g, None, fail))
    mlflow.set_terminated(run_id)
    return run_id


def child(args: argparse.Namespace) -> None:
    """One generation in this process; prints its peak RSS as JSON (the last line)."""
    from ganops import client
    from ganops.spec.generation import GANGeneration
    from ganops.tracking import embedded_store

    store, run_id, out = args.child
    spec = {"run_id": run_id, "out": out, "num": args.num, "format": args.format, "shard_size": args.shard_size,
            "batch_size": args.batch_size, "tracking": {"uri": embedded_store(store)[0]}}  # fmt: skip
    gen = GANGeneration.model_validate({"metadata": {"name": "bench"}, "spec": spec})
    t0 = time.perf_counter()
    result = client.generate(gen, show_progress=False, echo=lambda _m: None)
    kib = 1024  # ru_maxrss is in KiB on Linux
    print(json.dumps({
        "num": args.num, "count": result.count, "shards": result.shards, "seconds": time.perf_counter() - t0,
        "driver_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        "ganops": os.path.dirname(client.__file__),
    }))  # fmt: skip


def _run_size(args: argparse.Namespace, store: str, run_id: str, num: int) -> dict[str, Any]:
    out = tempfile.mkdtemp(prefix=f"gen-mem-{num}-", dir=args.dir)
    shutil.rmtree(out)  # generate wants an empty or missing --out
    env = {**os.environ, "PYTHONPATH": args.ganops_root, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    cmd = [sys.executable, __file__, "--child", store, run_id, out, "--num", str(num), "--format", args.format,
           "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size)]  # fmt: skip
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=args.ganops_root)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"--num {num} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    mib = 1 << 20
    with tempfile.TemporaryDirectory(prefix="gen-mem-store-") as store:
        run_id = _log_generator(store, args.widths)
        print(
            f"mnist_dcgan, g_widths {args.widths}, random weights | format {args.format} | shards of "
            f"{args.shard_size} | batch {args.batch_size} | output in {args.dir or tempfile.gettempdir()} | "
            f"ganops from {args.ganops_root} | {os.cpu_count()} CPUs"
        )
        rows = []
        for num in args.size_list:
            row = _run_size(args, store, run_id, num)
            rows.append(row)
            print(
                f"  --num {num:>10,}: driver peak RSS {row['driver_peak_rss'] / mib:7.1f} MiB | "
                f"{row['shards']:,} shards in {row['seconds']:.1f} s ({row['count'] / row['seconds']:,.0f} img/s)"
            )
    small, large = rows[0], rows[-1]
    ratio = large["driver_peak_rss"] / small["driver_peak_rss"]
    print(f"driver peak RSS ratio, --num {large['num']:,} / {small['num']:,}: {ratio:.3f} (goal <= {GOAL})")
    if ratio > GOAL:
        print(f"note: the ratio {ratio:.3f} is above the {GOAL} goal")
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "num")}, "rows": rows,
              "ratio": ratio, "goal": GOAL}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
