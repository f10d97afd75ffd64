#!/usr/bin/env python3
"""Outside CI: TRL 1.16 KTOTrainer with configs/demo_kto.toml's settings, logging every step (loss, grad_norm, kl,
logps, rewards, counts), for a step-by-step comparison with `lora-dpo kto ... --set kto.logging_steps=1`
(its runs/<dir>/kto/metrics.jsonl). Use the same base on both sides: `lora-dpo merge --model
models/SmolLM2-135M-Instruct.Q4_1.gguf --out models/SmolLM2-135M-f32 --dtype f32` is exactly the demo's dequantized
weights.

    python scripts/trl_kto_compare.py [--dropout 0.0] [--seed 0] [--sequential] [--out /tmp/trl-kto-cmp]

KTOConfig's own default train_sampling_strategy is "sequential" (file order, batch k = rows 8k..8k+7, the KL
completions rotated within that batch), so TRL is already deterministic in order; --sequential only forces it. Writes OUT/metrics.jsonl and
OUT/adapter (evaluate with `lora-dpo eval --model models/SmolLM2-135M-f32 --adapter OUT/adapter --data
data/dpo/eval.jsonl --per-row`)."""
import argparse, json, os, warnings
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import KTOConfig, KTOTrainer

p = argparse.ArgumentParser()
p.add_argument("--model", default="models/SmolLM2-135M-f32")
p.add_argument("--dropout", type=float, default=0.05)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--sequential", action="store_true")
p.add_argument("--out", default="/tmp/trl-kto-cmp")
p.add_argument("--lr", type=float, default=5e-4)
a = p.parse_args()
torch.manual_seed(a.seed)
tok = AutoTokenizer.from_pretrained(a.model)
rows = [json.loads(l) for l in open("data/kto/train.jsonl")]
ds = Dataset.from_list(rows)
base = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
ref = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=a.dropout, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
os.makedirs(a.out, exist_ok=True)
log = open(f"{a.out}/metrics.jsonl", "w")
KEYS = ("loss", "grad_norm", "kl", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected",
        "count/chosen", "count/rejected", "learning_rate")

class Log(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        keep = {k: v for k, v in (logs or {}).items() if k in KEYS}
        keep["step"] = state.global_step
        log.write(json.dumps(keep) + "\n"); log.flush()
        print("step", state.global_step, {k: round(v, 3) for k, v in keep.items()}, flush=True)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    args = KTOConfig(output_dir=a.out, per_device_train_batch_size=8, learning_rate=a.lr, beta=0.1,
        max_steps=12, lr_scheduler_type="constant_with_warmup", warmup_steps=1, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, max_length=128, desirable_weight=1.0, undesirable_weight=1.0, seed=a.seed,
        data_seed=a.seed)
    tr = KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok, callbacks=[Log()])
    if a.sequential:
        tr._get_train_sampler = lambda *x, **k: torch.utils.data.SequentialSampler(tr.train_dataset)
    tr.train()
model.save_pretrained(f"{a.out}/adapter")
