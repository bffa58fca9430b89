#!/usr/bin/env bash
# Peer comparison: card vs llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU build) on the same GGUF,
# alternated in one run so both see the same machine state.
#
#   scripts/peer-llamacpp.sh [GGUF] [CKPT]        (ROUNDS=3 PROMPT=... NEW_TOKENS=128 REPS=30 by env)
#
# Per round: greedy decode (card t2, card t1, card --int8 t2, llama.cpp t1, llama.cpp t2), then
# the batch-1 cost curve (card t2 exact and int8, llama.cpp t1, llama.cpp t2). Prints a plain
# table of medians over rounds. card's exact path multiplies the blocks with f32 activations;
# --int8 rounds the activations to 8 bits as llama.cpp does.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
gguf="${1:-data/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
ckpt="${2:-data/models/smollm2/run}"
rounds="${ROUNDS:-3}"
prompt="${PROMPT:-The capital of France is}"
new_tokens="${NEW_TOKENS:-128}"
reps="${REPS:-30}"
positions="1,2,3,4,6,8,12,16"
context=64
card="$root/target/release/card"

[[ -f "$gguf" ]] || { echo "missing GGUF $gguf (card data fetch --model smollm2)" >&2; exit 2; }
[[ -e "$ckpt" ]] || { echo "missing checkpoint $ckpt (card data fetch --model smollm2)" >&2; exit 2; }
[[ -x "$card" ]] || { echo "missing $card (cargo build --release)" >&2; exit 2; }
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
scripts/peer/install.sh >&2

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
peer() { node scripts/peer/llamacpp.mjs --model "$gguf" "$@"; }
lastjson() { grep '^{' | tail -n 1; }  # card prints its JSON as the last '{' line

for r in $(seq 1 "$rounds"); do
    echo "round $r/$rounds: greedy" >&2
    for run in "card 2" "card 1" "card-int8 2 --int8"; do
        read -r eng t flag <<<"$run"
        "$card" --threads "$t" generate "$ckpt" --prompt "$prompt" --max-new-tokens "$new_tokens" --json $flag 2>/dev/null \
            | lastjson | sed "s/^{/{\"engine\":\"$eng\",\"threads\":$t,\"kind\":\"greedy\",/" >>"$out/rows.jsonl"
    done
    for t in 1 2; do
        peer --threads "$t" --greedy --prompt "$prompt" --new-tokens "$new_tokens" \
            | sed 's/^{/{"engine_id":"llama.cpp","kind":"greedy",/' >>"$out/rows.jsonl"
    done
    echo "round $r/$rounds: cost curve" >&2
    "$card" --threads 2 bench decode "$ckpt" --cost-curve --batch 1 --positions "$positions" \
        --context "$context" --reps "$reps" --json 2>/dev/null \
        | lastjson | sed 's/^{/{"engine":"card","threads":2,"kind":"cost",/' >>"$out/rows.jsonl"
    for t in 1 2; do
        peer --threads "$t" --cost-curve --positions "$positions" --context "$context" --reps "$reps" \
            | sed 's/^{/{"engine_id":"llama.cpp","kind":"cost",/' >>"$out/rows.jsonl"
    done
done

python3 - "$out/rows.jsonl" "$gguf" "$ckpt" "$rounds" "$prompt" "$new_tokens" <<'PY'
import json, os, statistics as st, subprocess, sys
path, gguf, ckpt, rounds, prompt, new_tokens = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
for r in rows:
    r.setdefault("engine_id", r.get("engine"))

lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "?")
flags = set(open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split(":", 1)[1].split())
amx = sorted(f for f in flags if f.startswith("amx"))
have = lambda f: "yes" if f in flags else "no"
print(f"CPU: {model} (lscpu Model name); {os.cpu_count()} logical CPUs")
print(f"flags: avx2={have('avx2')} avx512f={have('avx512f')} avx512_vnni={have('avx512_vnni')} "
      f"avx512_bf16={have('avx512_bf16')} amx={'yes (' + ','.join(amx) + ')' if amx else 'no'}")
peer = next(r for r in rows if r["engine_id"] == "llama.cpp")
print(f"peer: {peer['engine']}, {peer['build']} binary, backend {peer['backend']}, "
      f"reported release {peer['llama_cpp_release']}, model {peer['model']}")
print(f"peer system_info: {peer['system_info']}")
print(f"GGUF: {gguf}   card checkpoint: {ckpt}   rounds: {rounds} (alternated)")
print()

g = [r for r in rows if r["kind"] == "greedy"]
def tps(eng, t):
    return [r["tokens_per_s"] for r in g if r["engine_id"] == eng and r["threads"] == t]
