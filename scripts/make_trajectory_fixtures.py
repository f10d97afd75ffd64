#!/usr/bin/env python3
"""Several optimizer steps by TRL 1.16's own trainers, for tests/runs/trajectories.rs.

One-step gradients are checked elsewhere; this checks what they feed: AdamW, clipping, the
schedule and the order of batches over steps, against the real trainers, end to end. Each case
starts tiny-llama's PEFT adapter (trainable, dropout 0) and trains it on
tests/fixtures/train/prefs.jsonl in file order (`train_sampling_strategy = "sequential"`),
batch 2, four steps (the fourth begins a second epoch), constant learning rate, f32:

  - `simpo`:   CPOTrainer, loss_type "simpo", cpo_alpha 0, beta 2.0, simpo_gamma 0.5;
  - `sigmoid`: DPOTrainer, beta 0.1, the reference = the base with the adapter switched off.

CPOTrainer's tokenize_row puts a BOS before the prompt when the template has none (tiny-llama's
"<s>") and a second EOS after the chat template's "<|im_end|>\\n"; the fixture turns both off so
both sides run the same ids, DPOTrainer's (tokens are checked elsewhere; the difference is
stated in the README).

Writes tests/fixtures/train/expected_trajectories.json (per case its settings and, per step,
TRL's logged loss, grad_norm, rewards/margins, logps/chosen, logps/rejected) and
expected_trajectories.safetensors (`<case>.<PEFT name>`: the adapter after the last step).

    .venv/bin/python scripts/make_trajectory_fixtures.py
"""
import json
import pathlib
import tempfile
import warnings

import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MODEL = ROOT / "models" / "tiny-llama"
DATA = ROOT / "train" / "prefs.jsonl"
OUT = ROOT / "train"
STEPS, BATCH, LR = 4, 2, 5e-3
KEYS = ("loss", "grad_norm", "rewards/margins", "logps/chosen", "logps/rejected")

CASES = {
    "simpo": {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5},
    "sigmoid": {"loss_type": "sigmoid", "beta": 0.1},
}


class Record(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.steps.append({"step": state.global_step, **{k: logs[k] for k in KEYS}})


def common_args(tmp):
    return dict(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=LR,
                lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no",
                report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=128,
                train_sampling_strategy="sequential", seed=0, remove_unused_columns=False)


def run(name, keys, rows, tok):
    base = AutoModelForCausalLM.from_pretrained(MODEL, attn_implementation="eager", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, MODEL / "adapter", is_trainable=True)
    record = Record()
    ds = Dataset.from_list(rows)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if keys["loss_type"] == "simpo":
            import trl.experimental.cpo.cpo_trainer as cpo_module
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            cpo_module.add_eos_token_if_needed = lambda eos, chosen, rejected: (chosen, rejected)
            cpo_module.add_bos_token_if_needed = lambda bos, _pl, p, _cl, c, _rl, r: (p, c, r)
            args = CPOConfig(**common_args(tmp), **keys, cpo_alpha=0.0)
            trainer = CPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                 callbacks=[record])
        else:
            from trl import DPOConfig, DPOTrainer

            args = DPOConfig(**common_args(tmp), **keys)
            trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                 callbacks=[record])
        trainer.train()
    assert [s["step"] for s in record.steps] == list(range(1, STEPS + 1)), record.steps
    weights = {f"{name}.{n.replace('.default', '')}": p.detach().contiguous()
               for n, p in model.named_parameters() if ".default." in n}
    return record.steps, weights


def main():
    tok = AutoTokenizer.from_pretrained(MODEL)
    # One row has an implicit prompt (the shared start of chosen and rejected), which the Arrow
    # dataset would read as prompt = None: split it off as TRL's extract_prompt does, and as we do.
    from trl.data_utils import maybe_extract_prompt

    rows = [maybe_extract_prompt(json.loads(line)) for line in open(DATA)]
    cases, tensors = [], {}
    for name, keys in CASES.items():
        steps, weights = run(name, keys, rows, tok)
        cases.append({"name": name, "keys": keys, "steps": steps})
        tensors.update(weights)
        print(name, [round(s["loss"], 6) for s in steps])
    settings = {"max_steps": STEPS, "per_device_train_batch_size": BATCH, "learning_rate": LR,
                "lr_scheduler_type": "constant", "train_sampling_strategy": "sequential"}
    json.dump({"settings": settings, "cases": cases}, open(OUT / "expected_trajectories.json", "w"), indent=1)
    save_file(tensors, OUT / "expected_trajectories.safetensors", metadata={"format": "pt"})


if __name__ == "__main__":
    main()
