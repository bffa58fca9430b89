#!/usr/bin/env python3
"""Plain NumPy reference for a GGUF Llama-family model, used to check card's import.

Independent of card: it reads the GGUF with gguf-py, tokenizes with its own small
byte-level BPE (llama.cpp's rules) and runs the forward pass in NumPy float64 on
dequantized weights. Nothing here is fast or clever on purpose.

  gguf_reference.py tokenize MODEL.gguf --texts texts.json --out tok.json
  gguf_reference.py forward  MODEL.gguf --ids ids.json [--greedy 32] --out DIR [--dtype float64]

tokenize: texts.json is a JSON list of strings; writes [{"text", "ids", "decoded"}].
forward:  ids.json is a JSON list of prompts (lists of ids, or tokenize's output);
          writes DIR/logits.f32 (little-endian float32, [T, V] per prompt, in order)
          and DIR/reference.json (offsets in floats, greedy continuations).
"""
import argparse
import json
import os
import time

import gguf
import numpy as np
import regex

# Pre-tokenizer regexes, copied from llama.cpp (llama-vocab.cpp, llm_tokenizer_bpe),
# keyed by tokenizer.ggml.pre; applied in sequence (see Tokenizer.pre_split).
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
         r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE = {}
for _names, _exprs in [
    ("smollm starcoder refact command-r codeshell exaone minerva", [r"\p{N}", GPT2]),
    ("gpt-2 gpt2 mpt olmo jais trillion", [GPT2]),
    ("llama3 llama-v3 llama-bpe falcon3 dbrx smaug-bpe", [LLAMA3]),
    ("qwen2 stablelm2 deepseek-r1-qwen", [QWEN2]),
]:
    PRE.update({n: _exprs for n in _names.split()})
# llama.cpp's fallback for an unknown/missing tokenizer.ggml.pre (LLAMA_VOCAB_PRE_TYPE_DEFAULT).
DEFAULT_PRE = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]
IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3"}  # llama.cpp: whole word first

NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable-unicode-char table."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in keep]  # -> U+0100.. in byte order
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


