"""Check `card export` output with the real consumers, outside card's code.

  python3 scripts/check_export.py gguf FILE.gguf [--logits REF.json]
      reads the file with the `gguf` package (llama.cpp's gguf-py): architecture, the
      metadata llama.cpp needs, every tensor's name, type and shape against the config; with
      --logits, runs scripts/gguf_reference.py's NumPy forward on the file and compares.
  python3 scripts/check_export.py hf DIR [--logits REF.json]
      loads the directory with `transformers` (config, tokenizer; the model too when PyTorch
      is installed) and compares its logits with card's.

REF.json: {"ids": [[...], ...], "logits": [[[...V floats] per position] per prompt]} as
`card` computed them (`card inspect logits CKPT --f32 --prompt ... --out REF.json`, which
also writes "prompts", so the hf check compares tokenizers too; tests/export.rs writes one
with CARD_EXPORT_REF). scripts/check_consumers.sh runs both checks on a checkpoint. Exit 0: all checks
passed; 1: a check failed; 2: a tool this check needs is missing (said on stderr).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def missing(what):
    print(f"MISSING: {what}", file=sys.stderr)
    sys.exit(2)


def compare(ours, theirs, what):
    import numpy as np

    worst = 0.0
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            fail(f"{what}: logits of shape {b.shape}, card's {a.shape}")
        worst = max(worst, float(np.abs(a - b).max() / np.abs(a).max()))
    print(f"{what}: max relative logit error {worst:.2e}")
    if worst > 1e-3:
        fail(f"{what}: logits differ from card's")


def check_gguf(path, ref):
    try:
        import gguf
    except ImportError:
        missing("the gguf package (pip install gguf numpy)")
    r = gguf.GGUFReader(path)
    field = lambda k: r.fields[k].contents() if k in r.fields else None
    arch = field("general.architecture")
    if arch not in ("llama", "qwen2"):
        fail(f"architecture {arch!r}")
    need = ["block_count", "embedding_length", "feed_forward_length", "attention.head_count",
            "attention.head_count_kv", "context_length", "rope.freq_base",
            "attention.layer_norm_rms_epsilon"]
    cfg = {k: field(f"{arch}.{k}") for k in need}
    for k, v in cfg.items():
        if v is None:
            fail(f"metadata {arch}.{k} is missing")
    for k in ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
              "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.eos_token_id"]:
        if k not in r.fields:
            fail(f"metadata {k} is missing")
    tokens = field("tokenizer.ggml.tokens")
    d, f, L = cfg["embedding_length"], cfg["feed_forward_length"], cfg["block_count"]
    hq, hkv = cfg["attention.head_count"], cfg["attention.head_count_kv"]
    hd = d // hq
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}
    want = {"token_embd.weight": (d, len(tokens)), "output_norm.weight": (d,)}
    for i in range(L):
        b = f"blk.{i}."
        want.update({b + "attn_norm.weight": (d,), b + "ffn_norm.weight": (d,),
                     b + "attn_q.weight": (d, hq * hd), b + "attn_k.weight": (d, hkv * hd),
                     b + "attn_v.weight": (d, hkv * hd), b + "attn_output.weight": (hq * hd, d),
                     b + "ffn_gate.weight": (d, f), b + "ffn_up.weight": (d, f),
                     b + "ffn_down.weight": (f, d)})
    if "output.weight" in shapes:
        want["output.weight"] = (d, len(tokens))
    for name, shape in want.items():
        if shapes.get(name) != shape:
            fail(f"tensor {name}: shape {shapes.get(name)}, expected {shape} (gguf order)")
    extra = set(shapes) - set(want) - {f"blk.{i}.attn_{x}.bias" for i in range(L) for x in "qkv"}
    if extra:
        fail(f"unexpected tensors {sorted(extra)[:5]}")
    types = sorted({t.tensor_type.name for t in r.tensors})
    print(f"gguf: {arch}, {L} layers, d {d}, {hq}/{hkv} heads, vocab {len(tokens)}, "
          f"pre {field('tokenizer.ggml.pre')!r}, {len(shapes)} tensors of {types}: ok")
    if ref:
        with tempfile.TemporaryDirectory() as tmp:
            ids = Path(tmp) / "ids.json"
            ids.write_text(json.dumps(ref["ids"]))
            script = Path(__file__).with_name("gguf_reference.py")
            subprocess.run([sys.executable, str(script), "forward", path, "--ids", str(ids),
                            "--greedy", "0", "--out", tmp], check=True)
            import numpy as np
            meta = json.loads((Path(tmp) / "reference.json").read_text())
            flat = np.fromfile(Path(tmp) / "logits.f32", dtype="<f4")
            v = meta["vocab"]
            theirs = [flat[p["offset"]:p["offset"] + p["positions"] * v].reshape(-1, v)
                      for p in meta["prompts"]]
        compare(ref["logits"], theirs, "gguf (NumPy reference forward)")


def check_hf(path, ref):
    try:
        from transformers import AutoConfig, AutoTokenizer
    except ImportError:
        missing("transformers (pip install transformers tokenizers)")
    cfg = AutoConfig.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    print(f"hf: {cfg.architectures[0]} ({cfg.model_type}), {cfg.num_hidden_layers} layers, "
          f"vocab {cfg.vocab_size}, tokenizer {type(tok).__name__} of {len(tok)} tokens: ok")
    if not ref:
        return
    for text, ids in zip(ref.get("prompts", []), ref["ids"]):
        theirs = tok(text, add_special_tokens=False)["input_ids"]
        if theirs != ids:
            fail(f"hf tokenizer: {text!r} -> {theirs}, card's {ids}")
    if "prompts" in ref:
        print(f"hf tokenizer: card's ids for all {len(ref['prompts'])} prompts: ok")
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        missing("PyTorch (transformers needs it to run the model)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    theirs = []
    with torch.no_grad():
        for ids in ref["ids"]:
            theirs.append(model(torch.tensor([ids])).logits[0].numpy())
    compare(ref["logits"], theirs, "hf (transformers)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("kind", choices=["gguf", "hf"])
    ap.add_argument("path")
    ap.add_argument("--logits", help="card's logits on fixed prompts (JSON)")
    a = ap.parse_args()
    ref = json.loads(Path(a.logits).read_text()) if a.logits else None
    (check_gguf if a.kind == "gguf" else check_hf)(a.path, ref)


if __name__ == "__main__":
    main()
