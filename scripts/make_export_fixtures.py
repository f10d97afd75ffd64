#!/usr/bin/env python3
"""References for `export`: what a GGUF of the merged model computes, by transformers + PEFT.

For tiny-llama and tiny-qwen3 (scripts/make_fixtures.py): PEFT's merge_and_unload of adapter/,
then every 2-D weight stored as `lora-dpo export --quant T` stores it: quantized and
dequantized by gguf-py's own ggml reference quantizers (`gguf.quants`), F16 where the row
length is not a multiple of the type's block, as export does. Writes
tests/fixtures/models/<name>/expected-export.safetensors: `logits_<T>` of the first row of the
fixture batch, for T in f16, q8_0.

    .venv/bin/python scripts/make_export_fixtures.py
"""
import pathlib

import gguf
import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"
TYPES = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}


def stored(w, qtype):
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if w.shape[-1] % block:
        qtype = gguf.GGMLQuantizationType.F16
    data = np.ascontiguousarray(w.numpy(), dtype=np.float32)
    q = gguf.quants.quantize(data, qtype)
    return torch.from_numpy(gguf.quants.dequantize(q, qtype).astype(np.float32).reshape(w.shape))


def main():
    for name in ["tiny-llama", "tiny-qwen3"]:
        d = ROOT / name
        ids = load_file(d / "expected.safetensors")["input_ids"][:1]
        out = {}
        for label, qtype in TYPES.items():
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
            model = PeftModel.from_pretrained(model, d / "adapter").merge_and_unload().eval()
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() == 2:
                        p.copy_(stored(p.detach(), qtype))
                out[f"logits_{label}"] = model(input_ids=ids).logits[0].contiguous()
        save_file(out, d / "expected-export.safetensors", metadata={"format": "pt"})
        print(name, {k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
