#!/usr/bin/env python3
"""Peak memory of `lora-dpo merge` on a multi-shard model, against its largest shard.

Builds a random Mistral (hidden 1024, 8 layers, vocab 32000, ~155M parameters, bf16) saved in
~50 MB shards and a PEFT LoRA adapter (r 16, all projections, non-zero B) in a temporary
folder, runs `lora-dpo merge` under /usr/bin/time -v, and prints the peak resident set size
next to the largest input and output shard. Then checks that transformers loads the merged
folder and gives PEFT's base+adapter logits.

    cargo build && .venv/bin/python scripts/measure_merge_memory.py [path/to/lora-dpo]
"""
import pathlib
import re
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def largest(folder):
    return max(p.stat().st_size for p in folder.glob("*.safetensors"))


def run_merge(binary, model, adapter, out, dtype, shard):
    cmd = ["/usr/bin/time", "-v", str(binary), "merge", "--model", str(model), "--adapter",
           str(adapter), "--out", str(out), "--dtype", dtype, "--max-shard-size", shard]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", res.stderr).group(1)
    print(" ".join(cmd[2:]))
    print("  ", res.stdout.strip())
    return rss_kb * 1024, wall


def main():
    binary = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target/debug/lora-dpo"
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                        num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                        max_position_embeddings=512, sliding_window=256, tie_word_embeddings=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        model = MistralForCausalLM(cfg).eval()
        model.to(torch.bfloat16).save_pretrained(tmp / "base", max_shard_size="50MB")
        peft_model = get_peft_model(model.float(), LoraConfig(r=16, lora_alpha=32,
                                                              target_modules=TARGETS))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.02 * torch.randn_like(p))
        peft_model.save_pretrained(tmp / "adapter")
        del model, peft_model
        n_shards = len(list((tmp / "base").glob("*.safetensors")))
        total = sum(p.stat().st_size for p in (tmp / "base").glob("*.safetensors"))
        print(f"base: {n_shards} shards, {total / 1e6:.0f} MB, largest shard "
              f"{largest(tmp / 'base') / 1e6:.1f} MB")
        for dtype in ["bf16", "f32"]:
            out = tmp / f"merged-{dtype}"
            rss, wall = run_merge(binary, tmp / "base", tmp / "adapter", out, dtype, "50MB")
            big = max(largest(tmp / "base"), largest(out))
            print(f"   peak RSS {rss / 1e6:.1f} MB, wall {wall}; largest shard in/out "
                  f"{largest(tmp / 'base') / 1e6:.1f}/{largest(out) / 1e6:.1f} MB; "
                  f"peak / largest shard = {rss / big:.2f}")
        # transformers reads our f32 merge and matches PEFT's base (bf16 weights in f32) + adapter.
        ids = torch.randint(0, cfg.vocab_size, (1, 24))
        base = AutoModelForCausalLM.from_pretrained(tmp / "base", dtype=torch.float32)
        ref = PeftModel.from_pretrained(base, tmp / "adapter").eval()
        merged = AutoModelForCausalLM.from_pretrained(tmp / "merged-f32", dtype=torch.float32)
        with torch.no_grad():
            a, b = ref(input_ids=ids).logits, merged.eval()(input_ids=ids).logits
        print(f"transformers on our f32 merge vs PEFT base+adapter: max relative logit diff "
              f"{float((a - b).abs().max() / a.abs().max()):.2e}")


if __name__ == "__main__":
    main()
