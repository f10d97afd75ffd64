#!/usr/bin/env python3
"""Reference numbers for adapter I/O, merge and generation, computed with transformers + PEFT.

Reads the tiny models of scripts/make_fixtures.py (tests/fixtures/models/tiny-{mistral,llama,qwen2,qwen3})
and the adapter our Rust code wrote into <model>/rust-adapter/ (see tests/adapters/adapter_io.rs), and
writes <model>/expected-io.safetensors with:

- peft_logits_rust_adapter: logits of PeftModel.from_pretrained(base, rust-adapter/) on the
  batch of expected.safetensors (our adapter file, read by PEFT);
- merged.<tensor>: the f32 weights of PeftModel(adapter/).merge_and_unload();
- merged2.<tensor>: the same with rust-adapter/ merged on top (two adapters, in order);
- gen_prompt, gen_base, gen_adapter: greedy `generate` tokens of the base and of base+adapter/
  (no early stop: long enough to pass Mistral's sliding window several times over);
- gen_base_logits: the logits of every greedy step of the base;
- chat_prompt, chat_gen, chat_text_utf8: with the folder's tokenizer and chat template,
  apply_chat_template([system, user], add_generation_prompt=True), greedy `generate` of
  base+adapter/ stopping at config EOS or the tokenizer's EOS, and the decoded text (UTF-8 bytes).

If the lora-dpo binary is built (target/debug or target/release), it also merges adapter/ with
it and checks that transformers loads the folder and gives base+adapter's logits (printed only).

    .venv/bin/python scripts/make_io_fixtures.py
"""
import json
import pathlib
import subprocess
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

REPO = pathlib.Path(__file__).resolve().parent.parent
ROOT = REPO / "tests" / "fixtures" / "models"
PROMPT_LEN = 5
NEW_TOKENS = 20
CHAT = [{"role": "system", "content": "Hi"}, {"role": "user", "content": "yo"}]  # fits 64 positions
CHAT_TOKENS = 24
MODELS = ["tiny-mistral", "tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-ministral"]


def base(name):
    model = AutoModelForCausalLM.from_pretrained(
        ROOT / name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def greedy(model, prompt):
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW_TOKENS,
            # No early stop and no eos suppression (min_new_tokens would forbid eos): an eos id
            # no token has.
            eos_token_id=10**6,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    return out.sequences[0, prompt.shape[1]:], torch.stack(out.logits, 1)[0]


def check_rust_merge(name, ids, mask, logits_adapter):
    binary = next(
        (p for p in [REPO / "target/release/lora-dpo", REPO / "target/debug/lora-dpo"] if p.exists()),
        None,
    )
    if binary is None:
        print(name, "lora-dpo binary not built: skipping the transformers check of our merge")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "merged"
        subprocess.run(
            [binary, "merge", "--model", ROOT / name, "--adapter", ROOT / name / "adapter",
             "--out", out, "--dtype", "f32", "--max-shard-size", "40KB"],
            check=True,
        )
        merged = AutoModelForCausalLM.from_pretrained(
            out, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        with torch.no_grad():
            logits = merged(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        diff = (logits[real] - logits_adapter[real]).abs().max() / logits_adapter[real].abs().max()
        shards = sorted(p.name for p in out.iterdir())
        print(name, "transformers loads our merged folder:", shards,
              f"max relative logit diff vs base+adapter {float(diff):.2e}")
        assert diff < 1e-3


def build(name):
    folder = ROOT / name
    exp = load_file(folder / "expected.safetensors")
    ids, mask = exp["input_ids"], exp["attention_mask"]
    out = {}

    torch.manual_seed(0)
    peft_rust = PeftModel.from_pretrained(base(name), folder / "rust-adapter").eval()
    with torch.no_grad():
        out["peft_logits_rust_adapter"] = peft_rust(input_ids=ids, attention_mask=mask).logits

    peft_model = PeftModel.from_pretrained(base(name), folder / "adapter").eval()
    with torch.no_grad():
        logits_adapter = peft_model(input_ids=ids, attention_mask=mask).logits
    prompt = ids[:1, :PROMPT_LEN]
    out["gen_prompt"] = prompt[0]
    out["gen_adapter"], _ = greedy(peft_model, prompt)
    if (folder / "tokenizer.json").exists():
        # tokenizer.json as written: AutoTokenizer would pick Qwen2Tokenizer by model_type and
        # rebuild a byte-level pipeline around the fixtures' character vocabulary.
        tok = PreTrainedTokenizerFast.from_pretrained(folder)
        chat = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True,
                                       return_tensors="pt")["input_ids"]
        stop = sorted({peft_model.config.eos_token_id, tok.eos_token_id})
        with torch.no_grad():
            seq = peft_model.generate(input_ids=chat, attention_mask=torch.ones_like(chat),
                                      max_new_tokens=CHAT_TOKENS, do_sample=False,
                                      eos_token_id=stop, pad_token_id=0)
        gen = seq[0, chat.shape[1]:]
        text = tok.decode(gen, skip_special_tokens=True)
        out["chat_prompt"], out["chat_gen"] = chat[0], gen
        out["chat_text_utf8"] = torch.tensor(list(text.encode()), dtype=torch.uint8)
        print(name, "chat", repr(tok.decode(chat[0])), "->", repr(text), "stop ids", stop)
    merged = peft_model.merge_and_unload(safe_merge=True)
    for k, v in merged.state_dict().items():
        out[f"merged.{k}"] = v.clone()  # the next merge changes these weights in place
    merged2 = PeftModel.from_pretrained(merged, folder / "rust-adapter").merge_and_unload()
    for k, v in merged2.state_dict().items():
        out[f"merged2.{k}"] = v

    out["gen_base"], out["gen_base_logits"] = greedy(base(name), prompt)
    out = {k: v.detach().clone().contiguous() for k, v in out.items()}
    save_file(out, folder / "expected-io.safetensors", metadata={"format": "pt"})
    print(name, "prompt", prompt[0].tolist())
    print(name, "greedy base   ", out["gen_base"].tolist())
    print(name, "greedy adapter", out["gen_adapter"].tolist())
    check_rust_merge(name, ids, mask, logits_adapter)


if __name__ == "__main__":
    for name in MODELS:
        build(name)
    print(json.dumps({n: sorted(p.name for p in (ROOT / n).iterdir()) for n in MODELS}))
