#!/usr/bin/env python3
"""PyTorch CPU training baseline for `card bench train --preset bench-5m` (issue 5).

A GPT-2-style model of the same size and FLOPs as the bench-5m preset: d_model 256,
4 layers, 4 heads, GELU MLP 4*d, learned positions, tied head, vocab 4096, seq 256,
batch 8, f32, AdamW, a per-token weighted cross-entropy (as CARD's loss). Prints the
median step time and tokens/s of each attention variant, timed steps interleaved so a
noisy machine slows both alike.

    pip install torch numpy      # CPU is enough; PyPI's default wheel works
    python scripts/bench_pytorch.py --threads 2 --steps 10 --warmup 2 --json
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, sdpa):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def attend(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
            causal = torch.ones(t, t, dtype=torch.bool).triu(1)
            y = s.masked_fill(causal, float("-inf")).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        x = x + self.attend(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab, d, layers, heads, seq, sdpa):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads, sdpa) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x) @ self.tok.weight.t()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vocab, d, layers, heads = 4096, 256, 4, 4
    runs = {}
    for name, sdpa in [("pytorch-sdpa", True), ("pytorch-plain", False)]:
        model = Gpt(vocab, d, layers, heads, a.seq, sdpa)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
        runs[name] = (model, opt, [])
    ids = torch.randint(0, vocab, (a.batch, a.seq + 1))
    weights = torch.rand(a.batch, a.seq)

    def step(model, opt):
        logits = model(ids[:, :-1])
        ce = F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1), reduction="none")
        loss = (ce * weights.reshape(-1)).sum() / weights.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for model, opt, _ in runs.values():
        for _ in range(a.warmup):
            step(model, opt)
    for _ in range(a.steps):
        for model, opt, times in runs.values():
            t = time.perf_counter()
            step(model, opt)
            times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in next(iter(runs.values()))[0].parameters())
    out = []
    for name, (_, _, times) in runs.items():
        med = statistics.median(times)
        out.append(
            {
                "implementation": name,
                "torch": torch.__version__,
                "threads": a.threads,
                "params": params,
                "step_time_s": med,
                "tokens_per_s": a.batch * a.seq / med,
            }
        )
        print(f"{name:<14} step {med:.4f} s  {a.batch * a.seq / med:,.0f} tok/s  ({params:,} params)")
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
