#!/usr/bin/env bash
# Acceptance of SmolLM2's [MASK] drafts against training tokens (issue 34, item 5), on a CPU:
# the distillation recipe (the base model's greedy continuations of corpus prefixes mixed
# with real text, CARD objective, bf16 compute where this CPU's bf16 products are the faster,
# f32 elsewhere: train.compute = "auto") run for STEPS steps, a checkpoint every
# EVERY steps kept aside as it appears (training keeps only the newest two), then the
# lossless verifier on each kept checkpoint and on the base, with K = 4 [MASK] slots sent
# every pass (positions priced at 0), greedy, batch 1, 128 tokens, prose and probes.
# Acceptance is counted, not timed, so other work on the machine does not change it.
#
#   scripts/smollm2_acceptance_curve.sh            # 600 steps × 1,024 tokens, ~40 min on 2 cores
#   STEPS=200 EVERY=50 scripts/smollm2_acceptance_curve.sh
#   SEED=1 OUT=runs/smol-curve-s1 RESULTS=results/smollm2-curve-s1 scripts/smollm2_acceptance_curve.sh
#   EXTRA='--set noise.mode="uniform" --set noise.t_max=0.25' OUT=... RESULTS=... scripts/...
#                                                  # other training settings (word-split)
#
# Needs `card data fetch --model smollm2` and the corpus prepared with SmolLM2's tokenizer
# (docs/results.md, "SmolLM2 trained for acceptance"). Rerunning resumes: the distillation
# resumes from its last checkpoint and measured checkpoints are not measured again. Writes
# results/smollm2-curve/{acceptance.csv,acceptance.svg,report.md} through
# scripts/acceptance_curve_report.py.
set -euo pipefail
CARD=${CARD:-target/release/card}
BASE=${BASE:-data/models/smollm2/run}
DATA=${DATA:-data/prepared/smollm2}
OUT=${OUT:-runs/smol-curve}
STEPS=${STEPS:-600}
EVERY=${EVERY:-100}
MIX=${MIX:-0.2}
SEED=${SEED:-0}
RESULTS=${RESULTS:-results/smollm2-curve}
EXTRA=${EXTRA:-}
[ -x "$CARD" ] || { echo "no $CARD: run cargo build --release first" >&2; exit 1; }
[ -d "$BASE" ] || { echo "no $BASE: run card data fetch --model smollm2 first" >&2; exit 1; }
[ -d "$DATA" ] || { echo "no $DATA: prepare the corpus with SmolLM2's tokenizer first" >&2; exit 1; }
mkdir -p "$OUT/kept" "$RESULTS/raw"

# Training keeps two checkpoints; hard links keep the others without copying them.
keep() {
    for d in "$OUT"/run/ckpt-*; do
        [ -d "$d" ] && [ -f "$d/manifest.json" ] || continue
        local name; name=$(basename "$d")
        [ -d "$OUT/kept/$name" ] && continue
        rm -rf "$OUT/kept/$name.tmp"
        cp -al "$d" "$OUT/kept/$name.tmp" && mv "$OUT/kept/$name.tmp" "$OUT/kept/$name" || true
    done
}

if [ ! -f "$OUT/report.json" ]; then
    # The continuations depend on the base and the prefixes only: reuse an earlier run's.
    if [ -n "${CONTINUATIONS:-}" ] && [ ! -f "$OUT/continuations.jsonl" ]; then
        cp "$CONTINUATIONS" "$OUT/continuations.jsonl"
    fi
    "$CARD" --threads 2 distill "$BASE" --out "$OUT" --data "$DATA" --objective card \
        --prefixes 512 --new-tokens 96 --mix "$MIX" --max-steps "$STEPS" \
        --set noise.ar_fraction=0.25 --set 'train.compute="auto"' --set train.batch_size=4 \
        --set train.ema=false --set "train.ckpt_every=$EVERY" --set "train.seed=$SEED" $EXTRA --quiet &
    pid=$!
    trap 'kill $pid 2>/dev/null' INT TERM
    while kill -0 $pid 2>/dev/null; do keep; sleep 10; done
    wait $pid
    keep
fi

# The base model measured with the curve's corpus (its prose prompts): a linked copy whose
# config names that corpus, its manifest hash updated to match.
step0="$OUT/kept/ckpt-00000000"
if [ ! -d "$step0" ]; then
    src="$BASE/$(cat "$BASE/latest")"
    cp -al "$src" "$step0.tmp"
    rm "$step0.tmp/config.toml"
    sed "s|^path = \"\"|path = \"$(readlink -f "$OUT/data")\"|" "$src/config.toml" > "$step0.tmp/config.toml"
    hash=$(sha256sum "$step0.tmp/config.toml" | cut -d' ' -f1)
    rm "$step0.tmp/manifest.json"
    python3 - "$src/manifest.json" "$step0.tmp/manifest.json" "$hash" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1])); m["config.toml"] = sys.argv[3]
json.dump(m, open(sys.argv[2], "w"), indent=2)
EOF
    mv "$step0.tmp" "$step0"
fi

for d in "$OUT"/kept/ckpt-*; do
    name=$(basename "$d")
    raw="$RESULTS/raw/$name.json"
    [ -s "$raw" ] && continue
    echo "acceptance of $name ..." >&2
    "$CARD" --threads 2 bench decode "$d" --grid "" --verify 4:0:0 --batch 1 \
        --sets prose,probes --lengths 128 --rounds 1 --json | tail -1 > "$raw.tmp"
    mv "$raw.tmp" "$raw"
done
python3 scripts/acceptance_curve_report.py "$RESULTS" "$OUT"
