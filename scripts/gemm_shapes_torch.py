#!/usr/bin/env python3
"""The products of `examples/gemm_shapes.rs` (one SmolLM2-135M training step's f32 matmuls)
timed in PyTorch (MKL on x86), the same way: best of 7 rounds of 3, ms and GFLOP/s each.

    python3 scripts/gemm_shapes_torch.py --threads 2
"""
import argparse
import time

import torch

SHAPES = [("qkv", 576, 960), ("wo", 576, 576), ("gate_up", 576, 3072), ("down", 1536, 576),
          ("head", 576, 8192)]
TOKENS = 1024


def best_of(f):
    f()
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(3):
            f()
        best = min(best, (time.perf_counter() - t) / 3)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    torch.set_num_threads(ap.parse_args().threads)
    total = 0.0
    for name, k, n in SHAPES:
        x, w, g = torch.randn(TOKENS, k), torch.randn(n, k), torch.randn(TOKENS, n)
        for what, f in (("fwd", lambda: x @ w.t()), ("dx", lambda: g @ w),
                        ("dw", lambda: g.t() @ x)):
            s = best_of(f)
            total += s
            print(f"{name:8} {what:3} {s * 1e3:7.2f} ms {2 * TOKENS * k * n / s / 1e9:6.1f} GFLOP/s")
    print(f"total {total * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
