#!/usr/bin/env python3
"""Writes a model with Mistral-7B-v0.1's shapes as a sharded bf16 Hugging Face folder, for memory
and speed checks at the scale lora-dpo is for (no weights to download, none committed).

32 layers, hidden 4096, 32 query / 8 key-value heads (head_dim 128), intermediate 14336, untied
LM head, sliding window 4096, rope_theta 10000. The vocabulary is the given tokenizer's (49152
with SmolLM2's, instead of Mistral's 32000): 7.38B parameters, 14.8 GB in bf16.

Weights: by default zeros written as holes in sparse files (no disk used, instant; the norms are
ones), which is enough for memory and speed; `--random` writes N(0, 0.02) values instead (needs
numpy; about 3 minutes and 15 GB of disk here). Python's standard library otherwise.

    scripts/make_mistral7b_shape.py OUT --tokenizer DIR [--random] [--layers N]
    scripts/make_mistral7b_shape.py OUT --tokenizer DIR --layers 2 --hidden 256 --intermediate 768 \
        --heads 4 --kv-heads 2        # a tiny model of the same family, for dry runs

DIR holds tokenizer.json and tokenizer_config.json (e.g. `lora-dpo merge --model
models/SmolLM2-135M-Instruct.Q4_1.gguf --out DIR` writes them).
"""

import argparse
import json
import os
import shutil
import struct
import sys

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = 4096, 14336, 32, 8
LAYERS_PER_SHARD = 4


def vocab_size(tokenizer_dir):
    tok = json.load(open(os.path.join(tokenizer_dir, "tokenizer.json")))
    ids = set(tok["model"]["vocab"].values())
    ids.update(t["id"] for t in tok.get("added_tokens", []))
    return max(ids) + 1


def layer_tensors(i):
    p = f"model.layers.{i}."
    kv = KV_HEADS * (HIDDEN // HEADS)
    return [
        (p + "input_layernorm.weight", [HIDDEN]),
        (p + "self_attn.q_proj.weight", [HIDDEN, HIDDEN]),
        (p + "self_attn.k_proj.weight", [kv, HIDDEN]),
        (p + "self_attn.v_proj.weight", [kv, HIDDEN]),
        (p + "self_attn.o_proj.weight", [HIDDEN, HIDDEN]),
        (p + "post_attention_layernorm.weight", [HIDDEN]),
        (p + "mlp.gate_proj.weight", [INTERMEDIATE, HIDDEN]),
        (p + "mlp.up_proj.weight", [INTERMEDIATE, HIDDEN]),
        (p + "mlp.down_proj.weight", [HIDDEN, INTERMEDIATE]),
    ]


def shards(layers, vocab):
    """Lists of (name, shape): embeddings with the first layers, head and final norm last."""
    out = []
    for start in range(0, layers, LAYERS_PER_SHARD):
        tensors = []
        if start == 0:
            tensors.append(("model.embed_tokens.weight", [vocab, HIDDEN]))
        for i in range(start, min(start + LAYERS_PER_SHARD, layers)):
            tensors += layer_tensors(i)
        out.append(tensors)
    out[-1] += [("model.norm.weight", [HIDDEN]), ("lm_head.weight", [vocab, HIDDEN])]
    return out


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def bf16_bytes(values):
    """float32 numpy array -> bf16 bytes (round to nearest even)."""
    import numpy as np

    bits = values.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16).tobytes()


def write_shard(path, tensors, random, rng):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        size = numel(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    ones = struct.pack("<H", 0x3F80) * HIDDEN  # bf16 1.0
    with open(path + ".part", "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        data_start = f.tell()
        for name, shape in tensors:
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                f.write(ones)
            elif random:
                n, chunk = numel(shape), 1 << 24
                for at in range(0, n, chunk):
                    f.write(bf16_bytes(rng.standard_normal(min(chunk, n - at), dtype="float32") * 0.02))
            else:
                f.seek(numel(shape) * 2, os.SEEK_CUR)  # a hole: zeros, no disk
        f.truncate(data_start + offset)
    os.replace(path + ".part", path)
    return offset


def main():
    global HIDDEN, INTERMEDIATE, HEADS, KV_HEADS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json, tokenizer_config.json")
    ap.add_argument("--random", action="store_true", help="N(0, 0.02) weights instead of zeros")
    ap.add_argument("--layers", type=int, default=32, help="fewer layers for a quick check")
    ap.add_argument("--hidden", type=int, default=HIDDEN)
    ap.add_argument("--intermediate", type=int, default=INTERMEDIATE)
    ap.add_argument("--heads", type=int, default=HEADS)
    ap.add_argument("--kv-heads", type=int, default=KV_HEADS)
    ap.add_argument("--vocab", type=int, default=None,
                    help="override the tokenizer's vocabulary size (32000 is Mistral's; for estimates)")
    args = ap.parse_args()
    HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = args.hidden, args.intermediate, args.heads, args.kv_heads

    rng = None
    if args.random:
        try:
            import numpy as np
        except ImportError:
            sys.exit("--random needs numpy (pip install numpy), or leave it out for zero weights")
        rng = np.random.default_rng(0)
    vocab = args.vocab or vocab_size(args.tokenizer)
    os.makedirs(args.out, exist_ok=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        src = os.path.join(args.tokenizer, f)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.out, f))
    tok_cfg = json.load(open(os.path.join(args.tokenizer, "tokenizer_config.json")))
    added = {t["content"]: int(i) for i, t in tok_cfg.get("added_tokens_decoder", {}).items()}
    config = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": args.layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN // HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": added.get(tok_cfg.get("bos_token"), 1),
        "eos_token_id": added.get(tok_cfg.get("eos_token"), 2),
    }
    json.dump(config, open(os.path.join(args.out, "config.json"), "w"), indent=2)
    plan = shards(args.layers, vocab)
    weight_map, total = {}, 0
    for k, tensors in enumerate(plan, 1):
        name = f"model-{k:05d}-of-{len(plan):05d}.safetensors"
        total += write_shard(os.path.join(args.out, name), tensors, args.random, rng)
        weight_map.update({t: name for t, _ in tensors})
        print(f"wrote {name}", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    json.dump(index, open(os.path.join(args.out, "model.safetensors.index.json"), "w"), indent=2)
    params = total // 2
    print(f"{args.out}: {params / 1e9:.2f}B parameters, {total / 1e9:.1f} GB bf16, vocab {vocab}, "
          f"{args.layers} layers, {'random' if args.random else 'zero (sparse)'} weights")


if __name__ == "__main__":
    main()
