#!/usr/bin/env python3
"""Reference numbers for the Rust tests, computed with torch + transformers + PEFT.

Builds tiny random models (a Mistral with GQA, head_dim != hidden/heads and a sliding window
shorter than the sequence; a Llama with tied embeddings and Llama-3 rope scaling; a Qwen2 with
q/k/v biases, tied embeddings and a sliding window on its second layer only; a Qwen3 with
per-head q/k norms and head_dim != hidden/heads; a Ministral whose layers alternate sliding and
full attention), a PEFT LoRA adapter with non-zero B for each, and writes the logits, token log-probs and LoRA gradients of a
fixed batch. Output: tests/fixtures/models/<name>/ (HF folder, adapter/, expected.safetensors).

    python -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt
    .venv/bin/python scripts/make_fixtures.py [tiny-qwen3 ...]
"""
import json
import pathlib

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    MinistralConfig,
    MinistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ = 10


def mistral():
    cfg = MistralConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, sliding_window=4,
        max_position_embeddings=64, rope_theta=1000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, initializer_range=0.1, bos_token_id=1, eos_token_id=2,
    )
    return MistralForCausalLM, cfg, dict(r=4, lora_alpha=8, use_rslora=False)


def llama():
    cfg = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=500000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.1,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM, cfg, dict(r=4, lora_alpha=8, use_rslora=True)


def qwen2():
    cfg = Qwen2Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.1,
        use_sliding_window=True, sliding_window=4, max_window_layers=1,
        bos_token_id=1, eos_token_id=2,
    )
    return Qwen2ForCausalLM, cfg, dict(r=4, lora_alpha=8, use_rslora=False)


def qwen3():
    cfg = Qwen3Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=64,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        initializer_range=0.1, attention_bias=False, bos_token_id=1, eos_token_id=2,
    )
    return Qwen3ForCausalLM, cfg, dict(r=4, lora_alpha=8, use_rslora=False)


def ministral():
    cfg = MinistralConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        rope_theta=100000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        initializer_range=0.1, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], bos_token_id=1, eos_token_id=2,
    )
    return MinistralForCausalLM, cfg, dict(r=4, lora_alpha=8, use_rslora=False)


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def save_tokenizer(out):
    """A character-level tokenizer (ids < 96) with a ChatML template, so the tiny models can read text."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    chars = list("\n abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!:+-=*'")
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>", pad_token="</s>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)


def batch(vocab):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, vocab, (2, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    ids[1, 7:] = 0
    return ids, mask


def nll(logits, ids, mask):
    """Mean next-token NLL over real target tokens; also the per-token log-probs."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = mask[:, 1:].float()
    return -(tok * m).sum() / m.sum(), tok


def build(name, make):
    cls, cfg, lora_kw = make()
    torch.manual_seed(0)
    model = cls._from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():  # norms away from 1 so their weights matter
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):  # zero at init: make them matter
                p.copy_(0.3 * torch.randn_like(p))
    out = ROOT / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    model.save_pretrained(ROOT / f"{name}-sharded", safe_serialization=True, max_shard_size="30KB")
    save_tokenizer(out)

    peft_model = get_peft_model(
        model, LoraConfig(target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM", **lora_kw)
    )
    with torch.no_grad():  # B is zero at init: make the adapter do something
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn_like(p))
    peft_model.save_pretrained(out / "adapter")

    ids, mask = batch(cfg.vocab_size)
    with torch.no_grad(), peft_model.disable_adapter():
        logits_base = peft_model(input_ids=ids, attention_mask=mask).logits
    peft_model.train()  # dropout is 0: train() only enables gradients through LoRA
    logits = peft_model(input_ids=ids, attention_mask=mask).logits
    loss, tok = nll(logits, ids, mask)
    loss.backward()
    expected = {
        "input_ids": ids.to(torch.int64),
        "attention_mask": mask.to(torch.int64),
        "logits_base": logits_base.detach().contiguous(),
        "logits_adapter": logits.detach().contiguous(),
        "token_logps_adapter": tok.detach().contiguous(),
        "loss": loss.detach().reshape(1),
    }
    for n, p in peft_model.named_parameters():
        if p.grad is not None:
            key = n.replace(".default", "")
            expected[f"grad.{key}"] = p.grad.detach().contiguous()
    save_file(expected, out / "expected.safetensors", metadata={"format": "pt"})
    print(name, "loss", float(loss), "grads", sum(k.startswith("grad.") for k in expected))


FIXTURES = {"tiny-mistral": mistral, "tiny-llama": llama, "tiny-qwen2": qwen2, "tiny-qwen3": qwen3,
            "tiny-ministral": ministral}

if __name__ == "__main__":
    import sys

    # Names on the command line rebuild only those (torch's random draws differ between
    # versions: the others stay as committed).
    for name in sys.argv[1:] or FIXTURES:
        build(name, FIXTURES[name])
    print(json.dumps({p.name: sorted(x.name for x in p.iterdir()) for p in ROOT.iterdir()}, indent=1))
