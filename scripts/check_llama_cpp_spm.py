#!/usr/bin/env python3
"""Outside CI: does llama.cpp itself tokenize a SentencePiece-style (byte-fallback BPE) export
as tokenizer.json does? The Rust tests check our reader and transformers' rule (merges from
scores); this asks llama.cpp (llama-cpp-python 0.3.36, as scripts/check_llama_cpp.py).

A random tiny Llama (transformers) is saved with tests/fixtures/data/spm-bpe's tokenizer, exported
by `lora-dpo export --quant f16`, loaded by llama.cpp with `vocab_only`, and every line of the
sample data (and a few strings outside the vocabulary) is tokenized by both.

    .venv/bin/python scripts/check_llama_cpp_spm.py [--bin target/release/lora-dpo]
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import tempfile

import torch
from llama_cpp import Llama
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOK = ROOT / "tests" / "fixtures" / "data" / "spm-bpe"

p = argparse.ArgumentParser()
p.add_argument("--bin", default=str(ROOT / "target" / "release" / "lora-dpo"))
a = p.parse_args()

tok = AutoTokenizer.from_pretrained(TOK)
with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(tmp / "model")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOK / f, tmp / "model" / f)
    out = tmp / "spm.gguf"
    subprocess.run([a.bin, "export", "--model", str(tmp / "model"), "--format", "gguf", "--quant", "f16",
                    "--out", str(out)], check=True)
    llm = Llama(model_path=str(out), vocab_only=True, verbose=False)
    lines = []
    for name in ("data/sft/train.jsonl", "data/dpo/train.jsonl"):
        lines += open(ROOT / name).read().splitlines()[:100]
    lines += ["Ljubljana  is   the capital; é, ß and 🙂 are not in the vocabulary.", "a", "  leading spaces"]
    same, shown = 0, 0
    for line in lines:
        ours = tok.encode(line, add_special_tokens=False)
        theirs = llm.tokenize(line.encode(), add_bos=False, special=False)
        if ours == theirs:
            same += 1
        elif shown < 3:
            shown += 1
            print("differs:", repr(line[:80]), "\n  tokenizer.json", ours[:20], "\n  llama.cpp     ", theirs[:20])
    print(json.dumps({"lines": len(lines), "identical": same}))