peer_best_t = max((1, 2), key=lambda t: st.median(tps("llama.cpp", t)))
best = st.median(tps("llama.cpp", peer_best_t))
print(f"Greedy decode, prompt {prompt!r}, {new_tokens} new tokens, batch 1 (tokens/s, median of {rounds}; prompt excluded)")
print(f"{'engine':<12}{'threads':>8}{'tok/s':>10}{'min':>9}{'max':>9}{'vs llama.cpp best':>20}{'median token ms':>17}")
for eng, t in (("card", 1), ("card", 2), ("card-int8", 2), ("llama.cpp", 1), ("llama.cpp", 2)):
    xs = tps(eng, t)
    mark = " (best)" if eng == "llama.cpp" and t == peer_best_t else ""
    step = [r["median_token_ms"] for r in g if r["engine_id"] == eng and r["threads"] == t and "median_token_ms" in r]
    step = f"{st.median(step):.2f}" if step else "-"
    print(f"{eng:<12}{t:>8}{st.median(xs):>10.1f}{min(xs):>9.1f}{max(xs):>9.1f}{st.median(xs) / best:>19.2f}x{step:>17}{mark}")
counts = {(r["engine_id"], r["threads"]): r.get("tokens", r.get("new_tokens")) for r in g}
print("(median token ms: llama.cpp's median per-token latency; tok/s is wall time over all tokens, so a gap means a slow tail)")
print("tokens generated: " + ", ".join(f"{e} t{t}={n}" for (e, t), n in sorted(counts.items())))

def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
texts = {}
for r in g:
    texts.setdefault((r["engine_id"], r["threads"]), set()).add(r["text"])
for k, v in sorted(texts.items()):
    if len(v) > 1:
        print(f"note: {k[0]} t{k[1]} greedy text varied across rounds")
a, b = next(iter(texts[("card", 2)])), next(iter(texts[("llama.cpp", peer_best_t)]))
d = first_diff(a, b)
if d is None:
    print("greedy texts: card and llama.cpp agree exactly")
else:
    print(f"greedy texts: differ from character {d} (card {len(a)} chars, llama.cpp {len(b)} chars); common prefix {a[:d]!r}")
    print(f"  card      continues {a[d:d + 60]!r}")
    print(f"  llama.cpp continues {b[d:d + 60]!r}")
i8 = next(iter(texts[("card-int8", 2)]))
d8 = first_diff(i8, b)
print("card --int8 and llama.cpp: " + ("agree exactly" if d8 is None else f"differ from character {d8}")
      + "; card --int8 and card exact: " + ("agree exactly" if first_diff(i8, a) is None else f"differ from character {first_diff(i8, a)}"))
print()

c = [r for r in rows if r["kind"] == "cost"]
def curve(eng, t, int8=False):
    ms = {}
    for r in c:
        if r["engine_id"] != eng or r["threads"] != t:
            continue
        pts = r["cost_curve"]
        if eng == "card":  # the stored-format rows (neither the f32 nor the bf16 reference)
            pts = [p for p in pts if p["precision"] not in ("f32", "bf16") and p["batch"] == 1
                   and p["precision"].endswith(" int8") == int8]
        for p in pts:
            ms.setdefault(p["positions"], []).append(p["ms"])
    return {n: st.median(v) for n, v in ms.items()}
card_prec = next(p["precision"] for r in c if r["engine_id"] == "card" for p in r["cost_curve"]
                 if p["precision"] not in ("f32", "bf16"))
cc, ci = curve("card", 2), curve("card", 2, int8=True)
lc = {t: curve("llama.cpp", t) for t in (1, 2)}
lbest = min((1, 2), key=lambda t: lc[t][1])
print(f"Cost curve, batch 1: one pass of n positions (logits at each) after {64} cached tokens; ms median of rounds' medians")
print(f"(card: stored format {card_prec}, 2 threads; llama.cpp: controlledEvaluate + rollback, best thread count = {lbest})")
print(f"{'n':>4}{'card ms':>10}{'card ratio':>12}{'int8 ms':>10}{'int8 ratio':>12}{'llama t1 ms':>13}{'llama t2 ms':>13}{'llama best ratio':>18}{'card/llama ms':>15}{'int8/llama ms':>15}")
for n in sorted(cc):
    lb = lc[lbest][n]
    i8 = ci.get(n, float("nan"))
    print(f"{n:>4}{cc[n]:>10.2f}{cc[n] / cc[1]:>12.2f}{i8:>10.2f}{i8 / ci.get(1, float('nan')):>12.2f}"
          f"{lc[1][n]:>13.2f}{lc[2][n]:>13.2f}{lb / lc[lbest][1]:>18.2f}{cc[n] / lb:>15.2f}{i8 / lb:>15.2f}")
PY
