#!/usr/bin/env python3
"""Outside CI: TRL 1.16's own SimPO (trl.experimental.cpo.CPOTrainer with loss_type="simpo", cpo_alpha=0.0, i.e. pure
SimPO with no NLL term) on data/dpo/train.jsonl with the demo's LoRA (r 16, alpha 32, all seven projections), logging
every step (loss, grad_norm, rewards, logps, learning_rate), to see whether TRL's SimPO lifts held-out preference
accuracy within the demo budget (12 steps of 4 pairs) and to compare step by step with our implementation. Use the
same base on both sides: `lora-dpo merge --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out models/SmolLM2-135M-f32
--dtype f32` is exactly the demo's dequantized weights.

    python scripts/trl_simpo_compare.py [--beta 2.0] [--gamma 0.5] [--lr 5e-4] [--dropout 0.05] [--seed 0]
        [--bf16] [--out /tmp/trl-simpo-cmp] [--sampling random|sequential] [--init-adapter DIR]
        [--our-tokens]

A controlled comparison, the same run on both sides: `--sampling sequential --dropout 0 --our-tokens
--init-adapter A`, where A is our initial adapter (`lora-dpo dpo` with `dpo.max_steps=1`: warm-up makes step 1's
learning rate 0, so the saved adapter is the seeded initialisation), against `lora-dpo dpo --set
dpo.train_sampling_strategy="sequential" --set lora.lora_dropout=0.0` with the same seed: both then see the same
batches from the same start, and their metrics.jsonl can be compared step by step.

Writes OUT/metrics.jsonl (one line per step) and OUT/adapter. Evaluate with
`lora-dpo eval --model models/SmolLM2-135M-f32 --adapter OUT/adapter --data data/dpo/eval.jsonl --per-row > F.json`
then `python3 scripts/pref_accuracy.py F.json`.

What TRL does here (trl/experimental/cpo/cpo_trainer.py): the conversational rows go through the chat template
(prompt with the generation prompt; chosen/rejected = template(prompt + answer) minus the prompt, i.e.
"answer<|im_end|>\\n"), then tokenize_row appends one more EOS (<|im_end|>) because the last token is "\\n". logps are
the MEAN log-prob over those completion tokens (labels != -100: answer, <|im_end|>, "\\n", <|im_end|>); the loss is
-logsigmoid(beta * (mean_c - mean_r) - gamma); rewards/* = beta * mean logps. Two TRL defaults are overridden on purpose:
disable_dropout (default True would silently zero the LoRA dropout; here it is off only when --dropout 0) and bf16
(TRL's _BaseConfig defaults it to True even on CPU, i.e. bf16 autocast; here f32 unless --bf16). Batches come from
the Trainer's seeded random sampler (seed = data_seed = --seed). gradient_checkpointing is off (same numbers, faster)."""
import argparse, json, os, time, warnings
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl.experimental.cpo import CPOConfig, CPOTrainer

p = argparse.ArgumentParser()
p.add_argument("--model", default="models/SmolLM2-135M-f32")
p.add_argument("--data", default="data/dpo/train.jsonl")
p.add_argument("--beta", type=float, default=2.0)
p.add_argument("--gamma", type=float, default=0.5)
p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--dropout", type=float, default=0.05)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--bf16", action="store_true", help="TRL's own default (bf16 autocast on CPU); off = f32")
p.add_argument("--out", default="/tmp/trl-simpo-cmp")
p.add_argument("--sampling", default="random", help="transformers' train_sampling_strategy")
p.add_argument("--init-adapter", help="start from this PEFT adapter instead of a fresh initialisation")
p.add_argument("--our-tokens", action="store_true",
               help="no second EOS after the chat template's '<|im_end|>\\n' (tokens as lora-dpo's)")
a = p.parse_args()
torch.manual_seed(a.seed)
tok = AutoTokenizer.from_pretrained(a.model)
rows = [json.loads(l) for l in open(a.data)]
ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
base = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
if a.init_adapter:
    from peft import PeftModel
    model = PeftModel.from_pretrained(base, a.init_adapter, is_trainable=True)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = a.dropout
else:
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=a.dropout, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
if a.our_tokens:
    import trl.experimental.cpo.cpo_trainer as cpo_module
    cpo_module.add_eos_token_if_needed = lambda eos, chosen, rejected: (chosen, rejected)
os.makedirs(a.out, exist_ok=True)
log = open(f"{a.out}/metrics.jsonl", "w")
KEYS = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
        "logps/chosen", "logps/rejected", "nll_loss", "learning_rate")

class Log(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if "loss" not in (logs or {}):
            return
        keep = {k: v for k, v in logs.items() if k in KEYS}
        keep["step"] = state.global_step
        log.write(json.dumps(keep) + "\n"); log.flush()
        print("step", state.global_step, {k: round(v, 4) for k, v in keep.items()}, flush=True)

t0 = time.time()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    args = CPOConfig(output_dir=a.out, loss_type="simpo", beta=a.beta, simpo_gamma=a.gamma, cpo_alpha=0.0,
        learning_rate=a.lr, per_device_train_batch_size=4, max_steps=12, lr_scheduler_type="constant_with_warmup",
        warmup_steps=1, logging_steps=1, max_length=128, save_strategy="no", report_to=[], use_cpu=True,
        seed=a.seed, data_seed=a.seed, bf16=a.bf16, gradient_checkpointing=False,
        disable_dropout=(a.dropout == 0.0), remove_unused_columns=False, train_sampling_strategy=a.sampling)
    tr = CPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Log()])
    tr.train()
model.save_pretrained(f"{a.out}/adapter")
print(f"train+setup wall {time.time() - t0:.1f}s", flush=True)
