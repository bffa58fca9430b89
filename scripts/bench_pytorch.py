#!/usr/bin/env python3
"""PyTorch CPU peer of `card bench train --preset bench-5m --objective card` (issue 17, goal 5).

The same model, objective, optimizer and step as card's trainer, written in plain PyTorch, so
that the tokens/s of the two can be compared like for like. The shape and every setting are
read from the preset's TOML (`configs/bench-5m.toml` by default) over a copy of card's
defaults (`src/config/model.rs`, `src/config/sections.rs`), so the same file drives both.

What matches card (file of the card side in brackets):
- Model [src/model/layer.rs, src/model/mod.rs, src/model/candle.rs, src/model/ops.rs]:
  bench-5m is d_model 256, 4 layers, 4 heads (head dim 64), SwiGLU d_ff 688, vocab 4096, no
  biases, embedding tied to the head. Pre-norm: x + Wo·attn(RMSNorm(x)), then
  x + W_down·(SiLU(gate) ⊙ up) of W_gate_up·RMSNorm(x), a final RMSNorm, logits = h·Eᵀ. RMSNorm
  is x / sqrt(mean(x²) + eps) · w with eps = model.norm_eps (1e-5). Q, K and V come from one
  fused [3d, d] matrix (all query heads, then all key heads, then all value heads), gate and up
  from one fused [2·d_ff, d] matrix (gate first). RoPE with θ = model.rope_theta (10 000) in
  half-split order (pairs (i, i + hd/2), candle's `rope`, NOT interleaved), inverse frequencies
  θ^(−2i/hd) computed in f64 as card does; causal attention scaled by 1/sqrt(hd). Init
  N(0, 0.02) for the embedding and input projections, 0.02/sqrt(2·n_layers) for Wo and W_down,
  norm weights 1. The parameter count is printed and checked against card's formula
  (`ModelConfig::n_params`): 4,212,992 for bench-5m, which `card bench train` prints too.
- Objective [src/objective/card.rs, src/objective/context_weights.rs, src/noise/]: one noise
  level per sequence, t ~ U[0, 1) (noise.t_sampling = "uniform"; "stratified" shifts one draw
  by i/B); noise.ar_fraction of the rows clean (0 for bench-5m). Soft tail masking over the
  L = train.seq_len (256) tokens of x_0: N = floor(t·L) [MASK]s placed uniformly without
  replacement among the last W = min(L, ceil(λ·N)) positions, λ = noise.tail_factor (1.5),
  exact count (the "strict", "uniform" and "bernoulli" variants are implemented too). [MASK]
  is id 1, the id card's trained tokenizer gives it (EOT is 0). Context weights over the mask
  of x_t's first L−1 positions: C_i = m_i·(1 + m_{i−1}), S_n = Σ_{i≤n} C_i (1−p)^(n−i),
  w_n = 1/(β + S_n) with p = 0.5, β = 1, computed in f64 and stored as f32 (card's recurrence,
  here as one matrix product). Inputs x_t[..L−1], targets x_0[1..] (every position
  supervised), loss Σ w·CE / Σ w (weights.normalize = "weight"; "count" divides by the number
  of targets), CE in f32.
- Step [src/train/mod.rs, src/train/optim.rs]: everything card's `Trainer::step` does is
  inside the timed step here too: drawing the batch, drawing the noise and weights,
  forward, backward, the loss read back as a number (card checks it is finite), global-norm
  clipping at train.grad_clip (1.0; scale max/(norm + 1e-6) only when the norm exceeds it),
  AdamW (β1 0.9, β2 0.95, eps 1e-8, decoupled weight decay 0.1 on parameters of rank ≥ 2
  only: the embedding and the matrices, not the norm weights), the learning rate of card's
  schedule (linear warm-up lr·(s+1)/warmup_steps, then cosine to lr·min_lr_ratio; lr 3e-4,
  warm-up 100 steps, max_steps = warmup + steps as `card bench train` sets it, so a short
  run stays in the warm-up), and the EMA of the weights (train.ema is on by default, decay
  min(0.999, (1+s)/(10+s)), updated after every step). train.grad_accum micro-batches are
  accumulated as card does (1 for bench-5m). Batch 8 × 256 tokens = 2,048 tokens per step.
- Measurement [src/bench/train.rs]: untimed warm-up steps (at least 1) per mode, then timed
  steps interleaved round-robin across modes (card interleaves objectives), the median step
  time and tokens/s (batch × seq_len tokens per step, as card counts them). The model FLOP/s
  use card's `train_flops_per_token` (6 × matmul parameters + attention, full T×T) so they
  compare with the MFU card prints.

What does not match (honestly):
- Data: uniform random ids in [0, vocab) without the [MASK] id, not windows of the embedded
  corpus; the cost of producing a batch is negligible either way, but the loss values are
  not comparable with card's (random data sits near ln(vocab) ≈ 8.3).
- Random streams: numpy's PCG64 seeded per step (like card's per-step noise stream) but not
  card's streams, so the particular t, mask positions, data and initial weights differ; the
  distributions are the same. Every mode sees the same batches and noise as the others.
- Kernels: card runs its own fused CPU kernels (attention with RoPE inside, RMSNorm, SwiGLU,
  NLL) and gemm; PyTorch runs SDPA (`--attention math`: explicit softmax(QKᵀ)V),
  F.rms_norm, MKL/oneDNN. Same mathematics, different rounding. Clipping's norm is summed in
  f32 here (f64 in card).
- Modes: only "eager" (f32) is the like-for-like peer of card's f32 trainer. "compile"
  (torch.compile with the default inductor backend, f32) compiles the model and the loss
  (forward and, through AOTAutograd, backward); noise, clipping, AdamW and EMA stay eager.
  "autocast-bf16" is eager under torch.autocast("cpu", dtype=torch.bfloat16) with f32 master
  weights (matmuls and attention in bf16, the residual stream, norms, loss and optimizer in
  f32); card has no counterpart (its train.dtype = "bf16" holds the weights themselves in bf16,
  and its fused CPU kernels run f32/f64 only), so those rows show what bf16 buys PyTorch here.
  "compile+autocast-bf16" is both.
- Not measured here: card's peak RSS / growth and its matmul-peak MFU (card measures them in
  its own processes); validation, checkpoints and logging are outside card's timed step too.
- AdamW is torch.optim.AdamW (`--adamw-impl`: its default per-tensor loop on CPU, `foreach`,
  or `fused`); same update rule as card's, implementation of torch's choosing.

Side by side (one after the other, not at once, with the same thread count):

    pip install torch numpy      # CPU is enough; PyPI's default wheel works
    card --threads 2 bench train --preset bench-5m --objective card --steps 10 --warmup 2 --json
    python3 scripts/bench_pytorch.py --threads 2 --steps 10 --warmup 2 --json
    python3 scripts/bench_pytorch.py --threads 2 --mode eager --steps 10 --warmup 2 --json

A checkpoint's shape (e.g. the imported SmolLM2-135M, issue 36), the same on both sides:

    card --threads 2 bench train --from data/models/smollm2/run --objective card \
        --set train.batch_size=4 --compute f32,bf16 --steps 3 --warmup 1
    python3 scripts/bench_pytorch.py --threads 2 --from data/models/smollm2/run \
        --set train.batch_size=4 --steps 3 --warmup 1

`scripts/bench_train_peer.py` runs the two alternated and prints the ratio.

`--mode` takes eager, compile, autocast-bf16, compile+autocast-bf16, a comma-separated list,
or all (default: all four). `--json` prints one JSON list (one object per mode) as the last line.
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from card_torch import CardNoise, Transformer

REPO = Path(__file__).resolve().parent.parent

# card's defaults (src/config/model.rs, src/config/sections.rs), the base every preset overlays.
DEFAULTS = {
    "model": {
        "vocab_size": 8192,
        "d_model": 256,
        "n_layers": 4,
        "n_heads": 4,
        "n_kv_heads": None,
        "qkv_bias": False,
        "d_ff": 688,
        "max_seq_len": 256,
        "rope_theta": 10_000.0,
        "norm_eps": 1e-5,
        "tie_embeddings": True,
        "init_std": 0.02,
    },
    "noise": {
        "mode": "soft",
        "tail_factor": 1.5,
        "count": "exact",
        "t_sampling": "uniform",
        "ar_fraction": 0.0,
    },
    "weights": {"enabled": True, "p": 0.5, "beta": 1.0, "normalize": "weight"},
    "train": {
        "objective": "card",
        "seq_len": 256,
        "batch_size": 8,
        "grad_accum": 1,
        "max_steps": 1000,
        "lr": 3e-4,
        "min_lr_ratio": 0.1,
        "warmup_steps": 100,
        "schedule": "cosine",
        "weight_decay": 0.1,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-8,
        "grad_clip": 1.0,
        "ema": True,
        "ema_decay": 0.999,
        "seed": 0,
        "dtype": "f32",
        "freeze_embeddings": False,
        "freeze_layers": 0,
    },
}

# configs/bench-5m.toml, for a Python without tomllib (< 3.11) and without tomli.
BENCH_5M = {
    "model": {"vocab_size": 4096, "d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 688,
              "max_seq_len": 256},
    "train": {"seq_len": 256, "batch_size": 8},
}

# The [MASK] id of card's trained tokenizers (src/data/tokenizer.rs: EOT 0, MASK 1).
MASK_ID = 1

MODES = ["eager", "compile", "autocast-bf16", "compile+autocast-bf16"]


def checkpoint_dir(path):
    """A run directory's latest checkpoint, or the checkpoint directory itself."""
    p = Path(path)
    if (p / "latest").is_file():
        p = p / (p / "latest").read_text().strip()
    if not (p / "config.toml").is_file():
        sys.exit(f"{path}: no checkpoint (config.toml) there")
    return p


