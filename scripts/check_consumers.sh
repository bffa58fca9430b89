#!/usr/bin/env bash
# A checkpoint's exports checked by their real consumers: the Hugging Face directory loaded
# and run by `transformers` (needs PyTorch), the GGUF file read by the `gguf` package and run
# by scripts/gguf_reference.py's NumPy forward; both against card's own f32 logits on fixed
# prompts.
#   scripts/check_consumers.sh CHECKPOINT [OUT_DIR]
# Exit 0: both passed; 1: a check failed; 2: a tool is missing (pip install torch
# transformers gguf numpy).
set -euo pipefail
ckpt=${1:?usage: scripts/check_consumers.sh CHECKPOINT [OUT_DIR]}
out=${2:-$(mktemp -d)}
card=${CARD:-target/release/card}
here=$(dirname "$0")
mkdir -p "$out"
"$card" export "$ckpt" --format hf --out "$out/hf" --force
"$card" export "$ckpt" --format gguf --out "$out/model.gguf" --force
"$card" inspect logits "$ckpt" --f32 --out "$out/ref.json" \
  --prompt "The capital of France is" \
  --prompt "Alice was beginning to get very tired of sitting by her sister on the bank," \
  --prompt "def fibonacci(n):"$'\n'"    if n < 2:"
python3 "$here/check_export.py" hf "$out/hf" --logits "$out/ref.json"
python3 "$here/check_export.py" gguf "$out/model.gguf" --logits "$out/ref.json"
