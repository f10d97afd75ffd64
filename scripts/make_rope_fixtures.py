#!/usr/bin/env python3
"""Rotary frequencies as transformers computes them, for the Rust tests of `rope_scaling`.

For each case: a config.json (a tiny Qwen2 or Llama with the rope settings under test), and
transformers' inverse frequencies and attention scaling (`ROPE_INIT_FUNCTIONS`, the functions
its rotary embeddings call at init). Output: tests/fixtures/models/rope_cases.json.

    .venv/bin/python scripts/make_rope_fixtures.py
"""
import json
import pathlib

from transformers import LlamaConfig, Qwen2Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models" / "rope_cases.json"
BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=131072)
CASES = {
    # Qwen2.5-7B-Instruct's long-context setting (its README's config.json edit).
    "yarn_qwen2_5": (Qwen2Config, {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0,
                                   "original_max_position_embeddings": 32768}),
    "yarn_betas_no_truncate": (Qwen2Config, {"rope_theta": 1e4, "rope_type": "yarn", "factor": 8.0,
                                             "original_max_position_embeddings": 4096,
                                             "beta_fast": 16, "beta_slow": 2, "truncate": False}),
    "yarn_mscale": (LlamaConfig, {"rope_theta": 5e5, "rope_type": "yarn", "factor": 16.0,
                                  "original_max_position_embeddings": 8192, "mscale": 0.707,
                                  "mscale_all_dim": 1.0}),
    "yarn_attention_factor": (LlamaConfig, {"rope_theta": 5e5, "rope_type": "yarn", "factor": 2.0,
                                            "original_max_position_embeddings": 8192,
                                            "attention_factor": 0.9}),
    "llama3": (LlamaConfig, {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}),
    "linear": (LlamaConfig, {"rope_theta": 1e4, "rope_type": "linear", "factor": 4.0}),
}


def main():
    out = {}
    for name, (cls, rope) in CASES.items():
        cfg = cls(**BASE, rope_parameters=dict(rope))
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope["rope_type"]](cfg, "cpu")
        config = json.loads(cfg.to_json_string())
        out[name] = {"config": config, "inv_freq": inv_freq.tolist(), "attention_scaling": scaling}
        print(name, "attention_scaling", scaling, "inv_freq[-3:]", inv_freq[-3:].tolist())
    OUT.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
