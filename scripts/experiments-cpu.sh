#!/usr/bin/env bash
# The paper's experiments at the `cpu` scale (issue 18), resumable across sessions and machines:
# every finished run's summary is committed as it finishes (`--commit`), so rerunning this
# script on a fresh clone trains only what is missing. Checkpoints stay under results/*/runs/
# (ignored by git).
#
#   scripts/experiments-cpu.sh                      # all five, in this order
#   scripts/experiments-cpu.sh masking-ablation     # one of them
set -euo pipefail
cd "$(dirname "$0")/.."
card=${CARD:-target/release/card}
[ -x "$card" ] || cargo build --release
"$card" data fetch --eval
if [ ! -f data/prepared/cpu/meta.json ]; then
  "$card" data prepare --out data/prepared/cpu --holdout brown/cj,gutenberg/shakespeare-
fi
# objectives first: its CARD runs (scored on the zero-shot suite too) are reused by the others.
for name in "${@:-objectives masking-ablation tail-factor ema data-efficiency}"; do
  for e in $name; do
    case $e in
      objectives) extra=(--zero-shot-limit 50 --lambada) ;;
      *) extra=() ;;
    esac
    "$card" experiment "$e" --preset cpu --commit "${extra[@]}"
  done
done