class Tokenizer:
    def __init__(self, reader):
        f = reader.fields
        get = lambda k, d=None: f[k].contents() if k in f else d
        assert get("tokenizer.ggml.model") == "gpt2", "only byte-level BPE vocabularies"
        self.tokens = get("tokenizer.ggml.tokens")
        self.types = get("tokenizer.ggml.token_type", [NORMAL] * len(self.tokens))
        self.tok2id = {t: i for i, t in enumerate(self.tokens)}  # later duplicates win, as llama.cpp
        # llama.cpp splits a merge at the first space after the first character.
        self.ranks = {}
        for r, m in enumerate(get("tokenizer.ggml.merges")):
            p = m.index(" ", 1)
            self.ranks[(m[:p], m[p + 1:])] = r
        pre = get("tokenizer.ggml.pre", "default")
        self.exprs = [regex.compile(f"({e})") for e in PRE.get(pre, DEFAULT_PRE)]
        self.ignore_merges = pre in IGNORE_MERGES
        # parse_special=true: control, user-defined and unknown tokens are matched
        # literally, longest first (llama.cpp tokenizer_st_partition).
        self.special = sorted((i for i, t in enumerate(self.types) if t in (UNKNOWN, CONTROL, USER_DEFINED)),
                              key=lambda i: -len(self.tokens[i].encode()))
        self.b2u = bytes_to_unicode()
        self.u2b = {c: b for b, c in self.b2u.items()}
        self.cache = {}

    def split_special(self, text):
        frags = [text]  # str = raw text still to BPE, int = special token id
        for sid in self.special:
            s = self.tokens[sid]
            if not s:
                continue
            out = []
            for fr in frags:
                if isinstance(fr, int):
                    out.append(fr)
                    continue
                while (k := fr.find(s)) >= 0:
                    if k:
                        out.append(fr[:k])
                    out.append(sid)
                    fr = fr[k + len(s):]
                if fr:
                    out.append(fr)
            frags = out
        return frags

    def pre_split(self, text):
        # Each regex splits every piece left by the previous one, matched on its own (so a
        # look-ahead sees the piece's end as end of text); unmatched gaps stay pieces, as in
        # llama.cpp's unicode_regex_split. The outer group makes split() keep the matches.
        pieces = [text]
        for ex in self.exprs:
            pieces = [q for p in pieces for q in ex.split(p) if q]
        return pieces

    def bpe(self, word):
        """Merge the lowest-ranked adjacent pair, leftmost on ties, until none applies."""
        if word in self.cache:
            return self.cache[word]
        if self.ignore_merges and word in self.tok2id:
            return [self.tok2id[word]]
        syms = list(word)
        while len(syms) > 1:
            best, at = None, -1
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            syms[at:at + 2] = [syms[at] + syms[at + 1]]
        ids = []
        for s in syms:
            if s in self.tok2id:
                ids.append(self.tok2id[s])
            else:  # llama.cpp falls back to single-byte tokens, dropping unknown ones
                ids.extend(self.tok2id[c] for c in s if c in self.tok2id)
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []  # add_bos_token is False for the models we check; no BOS added here
        for fr in self.split_special(text):
            if isinstance(fr, int):
                ids.append(fr)
                continue
            for piece in self.pre_split(fr):
                ids.extend(self.bpe("".join(self.b2u[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            t = self.tokens[i]
            if self.types[i] == NORMAL:
                for c in t:
                    out += bytes([self.u2b[c]]) if c in self.u2b else c.encode("utf-8")
            else:  # special tokens are plain text, not byte-encoded
                out += t.encode("utf-8")
        return out.decode("utf-8", errors="replace")


class Llama:
    def __init__(self, reader, dtype):
        f = reader.fields
        arch = f["general.architecture"].contents()
        get = lambda k, d=None: f[f"{arch}.{k}"].contents() if f"{arch}.{k}" in f else d
        self.n_layer = get("block_count")
        self.n_head = get("attention.head_count")
        self.n_kv = get("attention.head_count_kv", self.n_head)
        self.d = get("embedding_length")
        self.hd = self.d // self.n_head
        self.eps = get("attention.layer_norm_rms_epsilon")
        base = get("rope.freq_base", 10000.0)
        n_rot = get("rope.dimension_count", self.hd)
        assert get("rope.scaling.type", "none") in ("none",), "rope scaling not implemented"
        assert n_rot == self.hd, "partial rotary not implemented"
        # llama.cpp: theta_i = pos * base^(-2i/n_rot), i = 0 .. n_rot/2-1
        self.inv_freq = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
        self.dtype = dtype
        self.tensors = {t.name: t for t in reader.tensors}
        W = self.weight
        if "rope_freqs.weight" in self.tensors:
            # Llama 3.x: llama.cpp divides each frequency's angle by its factor.
            self.inv_freq = self.inv_freq / W("rope_freqs.weight").astype(np.float64).reshape(-1)
        self.embd = W("token_embd.weight")
        self.head = W("output.weight") if "output.weight" in self.tensors else self.embd  # tied
        self.out_norm = W("output_norm.weight")
        keys = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
        # Qwen3: an RMSNorm of each query and key head before RoPE; and llama.cpp rotates
        # halves (NeoX) for the Qwen family, adjacent pairs for Llama (whose converter
        # interleaves the q/k rows to match).
        assert arch in ("llama", "qwen3"), f"architecture {arch} not implemented"
        self.neox = arch != "llama"
        if arch == "qwen3":
            keys += ("attn_q_norm", "attn_k_norm")
        extra = {n for n in self.tensors if n.startswith("blk.0.")} - {f"blk.0.{k}.weight" for k in keys}
        assert not extra, f"tensors this reference does not implement: {sorted(extra)}"  # e.g. biases
        self.layers = [{k: W(f"blk.{i}.{k}.weight") for k in keys} for i in range(self.n_layer)]
        assert self.layers[0]["attn_q"].shape == (self.d, self.d)
        assert self.layers[0]["attn_k"].shape == (self.n_kv * self.hd, self.d)

    def weight(self, name):
        t = self.tensors[name]
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        # GGUF shape is [ne0, ne1] = [in, out] with ne0 contiguous, so the NumPy
        # array is [out, in] (rows = output features) and y = x @ W.T.
        return np.ascontiguousarray(a.reshape([int(n) for n in t.shape[::-1]]), dtype=self.dtype)

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        """Normal mode rotates adjacent pairs (2i, 2i+1); NeoX mode the halves (i, i+hd/2).
        x: [T, H, hd]."""
        ang = pos[:, None] * self.inv_freq[None, :]            # [T, hd/2]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        h = self.hd // 2
        first, second = (np.s_[..., :h], np.s_[..., h:]) if self.neox else (np.s_[..., 0::2], np.s_[..., 1::2])
        x0, x1 = x[first], x[second]
        out = np.empty_like(x)
        out[first] = x0 * cos - x1 * sin
        out[second] = x0 * sin + x1 * cos
        return out

    def forward(self, ids, cache):
        """Logits [T, V] for ids at positions cache["n"].. ; the per-layer K/V cache grows."""
        T, p0 = len(ids), cache["n"]
        pos = np.arange(p0, p0 + T, dtype=np.float64)
        x = self.embd[np.asarray(ids)]
        group = self.n_head // self.n_kv
        # Causal mask over all cached + new keys: query p0+i sees keys 0 .. p0+i.
        mask = np.arange(p0 + T)[None, :] > (p0 + np.arange(T))[:, None]
        for li, L in enumerate(self.layers):
            h = self.rms(x, L["attn_norm"])
            q = (h @ L["attn_q"].T).reshape(T, self.n_head, self.hd)
            k = (h @ L["attn_k"].T).reshape(T, self.n_kv, self.hd)
            if "attn_q_norm" in L:
                q, k = self.rms(q, L["attn_q_norm"]), self.rms(k, L["attn_k_norm"])
            q, k = self.rope(q, pos), self.rope(k, pos)
            v = (h @ L["attn_v"].T).reshape(T, self.n_kv, self.hd)
            K, V = cache["k"][li], cache["v"][li]
            K = k if K is None else np.concatenate([K, k])
            V = v if V is None else np.concatenate([V, v])
            cache["k"][li], cache["v"][li] = K, V
            att = np.empty((T, self.n_head, self.hd), dtype=x.dtype)
            for hh in range(self.n_head):
                g = hh // group  # GQA: query head hh reads kv head hh // (n_head / n_kv)
                s = (q[:, hh] @ K[:, g].T) / np.sqrt(self.hd)
                s[mask] = -np.inf
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                att[:, hh] = (s / s.sum(axis=-1, keepdims=True)) @ V[:, g]
            x = x + att.reshape(T, self.d) @ L["attn_output"].T
            h = self.rms(x, L["ffn_norm"])
            gate = h @ L["ffn_gate"].T
            x = x + ((gate / (1 + np.exp(-gate))) * (h @ L["ffn_up"].T)) @ L["ffn_down"].T
        cache["n"] += T
        return self.rms(x, self.out_norm) @ self.head.T

    def new_cache(self):
        return {"n": 0, "k": [None] * self.n_layer, "v": [None] * self.n_layer}


def cmd_tokenize(a):
    tok = Tokenizer(gguf.GGUFReader(a.model))
    texts = json.load(open(a.texts, encoding="utf-8"))
    res = []
    for s in texts:
        ids = tok.encode(s)
        res.append({"text": s, "ids": ids, "decoded": tok.decode(ids)})
    json.dump(res, open(a.out, "w", encoding="utf-8"), ensure_ascii=False, indent=1)


def cmd_forward(a):
    t0 = time.time()
    model = Llama(gguf.GGUFReader(a.model), np.dtype(a.dtype))
    print(f"loaded + dequantized in {time.time() - t0:.1f}s")
    prompts = [p["ids"] if isinstance(p, dict) else p for p in json.load(open(a.ids))]
    os.makedirs(a.out, exist_ok=True)
    meta, offset = [], 0
    with open(os.path.join(a.out, "logits.f32"), "wb") as fh:
        for ids in prompts:
            t1 = time.time()
            cache = model.new_cache()
            logits = model.forward(ids, cache)              # whole prompt at once
            fh.write(logits.astype("<f4").tobytes())
            greedy, last = [], logits[-1]
            for step in range(a.greedy):
                nxt = int(np.argmax(last))                  # first max = lowest id on ties
                greedy.append(nxt)
                if step + 1 < a.greedy:
                    last = model.forward([nxt], cache)[-1]  # one token through the KV cache
            meta.append({"ids": list(ids), "positions": len(ids), "offset": offset,
                         "greedy": greedy})
            offset += logits.size
            print(f"prompt of {len(ids)} tokens + {a.greedy} greedy: {time.time() - t1:.1f}s")
    ref = {"model": a.model, "vocab": int(model.head.shape[0]), "dtype": a.dtype,
           "prompts": meta}
    json.dump(ref, open(os.path.join(a.out, "reference.json"), "w"), indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenize")
    f = sub.add_parser("forward")
    for p, opt in ((t, "--texts"), (f, "--ids")):
        p.add_argument("model")
        p.add_argument(opt, required=True)
        p.add_argument("--out", required=True)
    f.add_argument("--greedy", type=int, default=32)
    f.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                   help="compute precision (logits are always written as float32)")
    a = ap.parse_args()
    (cmd_tokenize if a.cmd == "tokenize" else cmd_forward)(a)


if __name__ == "__main__":
    main()
