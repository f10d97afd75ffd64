#!/usr/bin/env python3
"""The PyTorch + PEFT side of the GPU kit (`scripts/gpu_check.sh`): the same DPO step as
`lora-dpo bench` runs there, timed. No TRL is needed: the step is TRL's sigmoid DPO written out.

Model in bf16 (transformers, `dtype=torch.bfloat16`; the base is not 4-bit: bitsandbytes is not
assumed), a fresh PEFT LoRA adapter (r 16, alpha 32, dropout 0.05, all seven projections),
gradient checkpointing, AdamW, batch 1 pair: prompt and two completions of random token ids,
each sequence `--max-length` tokens (half prompt). The reference log-probs come from the same
model with the adapter disabled, under no_grad, every step (TRL's default with PEFT). Measures,
over the steps after the warm-up: the median step time (torch.cuda.synchronize() around it),
tokens/s (2 × max_length per step) and the peak memory torch allocated and reserved.

    python3 scripts/gpu_torch_step.py --model DIR [--device cuda] [--steps 3] [--warmup 1] [--max-length 1024]
"""

import argparse
import json
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--beta", type=float, default=0.1)
    args = ap.parse_args()

    import peft
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    dev = torch.device(args.device)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(dev)
    load_s = time.perf_counter() - t0
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"])
    model = peft.get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    vocab = model.config.vocab_size
    half = args.max_length // 2

    def logps(m, ids, prompt_len):
        logits = m(input_ids=ids).logits[:, :-1].float()
        targets = ids[:, 1:]
        lp = torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)
        return lp[:, prompt_len - 1:].sum(-1)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        prompt = torch.randint(0, vocab, (1, half), device=dev)
        chosen = torch.cat([prompt, torch.randint(0, vocab, (1, args.max_length - half), device=dev)], 1)
        rejected = torch.cat([prompt, torch.randint(0, vocab, (1, args.max_length - half), device=dev)], 1)
        ids = torch.cat([chosen, rejected], 0)
        sync()
        t = time.perf_counter()
        with torch.no_grad(), model.disable_adapter():
            ref = logps(model, ids, half)
        pol = logps(model, ids, half)
        margin = (pol[0] - ref[0]) - (pol[1] - ref[1])
        loss = -F.logsigmoid(args.beta * margin)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        sync()
        times.append(time.perf_counter() - t)
    kept = times[args.warmup:]
    sec = statistics.median(kept)
    result = {
        "tool": "pytorch+peft",
        "device": str(dev),
        "steps": len(kept),
        "sec_per_step_median": sec,
        "tokens_per_sec": 2 * args.max_length / sec,
        "load_s": load_s,
        "loss_last": loss_value,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }
    if dev.type == "cuda":
        result["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    print(json.dumps(result))


if __name__ == "__main__":
    main()
