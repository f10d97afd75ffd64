#!/usr/bin/env python3
"""A tiny Llama as a Hugging Face folder and as GGUF files converted like llama.cpp's
convert_hf_to_gguf.py does (q/k rows permuted per head for its RoPE layout), for the Rust tests.

Output: tests/fixtures/models/tiny-gguf/
  config.json, model.safetensors   the Hugging Face model (untied head, GQA, plain RoPE)
  model-f32.gguf                   every tensor F32
  model-q8_0.gguf                  2-D tensors Q8_0, norms F32 (llama.cpp --outtype q8_0)
  tiny-llama-f32.gguf              tests/fixtures/models/tiny-llama (tied embeddings, Llama 3.1
                                   RoPE scaling, written as llama.cpp's `rope_freqs` tensor), F32
  tiny-qwen2-f32.gguf,             tests/fixtures/models/tiny-qwen2 (q/k/v biases, tied) and
  tiny-qwen3-f32.gguf              tiny-qwen3 (per-head q/k norms, head_dim 12) as llama.cpp's
                                   `qwen2` / `qwen3` architectures: tensor names from gguf-py's own
                                   name map, q/k rows not permuted (llama.cpp rotates halves for
                                   these), F32
  expected-qwen2-gguf.safetensors  transformers' logits of tiny-qwen2 with its sliding window off
                                   (llama.cpp's qwen2 attends to the whole context), on the batch of
                                   tiny-qwen2/expected.safetensors
  expected.safetensors             input_ids, transformers' logits of the HF model (`logits`) and
                                   of each GGUF as transformers loads it, dequantized
                                   (`logits_f32_gguf`, `logits_q8_0_gguf`)

All dimensions are multiples of 32 (the Q8_0 block). Checks before writing that transformers,
loading each GGUF (it dequantizes and un-permutes), reproduces the HF logits.

    /work/pyenv/bin/python scripts/make_gguf_fixtures.py
"""
import math
import pathlib

import gguf
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

MODELS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"
OUT = MODELS / "tiny-gguf"


def config():
    return LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.1,
        bos_token_id=1, eos_token_id=2,
    )


def permute(w, n_head, n_head_kv):
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{NAMES[rest.removesuffix('.weight')]}.weight"


def rope_factors(cfg):
    """llama.cpp's LlamaModel.generate_extra_tensors for rope_type llama3."""
    rope = cfg.rope_parameters
    base, dim = rope["rope_theta"], cfg.head_dim
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(model, cfg, path, qtype):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-gguf")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == gguf.GGMLQuantizationType.F32
                    else gguf.LlamaFileType.MOSTLY_Q8_0)
    # A minimal vocabulary so that transformers can open the file.
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"<t{i}>" for i in range(cfg.vocab_size)])
    w.add_token_scores([0.0] * cfg.vocab_size)
    w.add_token_types([gguf.TokenType.NORMAL] * cfg.vocab_size)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    if cfg.rope_parameters.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", rope_factors(cfg))
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: llama.cpp writes no output.weight
        data = t.float().numpy()
        if name.endswith("q_proj.weight"):
            data = permute(data, cfg.num_attention_heads, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = permute(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        data = np.ascontiguousarray(data, dtype=np.float32)
        if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_name(name), data)
        else:
            q = gguf.quants.quantize(data, qtype)
            w.add_tensor(gguf_name(name), q, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_family_gguf(name, arch):
    """A make_fixtures.py model as llama.cpp's converter writes `arch`, every tensor F32."""
    src = MODELS / name
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    cfg = model.config
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(OUT / f"{name}-f32.gguf"), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(cfg.vocab_size)])
    w.add_token_scores([0.0] * cfg.vocab_size)
    w.add_token_types([gguf.TokenType.NORMAL] * cfg.vocab_size)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    for hf, t in model.state_dict().items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        target = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert target is not None, hf
        w.add_tensor(target, np.ascontiguousarray(t.float().numpy(), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def qwen2_without_window():
    """tiny-qwen2's logits with its sliding window off, the reference for its GGUF."""
    from transformers import AutoConfig

    src = MODELS / "tiny-qwen2"
    cfg = AutoConfig.from_pretrained(src)
    cfg.use_sliding_window = False
    cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
    model = AutoModelForCausalLM.from_pretrained(
        src, config=cfg, dtype=torch.float32, attn_implementation="eager").eval()
    from safetensors.torch import load_file
    exp = load_file(src / "expected.safetensors")
    with torch.no_grad():
        logits = model(input_ids=exp["input_ids"], attention_mask=exp["attention_mask"]).logits
    save_file({"logits_base": logits.contiguous()}, OUT / "expected-qwen2-gguf.safetensors",
              metadata={"format": "pt"})


def families():
    write_family_gguf("tiny-qwen2", gguf.MODEL_ARCH.QWEN2)
    write_family_gguf("tiny-qwen3", gguf.MODEL_ARCH.QWEN3)
    qwen2_without_window()


def main():
    cfg = config()
    torch.manual_seed(3)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    (OUT / "generation_config.json").unlink(missing_ok=True)

    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, cfg.vocab_size, (2, 9), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    expected = {"input_ids": ids.to(torch.int64), "logits": logits.contiguous()}

    for qtype, fname in [(gguf.GGMLQuantizationType.F32, "model-f32.gguf"),
                         (gguf.GGMLQuantizationType.Q8_0, "model-q8_0.gguf")]:
        write_gguf(model, cfg, OUT / fname, qtype)
        with torch.no_grad():
            m = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=fname, dtype=torch.float32).eval()
            got = m(input_ids=ids).logits
        diff = (got - logits).abs().max().item()
        print(f"{fname}: transformers' GGUF load vs HF logits max |diff| = {diff:.3e}")
        expected[f"logits_{fname.removeprefix('model-').removesuffix('.gguf')}_gguf"] = got.contiguous()
    save_file(expected, OUT / "expected.safetensors", metadata={"format": "pt"})
    # The tied, llama3-scaled fixture of make_fixtures.py, checked against its own references.
    src = MODELS / "tiny-llama"
    llama = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    write_gguf(llama, llama.config, OUT / "tiny-llama-f32.gguf", gguf.GGMLQuantizationType.F32)
    with torch.no_grad():
        m = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="tiny-llama-f32.gguf",
                                                 dtype=torch.float32).eval()
        fixture_ids = torch.randint(3, 96, (1, 10), generator=g)
        diff = (m(input_ids=fixture_ids).logits - llama(input_ids=fixture_ids).logits).abs().max()
    print(f"tiny-llama-f32.gguf: transformers' GGUF load vs HF logits max |diff| = {diff:.3e}"
          " (transformers' GGUF loader ignores rope_freqs: expect a visible diff)")
    for p in sorted(OUT.iterdir()):
        print(p.name, p.stat().st_size)


if __name__ == "__main__":
    import sys

    # `families` writes only the Qwen files (the others stay byte for byte as committed).
    families() if sys.argv[1:] == ["families"] else (main(), families())
