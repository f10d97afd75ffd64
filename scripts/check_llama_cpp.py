#!/usr/bin/env python3
"""Outside CI: llama.cpp itself (through llama-cpp-python 0.3.36, which builds llama.cpp at
install) on what `lora-dpo export` writes, against lora-dpo's own logits.

For a base and a trained adapter (default: the demo's SmolLM2-135M-Instruct Q4_1 GGUF and
adapters/demo/combined, after scripts/demo.sh):
  1. exports base + adapter merged as f16 and q8_0 GGUFs, and the adapter alone as a LoRA
     GGUF (f32);
  2. for a few prompts (chat template rendered by llama.cpp's Jinja engine from the file's
     `tokenizer.chat_template`, tokenized by llama.cpp), takes llama.cpp's logits at every
     position (`logits_all`) for: merged f16; merged q8_0; the base GGUF + the LoRA GGUF;
  3. lora-dpo's logits for the same token ids (examples/logits_dump.rs): base + PEFT adapter,
     the base dequantized, in f32;
  4. prints per file the logits' relative L2 and top-1 agreement, whether the chat template
     rendered by llama-cpp-python equals lora-dpo's rendering (examples/render_chat.rs) and
     llama.cpp's tokens lora-dpo's and tokenizer.json's (transformers); and, as the floor of what
     llama.cpp's own arithmetic (8-bit activations in its quantized matmuls) leaves, the same
     measures for the base GGUF itself, which lora-dpo did not write.

    .venv/bin/pip install llama-cpp-python==0.3.36
    cargo build --release --examples     # logits_dump, render_chat
    [LLAMA_CHECK_PROMPTS=N] .venv/bin/python scripts/check_llama_cpp.py [BASE.gguf ADAPTER_DIR HF_TOKENIZER_DIR]
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama
from safetensors.numpy import load_file

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = REPO / "target/release/lora-dpo"
DUMP = REPO / "target/release/examples/logits_dump"
RENDER = REPO / "target/release/examples/render_chat"
PROMPTS = ["What is 14 + 6?", "What is the capital of France?", "Name three colours."]
# With LLAMA_CHECK_PROMPTS=N, the first N prompts of the held-out pairs join them (more positions).
EXTRA = int(__import__("os").environ.get("LLAMA_CHECK_PROMPTS", "0"))


def run(*args):
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL)


def llama_logits(path, ids, lora=None):
    kw = dict(model_path=str(path), logits_all=True, n_ctx=512, verbose=False, seed=0)
    if lora:
        kw["lora_path"] = str(lora)
    llm = Llama(**kw)
    out = []
    for row in ids:
        llm.reset()
        llm.eval(row)
        out.append(np.array(llm.scores[: len(row)], dtype=np.float32))
    return out, llm


def compare(name, theirs, ours):
    num = sum(float(((t - o) ** 2).sum()) for t, o in zip(theirs, ours))
    den = sum(float((o**2).sum()) for o in ours)
    agree = np.concatenate([t.argmax(-1) == o.argmax(-1) for t, o in zip(theirs, ours)]).mean()
    print(f"{name}: logits rel L2 {np.sqrt(num / den):.3e}, top-1 agreement {agree:.3f}")


def main():
    base = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    adapter = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else REPO / "adapters/demo/combined")
    tmp = pathlib.Path(tempfile.mkdtemp())
    files = {q: tmp / f"merged-{q}.gguf" for q in ["f16", "q8_0"]}
    for q, f in files.items():
        run(BIN, "export", "--model", base, "--adapter", adapter, "--quant", q, "--out", f)
    lora = tmp / "lora.gguf"
    run(BIN, "export", "--model", base, "--adapter", adapter, "--format", "gguf-lora", "--quant", "f32", "--out", lora)

    prompts = list(PROMPTS)
    for line in open(REPO / "data/dpo/eval.jsonl").read().splitlines()[:EXTRA]:
        prompts.append(json.loads(line)["prompt"][-1]["content"])
    probe = Llama(model_path=str(files["f16"]), verbose=False, n_ctx=512)
    template = probe.metadata.get("tokenizer.chat_template")
    from jinja2 import Template  # llama-cpp-python renders chat templates with jinja2 too
    texts = [Template(template).render(messages=[{"role": "user", "content": p}], add_generation_prompt=True,
                                       bos_token="", eos_token="") for p in prompts]
    ids = [probe.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
    # Ours: the same file's template through lora-dpo's renderer (minijinja) and tokenizer.
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    (tmp / "conversations.json").write_text(json.dumps(conversations))
    run(RENDER, files["f16"], tmp / "conversations.json", tmp / "rendered.json")
    ours_rendered = json.loads((tmp / "rendered.json").read_text())
    same_text = sum(r["text"] == t for r, t in zip(ours_rendered, texts))
    same_ids = sum(r["ids"] == i for r, i in zip(ours_rendered, ids))
    print(f"chat template rendering (llama-cpp-python's Jinja vs lora-dpo's) equal on {same_text} of "
          f"{len(texts)} prompts; llama.cpp's token ids equal lora-dpo's on {same_ids}")
    if len(sys.argv) > 3:
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(sys.argv[3])
        same = all(hf(t, add_special_tokens=False).input_ids == i for t, i in zip(texts, ids))
        print(f"llama.cpp tokens == tokenizer.json tokens on {len(texts)} rendered prompts: {same}")
    (tmp / "ids.json").write_text(json.dumps(ids))
    run(DUMP, base, tmp / "ids.json", tmp / "ours.safetensors", adapter)
    ours = load_file(tmp / "ours.safetensors")
    ours = [ours[f"logits_{i}"] for i in range(len(ids))]
    theirs = {q: llama_logits(f, ids)[0] for q, f in files.items()}
    for q in files:
        compare(f"merged {q}", theirs[q], ours)
    # q8_0's cost inside llama.cpp alone: its q8_0 run against its own f16 run of the same model.
    compare("llama.cpp q8_0 vs llama.cpp f16 (same runtime)", theirs["q8_0"], theirs["f16"])
    with_lora = llama_logits(base, ids, lora)[0]
    compare("base GGUF + LoRA GGUF", with_lora, ours)
    compare("base GGUF + LoRA GGUF vs llama.cpp merged f16 (same runtime)", with_lora, theirs["f16"])
    # The floor: llama.cpp on the base GGUF it was given (not written by us) vs lora-dpo on it.
    run(DUMP, base, tmp / "ids.json", tmp / "ours_base.safetensors")
    ours_base = load_file(tmp / "ours_base.safetensors")
    ours_base = [ours_base[f"logits_{i}"] for i in range(len(ids))]
    compare("the base GGUF itself (no export)", llama_logits(base, ids)[0], ours_base)
    # What q8_0 rounding alone does, without llama.cpp's arithmetic: lora-dpo on its own q8_0 file.
    run(DUMP, files["q8_0"], tmp / "ids.json", tmp / "ours_q8.safetensors")
    ours_q8 = load_file(tmp / "ours_q8.safetensors")
    compare("lora-dpo reading merged q8_0 (rounding only)", [ours_q8[f"logits_{i}"] for i in range(len(ids))], ours)
    n = sum(len(i) for i in ids)
    print(f"({len(ids)} prompts, {n} positions)")


if __name__ == "__main__":
    main()
