#!/usr/bin/env python3
"""Tabulate and plot acceptance of [MASK] drafts by slot against training tokens, from the
`card bench decode --json` files scripts/smollm2_acceptance_curve.sh leaves in RESULTS/raw
(one per checkpoint, named ckpt-<step>.json). Writes RESULTS/acceptance.csv,
RESULTS/acceptance.svg and RESULTS/report.md.

    python3 scripts/acceptance_curve_report.py results/smollm2-curve runs/smol-curve
"""
import csv
import json
import pathlib
import sys

TOKENS_PER_STEP = 4 * 256


def load(raw_dir):
    points = []
    for f in sorted(raw_dir.glob("ckpt-*.json")):
        step = int(f.stem.split("-")[1])
        data = json.loads(f.read_text())
        for r in data["rows"]:
            # Acceptance is the same for every weight format (greedy, same text): f32 only.
            if r["decoder"] != "verify" or r["batch"] != 1 or r["weights"] != "f32":
                continue
            slots = (r["acceptance_by_slot"] + [None] * 4)[:4]
            points.append(
                {
                    "step": step,
                    "tokens": step * TOKENS_PER_STEP,
                    "set": r["prompt_set"],
                    "weights": r["weights"],
                    "slot1": slots[0],
                    "slot2": slots[1],
                    "slot3": slots[2],
                    "slot4": slots[3],
                    "tokens_per_forward": r["tokens_per_forward"],
                    "same_as_ar": r["same_as_ar"],
                    "judge_nll": r["judge_nll"],
                }
            )
    return points


def fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def svg(points, path):
    """Slot 1 and slot 2 against training tokens, one line per set and slot."""
    w, h, left, bottom, top, right = 640, 360, 60, 40, 30, 150
    xs = sorted({p["tokens"] for p in points})
    xmax = max(xs) or 1
    ymax = max([p[s] or 0 for p in points for s in ("slot1", "slot2")] + [0.1])
    ymax = min(1.0, (int(ymax * 10) + 1) / 10)
    X = lambda t: left + (w - left - right) * t / xmax
    Y = lambda a: h - bottom - (h - bottom - top) * a / ymax
    colours = {"prose": "#1f77b4", "probes": "#d62728"}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">SmolLM2-135M: [MASK] draft acceptance by slot against training tokens</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
    ]
    for t in xs:
        out.append(f'<text x="{X(t):.1f}" y="{h - bottom + 14}" text-anchor="middle">{t / 1000:.0f}K</text>')
    for i in range(0, int(round(ymax * 10)) + 1):
        a = i / 10
        out.append(f'<text x="{left - 6}" y="{Y(a) + 4:.1f}" text-anchor="end">{a:.1f}</text>')
        out.append(f'<line x1="{left}" y1="{Y(a):.1f}" x2="{w - right}" y2="{Y(a):.1f}" stroke="#ddd"/>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle">training tokens</text>')
    legend_y = top + 10
    for s in sorted({p["set"] for p in points}):
        for slot, dash in (("slot1", ""), ("slot2", ' stroke-dasharray="5,3"')):
            pts = sorted((p["tokens"], p[slot]) for p in points if p["set"] == s and p[slot] is not None)
            if not pts:
                continue
            line = " ".join(f"{X(t):.1f},{Y(a):.1f}" for t, a in pts)
            c = colours.get(s, "black")
            out.append(f'<polyline points="{line}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
            for t, a in pts:
                out.append(f'<circle cx="{X(t):.1f}" cy="{Y(a):.1f}" r="3" fill="{c}"/>')
            out.append(f'<line x1="{w - right + 10}" y1="{legend_y}" x2="{w - right + 34}" y2="{legend_y}" stroke="{c}" stroke-width="2"{dash}/>')
            out.append(f'<text x="{w - right + 38}" y="{legend_y + 4}">{s}, {slot.replace("slot", "slot ")}</text>')
            legend_y += 16
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main():
    results = pathlib.Path(sys.argv[1])
    run = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None
    points = load(results / "raw")
    if not points:
        sys.exit(f"no measurements under {results / 'raw'}")
    points.sort(key=lambda p: (p["set"], p["tokens"]))
    fields = list(points[0].keys())
    with open(results / "acceptance.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        wr.writerows(points)
    svg(points, results / "acceptance.svg")
    lines = [
        "# SmolLM2-135M: acceptance of [MASK] drafts against training tokens",
        "",
        "Made by `scripts/smollm2_acceptance_curve.sh` (the command, the recipe and the machine are in",
        "docs/results.md). The lossless verifier, K = 4 [MASK] slots sent every pass, greedy, batch 1,",
        "128 tokens; acceptance of slot i = share of the passes that check its draft (every earlier",
        "draft stood) in which it stood. Step 0 is the base model, which never saw [MASK].",
        "",
        "| set | steps | tokens | slot 1 | slot 2 | slot 3 | slot 4 | tokens/forward | = AR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p['set']} | {p['step']} | {p['tokens']:,} | {fmt(p['slot1'])} | {fmt(p['slot2'])} | "
            f"{fmt(p['slot3'])} | {fmt(p['slot4'])} | {fmt(p['tokens_per_forward'], 2)} | {fmt(p['same_as_ar'], 2)} |"
        )
    if run is not None and (run / "report.json").exists():
        r = json.loads((run / "report.json").read_text())
        lines += [
            "",
            f"Held-out bits per byte on real text (AR scoring): {r['bpb_before']:.4f} before, "
            f"{r['bpb_after']:.4f} after {r['steps']} steps ({r['self_share']:.2f} of the stream "
            f"self-distilled, {r['self_tokens']:,} continuation tokens).",
        ]
    lines += ["", "![acceptance by slot against training tokens](acceptance.svg)", ""]
    (results / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
