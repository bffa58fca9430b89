#!/usr/bin/env bash
# The GPU check for issue 5, prepared to run once on a lent GPU machine (`run` in the tool
# library), with the binary built here by scripts/build-cuda.sh carried as target-cuda/release/card:
#
#   run --carry target-cuda/release/card --timeout 540 'bash scripts/gpu-check.sh'
#
# It prints the GPU, a training benchmark (small preset, ARM/CARD/BD3LM) and a decoding
# benchmark of the `base` preset (34.7M parameters) after one training step, and copies the
# JSON results to $OUT for docs/results.md.
set -euo pipefail
bin="${BIN:-target-cuda/release/card}"
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$bin" --version
"$bin" bench train --preset small --objective arm,card,bd3lm --steps 10 --warmup 3 --json \
    | tee "$out/bench-train-small.txt"
"$bin" bench train --preset bench-5m --objective arm,card --steps 10 --warmup 3 --json \
    | tee "$out/bench-train-bench-5m.txt"
run="$(mktemp -d)/base"
"$bin" train --preset base --set train.max_steps=1 --set train.eval_every=0 --out "$run" >/dev/null
"$bin" bench decode "$run" --batch 1,8 --lengths 256 \
    --grid 2:2:0.0,4:4:0.0,8:8:0.0,4:4:1.0 --rounds 3 --json | tee "$out/bench-decode-base.txt"
