"""card's model and CARD's noise in plain PyTorch, for the training peer `bench_pytorch.py`.

Tensor names and shapes follow card's (src/model/layer.rs); the noise, the tail masks and the
context weights follow src/noise/tail_mask.rs, src/objective/card.rs and context_weights.rs.
What matches card, and how, is told in bench_pytorch.py's docstring.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# The model (src/model/layer.rs): names and shapes as card's tensors.


def rms_norm(x, w, eps):
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    """Half-split RoPE (candle's `rope`): x [B, H, T, hd], cos/sin [T, hd/2]."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Layer(nn.Module):
    def __init__(self, m):
        super().__init__()
        d, f = m["d_model"], m["d_ff"]
        self.q, self.kv = m["n_heads"], m["n_kv_heads"] or m["n_heads"]
        self.hd, self.eps = d // self.q, m["norm_eps"]
        qkv = (self.q + 2 * self.kv) * self.hd
        self.attn_norm = nn.Parameter(torch.ones(d))  # layers.N.attn_norm.weight
        self.wqkv = nn.Parameter(torch.empty(qkv, d))  # layers.N.attn.wqkv.weight
        self.bqkv = nn.Parameter(torch.zeros(qkv)) if m["qkv_bias"] else None
        self.wo = nn.Parameter(torch.empty(d, self.q * self.hd))  # layers.N.attn.wo.weight
        self.ffn_norm = nn.Parameter(torch.ones(d))  # layers.N.ffn_norm.weight
        self.w_gate_up = nn.Parameter(torch.empty(2 * f, d))  # layers.N.ffn.w_gate_up.weight
        self.w_down = nn.Parameter(torch.empty(d, f))  # layers.N.ffn.w_down.weight

    def attention(self, h, cos, sin, sdpa):
        b, t, _ = h.shape
        qkv = F.linear(h, self.wqkv, self.bqkv).view(b, t, self.q + 2 * self.kv, self.hd)
        qkv = qkv.transpose(1, 2)  # [B, heads, T, hd]
        q, k, v = qkv.split([self.q, self.kv, self.kv], dim=1)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.kv != self.q:  # query head h reads key/value head h // group
            k = k.repeat_interleave(self.q // self.kv, dim=1)
            v = v.repeat_interleave(self.q // self.kv, dim=1)
        if sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
            hidden = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1)
            y = s.masked_fill(hidden, float("-inf")).softmax(-1) @ v
        return F.linear(y.transpose(1, 2).reshape(b, t, self.q * self.hd), self.wo)

    def forward(self, x, cos, sin, sdpa):
        x = x + self.attention(rms_norm(x, self.attn_norm, self.eps), cos, sin, sdpa)
        gate, up = F.linear(rms_norm(x, self.ffn_norm, self.eps), self.w_gate_up).chunk(2, -1)
        return x + F.linear(F.silu(gate) * up, self.w_down)


class Transformer(nn.Module):
    def __init__(self, m, sdpa=True):
        super().__init__()
        v, d = m["vocab_size"], m["d_model"]
        self.eps, self.sdpa = m["norm_eps"], sdpa
        self.embed = nn.Parameter(torch.empty(v, d))  # embed.weight
        self.layers = nn.ModuleList(Layer(m) for _ in range(m["n_layers"]))
        self.norm = nn.Parameter(torch.ones(d))  # norm.weight
        self.head = None if m["tie_embeddings"] else nn.Parameter(torch.empty(v, d))
        hd = d // m["n_heads"]
        inv = 1.0 / m["rope_theta"] ** (torch.arange(0, hd // 2, dtype=torch.float64) * 2 / hd)
        ang = torch.arange(m["max_seq_len"], dtype=torch.float64)[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        # Params::init (src/model/params.rs): N(0, std), residual outputs std/sqrt(2·layers).
        std = m["init_std"]
        nn.init.normal_(self.embed, std=std)
        if self.head is not None:
            nn.init.normal_(self.head, std=std)
        for layer in self.layers:
            nn.init.normal_(layer.wqkv, std=std)
            nn.init.normal_(layer.w_gate_up, std=std)
            nn.init.normal_(layer.wo, std=std / math.sqrt(2 * m["n_layers"]))
            nn.init.normal_(layer.w_down, std=std / math.sqrt(2 * m["n_layers"]))

    def forward(self, ids):
        t = ids.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = F.embedding(ids, self.embed)
        for layer in self.layers:
            x = layer(x, cos, sin, self.sdpa)
        head = self.embed if self.head is None else self.head
        return F.linear(rms_norm(x, self.norm, self.eps), head)


# ---------------------------------------------------------------------------------------------
# CARD's noise and weights (src/noise/tail_mask.rs, src/objective/card.rs, context_weights.rs).


def noise_levels(n, spacing, rng):
    if spacing == "stratified":
        return (rng.random() + np.arange(n)) / n
    return rng.random(n)


def tail_masks(t, length, noise, rng):
    """Masks [B, L] (True = [MASK]): N = floor(tL) among the last W = min(L, ceil(λN))."""
    b = len(t)
    n = np.minimum(np.floor(np.clip(t, 0.0, 1.0) * length).astype(np.int64), length)
    if noise["mode"] == "soft":
        window = np.minimum(np.ceil(noise["tail_factor"] * n).astype(np.int64), length)
    elif noise["mode"] == "strict":
        window = n
    else:  # uniform
        window = np.full(b, length)
    pos = np.arange(length)[None, :]
    inside = pos >= (length - window)[:, None]
    if noise["count"] == "exact":
        # A uniform subset of N distinct window positions: the N smallest of random keys.
        keys = np.where(inside, rng.random((b, length)), np.inf)
        rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
        mask = rank < n[:, None]
    else:  # bernoulli: each window position with probability N/W
        p = np.where(window > 0, n / np.maximum(window, 1), 0.0)
        mask = inside & (rng.random((b, length)) < p[:, None])
    mask[n == 0] = False
    return mask


def decay_matrix(length, p):
    """D[i, k] = (1 − p)^(k − i) for i ≤ k: S = C · D is card's recurrence S_k = C_k + (1−p)S_{k−1}."""
    i = np.arange(length)
    e = i[None, :] - i[:, None]
    return np.where(e >= 0, (1.0 - p) ** np.maximum(e, 0), 0.0)


class CardNoise:
    def __init__(self, cfg, mask_id):
        self.noise, self.w, self.mask_id = cfg["noise"], cfg["weights"], mask_id
        self.len = cfg["train"]["seq_len"]
        self.decay = decay_matrix(self.len - 1, self.w["p"])

    def corrupt(self, x0, rng):
        """x0 [B, L] → (input x_t[:, :L−1], targets x0[:, 1:], weights [B, L−1] f32, denom)."""
        b, length = x0.shape
        want = self.noise["ar_fraction"] * b
        frac = want - math.floor(want)
        clean = min(b, math.floor(want) + int(frac > 0 and rng.random() < frac))
        t = np.concatenate([np.zeros(clean), noise_levels(b - clean, self.noise["t_sampling"], rng)])
        mask = tail_masks(t, length, self.noise, rng)
        xt = np.where(mask, self.mask_id, x0)
        if self.w["enabled"]:
            m = mask[:, : length - 1].astype(np.float64)
            prev = np.concatenate([np.zeros((b, 1)), m[:, :-1]], axis=1)
            s = (m * (1.0 + prev)) @ self.decay
            w = (1.0 / (self.w["beta"] + s)).astype(np.float32)
        else:
            w = np.ones((b, length - 1), dtype=np.float32)
        if self.w["normalize"] == "weight":
            denom = float(w.astype(np.float64).sum())
        else:
            denom = float(w.size)
        return xt[:, :-1], x0[:, 1:], w, denom
