#!/usr/bin/env bash
# One call on a lent GPU machine (see docs/performance.md, "On a GPU"): training, generation and
# Inception throughput on CUDA. The machine has its own torch and no internet: pydantic's
# wheels travel in .whl/, MNIST's test split in .gpudata/ (both git-ignored, carried).
#   run(command="bash bench/gpu.sh", carry=[".whl", ".gpudata"])
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
M=spec.data.root=$PWD/.gpudata
T="timeout 150 python3 bench/train_throughput.py --device cuda --steps 40 --rounds 5 --warmup 10"
FAKE32="--job jobs/cifar_dcgan.yaml --set spec.data.dataset=fake --set spec.data.limit=20000 --set spec.data.image_size=32 --set spec.data.channels=3"
for b in 128 1024; do
  $T --set $M --set spec.train.batch_size=$b --json $OUT/train_mnist_b$b.json 2>&1 | tail -4
  $T --set $M --set spec.train.batch_size=$b --set spec.train.precision=bf16 --json $OUT/train_mnist_bf16_b$b.json 2>&1 | tail -3
  $T $FAKE32 --set spec.train.batch_size=$b --json $OUT/train_cifar_b$b.json 2>&1 | tail -3
done
timeout 120 python3 - <<'PY' 2>&1 | tee $OUT/inception.txt
import time, torch
from ganops.evaluate.inception import FIDInceptionV3, preprocess
m = FIDInceptionV3().cuda().eval()  # random weights: the speed is the same as the real ones
for bs in (200, 500):
    x = torch.randint(0, 256, (bs, 1, 28, 28), dtype=torch.uint8, device="cuda")
    with torch.inference_mode():
        for _ in range(3): m(preprocess(x))
        torch.cuda.synchronize(); t = time.perf_counter(); n = 0
        while time.perf_counter() - t < 5: m(preprocess(x)); n += bs
        torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"inception fp32 batch {bs}: {n/dt:.0f} images/s -> 10,000 in {10000/(n/dt):.1f} s")
PY
timeout 150 python3 bench/generate_throughput.py --device cuda --dir /dev/shm --images 20000 --rounds 3 --batch-size 1000 --shard-size 5000 --json $OUT/generate.json 2>&1 | tail -5
