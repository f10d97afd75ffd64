#!/usr/bin/env python3
"""Outside CI: reads GGUFs written by `lora-dpo export` with transformers' own GGUF loader
(it dequantizes, un-permutes q/k and rebuilds the tokenizer from the metadata) and compares
with the Hugging Face model they came from: logits (relative L2, top-1 agreement), token ids
of a few texts and the rendered chat template.

    scripts/check_gguf_transformers.py HF_DIR EXPORT.gguf [EXPORT.gguf ...]

Run with the repo's venv (.venv/bin/python; transformers 5.23, gguf 0.17 as pinned in
scripts/requirements.txt).
"""
import pathlib
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "The capital of France is Paris. 12 + 7 = 19.",
    "héllo wörld\n\n  spaces   and\ttabs 1234567",
]
CHAT = [{"role": "user", "content": "What is 2+2?"}]


def main(hf_dir, *ggufs):
    ref = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = ref_tok(TEXTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        want = ref(input_ids=ids).logits
    for g in ggufs:
        g = pathlib.Path(g)
        model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
        with torch.no_grad():
            got = model(input_ids=ids).logits
        rel = ((got - want).norm() / want.norm()).item()
        agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
        same_ids = all(tok(t).input_ids == ref_tok(t).input_ids for t in TEXTS)
        same_chat = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == \
            ref_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        print(f"{g.name}: logits rel L2 {rel:.2e}, top-1 agreement {agree:.3f}, "
              f"token ids equal {same_ids}, chat template equal {same_chat}")


if __name__ == "__main__":
    main(*sys.argv[1:])
