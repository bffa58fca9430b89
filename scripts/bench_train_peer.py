#!/usr/bin/env python3
"""card's training throughput against the PyTorch peer of the same shape, alternated.

Each round runs `card bench train` once, then `scripts/bench_pytorch.py` once, with the same
model (a preset or `--from` a checkpoint), batch, objective (CARD), thread count and steps, so
a machine that slows down slows both. Prints every round's tokens/s, the medians, and card's
best mode over PyTorch's best mode (eager, compile, autocast bf16, compile + autocast).

    python3 scripts/bench_train_peer.py --from data/models/smollm2/run \\
        --set train.batch_size=4 --rounds 2 --steps 3 --warmup 1
    python3 scripts/bench_train_peer.py --preset bench-5m --rounds 3 --steps 10

Needs `pip install torch numpy` and a built `target/release/card`. Run it on a quiet machine.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def last_json(text, what):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("[") or line.startswith("{"):
            return json.loads(line)
    sys.exit(f"{what} printed no JSON:\n{text[-2000:]}")


def run(cmd, what):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{what} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="a preset (default bench-5m)")
    src.add_argument("--from", dest="from_ckpt", default=None, help="a checkpoint's shape")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode and round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compute", default="f32,bf16", help="card's compute types")
    ap.add_argument("--modes", default="all", help="bench_pytorch.py's --mode")
    ap.add_argument("--card", default=str(REPO / "target/release/card"))
    ap.add_argument("--out", default=None, help="also write the rows and summary as JSON here")
    a = ap.parse_args()
    if a.rounds < 1 or a.steps < 1:
        sys.exit("--rounds and --steps must be at least 1")
    model = ["--from", a.from_ckpt] if a.from_ckpt else ["--preset", a.preset or "bench-5m"]
    sets = [x for s in a.sets for x in ("--set", s)]
    steps = ["--steps", str(a.steps), "--warmup", str(a.warmup)]
    card_cmd = [a.card, "--threads", str(a.threads), "bench", "train", *model, "--objective",
                "card", "--compute", a.compute, *sets, *steps, "--json"]
    torch_cmd = [sys.executable, "scripts/bench_pytorch.py", "--threads", str(a.threads), *model,
                 *sets, *steps, "--mode", a.modes, "--json"]
    rows = {}  # name -> [tokens/s per round]
    extra = {}
    for r in range(a.rounds):
        card = last_json(run(card_cmd, "card bench train"), "card")
        for c in card if isinstance(card, list) else [card]:
            name = f"card-{c['compute']}"
            rows.setdefault(name, []).append(c["tokens_per_s"])
            extra[name] = {"peak_rss_mb": c["peak_rss_mb"], "mfu": c["mfu"],
                           "params": c["params"], "tokens_per_step": c["tokens_per_step"]}
        for t in last_json(run(torch_cmd, "bench_pytorch.py"), "pytorch"):
            if "tokens_per_s" in t:
                rows.setdefault(t["implementation"], []).append(t["tokens_per_s"])
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{'implementation':<36} {'tokens/s per round':<32} {'median':>9}")
    for k, v in rows.items():
        print(f"{k:<36} {', '.join(f'{x:,.0f}' for x in v):<32} {med[k]:>9,.1f}")
    cards = {k: x for k, x in med.items() if k.startswith("card-")}
    torches = {k: x for k, x in med.items() if k.startswith("pytorch-")}
    summary = {}
    if cards and torches:
        cb, tb = max(cards, key=cards.get), max(torches, key=torches.get)
        summary = {"card_best": cb, "pytorch_best": tb, "ratio": cards[cb] / torches[tb]}
        print(f"card's best ({cb}, {cards[cb]:,.1f} tokens/s) / PyTorch's best ({tb}, "
              f"{torches[tb]:,.1f}) = {summary['ratio']:.2f}x")
    for k, e in extra.items():
        print(f"{k}: peak RSS {e['peak_rss_mb']:.0f} MiB, MFU {100 * e['mfu']:.1f}%, "
              f"{e['params']:,} params, {e['tokens_per_step']} tokens/step")
    if a.out:
        Path(a.out).write_text(json.dumps({"rounds": rows, "median": med, "card": extra,
                                           "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