def mask_id_of(ckpt):
    """The [MASK] id of a checkpoint's tokenizer (`<|mask|>`, src/data/mod.rs; card adds it on
    import), else card's 1."""
    try:
        tok = json.loads((ckpt / "tokenizer.json").read_text())
        return next(t["id"] for t in tok.get("added_tokens", []) if t["content"] == "<|mask|>")
    except (OSError, ValueError, StopIteration, KeyError):
        return 1


def apply_sets(cfg, sets):
    """`section.key=value` overrides, as card's `--set` (values parsed as TOML scalars)."""
    for item in sets:
        key, _, raw = item.partition("=")
        section, _, name = key.partition(".")
        if section not in cfg or name not in cfg[section]:
            sys.exit(f"--set {item}: unknown key {key}")
        try:
            import tomllib
            value = tomllib.loads(f"v = {raw}")["v"]
        except Exception:
            value = raw.strip('"')
        cfg[section][name] = value


def load_config(preset):
    """card's defaults overlaid with a preset (a name under configs/ or a .toml path)."""
    path = Path(preset) if preset.endswith(".toml") else REPO / "configs" / f"{preset}.toml"
    table = None
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            tomllib = None
    if tomllib is not None and path.exists():
        with open(path, "rb") as f:
            table = tomllib.load(f)
        source = str(path)
    elif preset == "bench-5m":
        table, source = BENCH_5M, "built-in copy of configs/bench-5m.toml"
    else:
        sys.exit(f"cannot read preset {preset} ({path}; Python < 3.11 needs `pip install tomli`)")
    cfg = {s: dict(v) for s, v in DEFAULTS.items()}
    for section, values in table.items():
        if section not in cfg:  # data, mdlm, bd3lm: nothing here reads them
            continue
        for k, v in values.items():
            if k in cfg[section]:
                cfg[section][k] = v
    m, t = cfg["model"], cfg["train"]
    if t["objective"] != "card":
        print(f"note: the preset's train.objective is {t['objective']}; this script trains CARD")
    if t["freeze_embeddings"] or t["freeze_layers"]:
        sys.exit("train.freeze_* is not implemented here")
    if m["d_model"] % m["n_heads"] or (m["d_model"] // m["n_heads"]) % 2:
        sys.exit("model: d_model must split into n_heads heads of even width")
    if t["seq_len"] > m["max_seq_len"]:
        sys.exit("train.seq_len exceeds model.max_seq_len")
    return cfg, source


def card_n_params(m):
    """card's ModelConfig::n_params (src/config/model.rs), from the shapes alone."""
    d, f, v = m["d_model"], m["d_ff"], m["vocab_size"]
    hd = d // m["n_heads"]
    kv = m["n_kv_heads"] or m["n_heads"]
    qkv = (m["n_heads"] + 2 * kv) * hd
    bias = qkv if m["qkv_bias"] else 0
    per_layer = 2 * d + d * qkv + bias + d * d + 3 * d * f
    head = 0 if m["tie_embeddings"] else v * d
    return v * d + m["n_layers"] * per_layer + d + head


def card_train_flops_per_token(m, seq_len):
    """card's ModelConfig::train_flops_per_token: 6 × (matmul params + full T×T attention)."""
    d, f, v, n = m["d_model"], m["d_ff"], m["vocab_size"], m["n_layers"]
    hd = d // m["n_heads"]
    qkv = (m["n_heads"] + 2 * (m["n_kv_heads"] or m["n_heads"])) * hd
    matmul_params = n * (d * qkv + d * d + 3 * d * f) + v * d
    return 6.0 * (matmul_params + n * 2.0 * seq_len * d)


# ---------------------------------------------------------------------------------------------
# The trainer step (src/train/mod.rs, src/train/optim.rs).


def learning_rate(tc, step):
    if step < tc["warmup_steps"]:
        return tc["lr"] * (step + 1) / tc["warmup_steps"]
    if tc["schedule"] == "constant":
        return tc["lr"]
    span = max(tc["max_steps"] - tc["warmup_steps"], 1)
    progress = min((step - tc["warmup_steps"]) / span, 1.0)
    low = tc["lr"] * tc["min_lr_ratio"]
    return low + 0.5 * (tc["lr"] - low) * (1.0 + math.cos(math.pi * progress))


class Run:
    """One mode's model, optimizer, EMA and step counter, seeded like every other mode's."""

    def __init__(self, mode, cfg, args):
        self.mode, self.cfg, self.args = mode, cfg, args
        self.compiled = mode.startswith("compile")
        self.autocast = mode.endswith("autocast-bf16")
        torch.manual_seed(cfg["train"]["seed"])
        self.model = Transformer(cfg["model"], sdpa=args.attention == "sdpa")
        self.params = list(self.model.parameters())
        tc = cfg["train"]
        groups = [
            {"params": [p for p in self.params if p.dim() >= 2], "weight_decay": tc["weight_decay"]},
            {"params": [p for p in self.params if p.dim() < 2], "weight_decay": 0.0},
        ]
        impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
        self.opt = torch.optim.AdamW(groups, lr=tc["lr"], betas=(tc["beta1"], tc["beta2"]),
                                     eps=tc["eps"], **impl[args.adamw_impl])
        self.ema = [p.detach().clone() for p in self.params] if tc["ema"] else None
        self.noise = CardNoise(cfg, MASK_ID)
        self.step_no = 0
        self.times, self.last_loss = [], float("nan")

        model, autocast = self.model, self.autocast

        def loss_fn(inp, tgt, w, denom):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(inp)
            ce = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none")
            return (ce * w.flatten()).sum() / denom

        self.loss_fn = torch.compile(loss_fn) if self.compiled else loss_fn

    def batch(self, micro):
        """The step's clean batch and its noise, from per-step seeded streams (card: one
        noise stream per step and micro-batch, src/runtime/rng.rs)."""
        tc, m = self.cfg["train"], self.cfg["model"]
        index = self.step_no * tc["grad_accum"] + micro
        data_rng = np.random.default_rng([tc["seed"], 1, index])
        noise_rng = np.random.default_rng([tc["seed"], 2, index])
        # Uniform ids in [0, vocab) without the [MASK] id.
        x0 = data_rng.integers(0, m["vocab_size"] - 1, size=(tc["batch_size"], tc["seq_len"]))
        x0 = x0 + (x0 >= MASK_ID)
        inp, tgt, w, denom = self.noise.corrupt(x0, noise_rng)
        return (torch.from_numpy(np.ascontiguousarray(inp)), torch.from_numpy(np.ascontiguousarray(tgt)),
                torch.from_numpy(np.ascontiguousarray(w)), torch.tensor(denom, dtype=torch.float32))

    def step(self):
        tc = self.cfg["train"]
        accum = tc["grad_accum"]
        loss_sum = 0.0
        for micro in range(accum):
            inp, tgt, w, denom = self.batch(micro)
            loss = self.loss_fn(inp, tgt, w, denom)
            loss_sum += loss.item()
            (loss / accum if accum > 1 else loss).backward()
        grads = [p.grad for p in self.params]
        # clip_grad_norm (src/train/optim.rs): scale only when the global norm exceeds the limit.
        if hasattr(torch, "_foreach_norm"):
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
        else:
            norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        if tc["grad_clip"] > 0 and norm > tc["grad_clip"]:
            scale = tc["grad_clip"] / (norm + 1e-6)
            if hasattr(torch, "_foreach_mul_"):
                torch._foreach_mul_(grads, scale)
            else:
                for g in grads:
                    g.mul_(scale)
        lr = learning_rate(tc, self.step_no)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_no += 1
        if self.ema is not None:
            d = min(tc["ema_decay"], (1.0 + self.step_no) / (10.0 + self.step_no))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - d)
        loss = loss_sum / accum
        if not math.isfinite(loss):
            raise RuntimeError(f"{self.mode}: loss became {loss} at step {self.step_no}")
        self.last_loss = loss
        return loss, norm


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown", set()
    name, flags = "unknown", set()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown":
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def parse_modes(s):
    if s == "all":
        return list(MODES)
    modes = [x.strip() for x in s.split(",") if x.strip()]
    for x in modes:
        if x not in MODES:
            sys.exit(f"unknown mode '{x}' (known: {', '.join(MODES)}, all)")
    return modes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-5m",
                    help="a preset under configs/ or a .toml path (default bench-5m)")
    ap.add_argument("--mode", default="all",
                    help=f"{', '.join(MODES)}, a comma-separated list, or all (default)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch compute threads (default: torch's, the physical cores)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per mode (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per mode (min 1)")
    ap.add_argument("--attention", choices=["sdpa", "math"], default="sdpa",
                    help="F.scaled_dot_product_attention (default) or explicit softmax(QKᵀ)V")
    ap.add_argument("--adamw-impl", choices=["default", "foreach", "fused"], default="default",
                    help="torch.optim.AdamW implementation (default: torch's choice)")
    ap.add_argument("--from", dest="from_ckpt", default=None,
                    help="a card checkpoint or run directory: its model shape (as `card bench train "
                         "--from`, with card's fine-tuning defaults); the weights stay random")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides, as card's --set (e.g. train.batch_size=4)")
    ap.add_argument("--json", action="store_true", help="print one JSON list as the last line")
    a = ap.parse_args()
    if a.steps < 1:
        sys.exit("--steps must be at least 1")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    modes = parse_modes(a.mode)
    global MASK_ID
    if a.from_ckpt:
        ckpt = checkpoint_dir(a.from_ckpt)
        cfg, source = load_config(str(ckpt / "config.toml"))
        MASK_ID = mask_id_of(ckpt)
        apply_sets(cfg, ["train.lr=3e-4", "train.warmup_steps=50"])  # card's FINE_TUNE_SETS
    else:
        cfg, source = load_config(a.preset)
    apply_sets(cfg, a.sets)
    m, tc = cfg["model"], cfg["train"]
    warmup = max(a.warmup, 1)
    tc["max_steps"] = warmup + a.steps  # as `card bench train` sets it

    name, flags = cpu_model()
    has = lambda f: getattr(torch.cpu, f)() if hasattr(torch.cpu, f) else None
    print(f"torch {torch.__version__}, {threads} threads, CPU: {name}")
    print(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"avx512_bf16: cpuinfo {'avx512_bf16' in flags}, torch {has('_is_avx512_bf16_supported')}; "
          f"amx_bf16: cpuinfo {'amx_bf16' in flags}, amx_tile torch {has('_is_amx_tile_supported')}")
    params_card = card_n_params(m)
    tokens = tc["batch_size"] * tc["grad_accum"] * tc["seq_len"]
    n = cfg["noise"]
    w = cfg["weights"]
    print(f"config {source}: d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, "
          f"d_ff {m['d_ff']}, vocab {m['vocab_size']}, tied {m['tie_embeddings']}, "
          f"batch {tc['batch_size']} x seq {tc['seq_len']} = {tokens} tokens/step; "
          f"noise {n['mode']} λ={n['tail_factor']} {n['count']} t~{n['t_sampling']}, "
          f"weights p={w['p']} β={w['beta']} /{w['normalize']} (enabled {w['enabled']}), "
          f"[MASK] id {MASK_ID}; AdamW lr {tc['lr']} warm-up {tc['warmup_steps']} "
          f"betas ({tc['beta1']}, {tc['beta2']}) eps {tc['eps']} wd {tc['weight_decay']} "
          f"(rank ≥ 2), clip {tc['grad_clip']}, EMA {tc['ema']} ({tc['ema_decay']})")

    runs, failed = [], []
    for mode in modes:
        r = Run(mode, cfg, a)
        params = sum(p.numel() for p in r.params)
        if params != params_card:
            sys.exit(f"parameter count {params:,} differs from card's {params_card:,}")
        t0 = time.perf_counter()
        try:
            for _ in range(warmup):
                loss, norm = r.step()
        except Exception as e:  # e.g. torch.compile without a working C++ compiler
            print(f"{mode}: failed in warm-up: {type(e).__name__}: {e}".splitlines()[0])
            failed.append({"implementation": f"pytorch-{mode}", "mode": mode, "error": str(e)[:500]})
            continue
        print(f"{mode}: warm-up {warmup} step(s) in {time.perf_counter() - t0:.1f} s, "
              f"loss {loss:.4f}, grad norm {norm:.3f}")
        runs.append(r)
    print(f"params {params_card:,} (card's ModelConfig::n_params for this config: {params_card:,})")

    # Timed steps interleaved round-robin, so a noisy machine slows every mode alike.
    for _ in range(a.steps):
        for r in runs:
            t = time.perf_counter()
            r.step()
            r.times.append(time.perf_counter() - t)

    flops = card_train_flops_per_token(m, tc["seq_len"]) * tokens
    out = []
    for r in runs:
        med = statistics.median(r.times)
        row = {
            "implementation": f"pytorch-{r.mode}",
            "mode": r.mode,
            "torch": torch.__version__,
            "threads": threads,
            "attention": a.attention,
            "adamw_impl": a.adamw_impl,
            "params": params_card,
            "tokens_per_step": tokens,
            "step_time_s": med,
            "tokens_per_s": tokens / med,
            "model_gflop_per_s": flops / med / 1e9,
            "loss": r.last_loss,
        }
        out.append(row)
        print(f"{row['implementation']:<30} step {med:.4f} s  {tokens / med:>9,.0f} tok/s  "
              f"{row['model_gflop_per_s']:.1f} GFLOP/s  loss {r.last_loss:.4f}")
    if a.json:
        print(json.dumps(out + failed))


if __name__ == "__main__":
    main()
