#!/usr/bin/env bash
# The GPU check, prepared to run once on a lent GPU machine (`run` in the tool library), with
# what `scripts/build-cuda.sh 90 cuda,nccl` built here carried along:
#
#   run --carry target-cuda/carry --timeout 540 'bash scripts/gpu-check.sh'
#
# (target-cuda/carry holds the xz-packed binary and device tests; they are unpacked here.)
#
# It prints the GPU, runs the device invariant tests on it (CARD_TEST_DEVICE=cuda: gradients,
# cached == recomputed logits, CARD K = 1 == AR greedy, resume determinism, every parameter's
# gradient), with two or more GPUs a 2-rank NCCL run against one GPU's loss trajectory, a
# training benchmark (small preset, ARM/CARD/BD3LM) and a decoding benchmark of the `base`
# preset (34.7M parameters) after one training step, and copies the results to $OUT for
# docs/results.md.
set -euo pipefail
if [ -f target-cuda/carry/card.xz ] && [ ! -x target-cuda/release/card ]; then
    mkdir -p target-cuda/release
    xz -dc target-cuda/carry/card.xz > target-cuda/release/card && chmod +x target-cuda/release/card
    xz -dc target-cuda/carry/device-tests.tar.xz | tar -C target-cuda -xf -
fi
bin="${BIN:-target-cuda/release/card}"
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$bin" --version
tests="${TESTS:-target-cuda/device-tests}"
if [ -d "$tests" ]; then
    export CARD_TEST_DEVICE=cuda
    "$tests/model" gradient_check every_parameter_gets_a_nonzero_gradient \
        cached_logits_equal_full_recomputation 2>&1 | tee "$out/device-tests.txt"
    "$tests/train" resume_is_bit_identical 2>&1 | tee -a "$out/device-tests.txt"
    "$tests/decode" card_reduces_to_ar_greedy ragged_cached_forward_equals_full_recomputation \
        2>&1 | tee -a "$out/device-tests.txt"
    unset CARD_TEST_DEVICE
fi
gpus="$(nvidia-smi --list-gpus | wc -l)"
if [ "$gpus" -ge 2 ]; then
    # Two ranks over NCCL, launched the torchrun way, against one GPU with the same batch.
    nc="$(mktemp -d)"
    "$bin" --device cuda train --preset tiny --max-steps 30 --set train.log_every=1 --quiet --out "$nc/one"
    for r in 0 1; do
        RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \
            "$bin" --device cuda train --preset tiny --max-steps 30 --set train.log_every=1 --quiet \
            --out "$nc/two" &
    done
    wait
    paste <(grep -o '"loss":[^,]*' "$nc/one/metrics.jsonl") <(grep -o '"loss":[^,]*' "$nc/two/metrics.jsonl") \
        | tee "$out/nccl-2-ranks-vs-1.txt"
fi
"$bin" bench train --preset small --objective arm,card,bd3lm --steps 10 --warmup 3 --json \
    | tee "$out/bench-train-small.txt"
"$bin" bench train --preset bench-5m --objective arm,card --steps 10 --warmup 3 --json \
    | tee "$out/bench-train-bench-5m.txt"
run="$(mktemp -d)/base"
"$bin" train --preset base --set train.max_steps=1 --set train.eval_every=0 --out "$run" >/dev/null
"$bin" bench decode "$run" --batch 1,8 --lengths 256 \
    --grid 2:2:0.0,4:4:0.0,8:8:0.0,4:4:1.0 --rounds 3 --json | tee "$out/bench-decode-base.txt"
