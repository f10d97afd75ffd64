#!/usr/bin/env python3
"""Outside CI: TRL 1.16 KTOTrainer on data/kto/train.jsonl with configs/demo_kto.toml's settings (SmolLM2-135M HF
folder, LoRA r16/alpha32/dropout 0.05 on all projections, lr 5e-4, beta 0.1, batch 8, 12 steps), for
comparing its learning with `lora-dpo kto`. Writes /tmp/trl-kto/adapter; evaluate it with
`lora-dpo eval --model models/SmolLM2-135M-f32 --adapter /tmp/trl-kto/adapter --data data/dpo/eval.jsonl --per-row`."""
import json, sys, warnings, tempfile
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import KTOConfig, KTOTrainer
torch.manual_seed(0)
M = "models/SmolLM2-135M-f32"
tok = AutoTokenizer.from_pretrained(M)
rows = [json.loads(l) for l in open("data/kto/train.jsonl")]
ds = Dataset.from_list(rows)
base = AutoModelForCausalLM.from_pretrained(M, dtype=torch.float32)
ref = AutoModelForCausalLM.from_pretrained(M, dtype=torch.float32)
model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
    target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]))
class Log(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        keep = {k: round(v, 3) for k, v in (logs or {}).items() if k in ("loss","kl","rewards/chosen","rewards/rejected","logps/chosen","logps/rejected")}
        print("step", state.global_step, keep, flush=True)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    args = KTOConfig(output_dir="/tmp/trl-kto", per_device_train_batch_size=8, learning_rate=5e-4, beta=0.1,
        max_steps=12, lr_scheduler_type="constant_with_warmup", warmup_steps=1, logging_steps=2, save_strategy="no",
        report_to=[], use_cpu=True, max_length=128, desirable_weight=1.0, undesirable_weight=1.0)
    tr = KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok, callbacks=[Log()])
    tr.train()
model.save_pretrained("/tmp/trl-kto/adapter")
