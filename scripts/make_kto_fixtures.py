#!/usr/bin/env python3
"""Reference numbers for KTO from TRL's own code (pinned: trl==1.16.0, transformers==5.23.0,
peft==0.21.2, torch 2.15; the script refuses other TRL versions).

1. Loss and metrics on fixed log-probs: `KTOTrainer._compute_loss` itself, run on a stand-in
   trainer and a stand-in model whose per-token log-probs sum to the chosen values, with
   `precompute_ref_log_probs` so the reference log-probs come from the batch.
   -> tests/fixtures/train/expected_kto_loss.json
2. End to end on tests/fixtures/models/tiny-llama with its adapter: a real `KTOTrainer` (the
   reference is the model with the adapter disabled) tokenizes tests/fixtures/train/kto.jsonl,
   builds its KL pairs and evaluates it (the base model is passed as `ref_model`); a forward hook records each row's summed log-probs
   (policy and reference, own and KL sequence), and `evaluate()` gives the metrics.
   -> tests/fixtures/train/kto.jsonl, expected_kto_eval.json
3. The tokens and KL pairs `KTOTrainer` makes of plain-text rows.
   -> tests/fixtures/train/kto_text.jsonl, expected_kto_text_tokens.json

Run: /work/main/.venv/bin/python scripts/make_kto_fixtures.py
"""
import json
import pathlib
import tempfile
import warnings
from collections import defaultdict
from types import SimpleNamespace

import torch
import trl
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import KTOConfig, KTOTrainer

assert trl.__version__ == "1.16.0", f"fixtures are pinned to trl 1.16.0, not {trl.__version__}"

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MODEL = ROOT / "models" / "tiny-llama"
OUT = ROOT / "train"

U = lambda c: {"role": "user", "content": c}
A = lambda c: {"role": "assistant", "content": c}
S = lambda c: {"role": "system", "content": c}

# Six conversational rows, both labels in each batch of three (TRL rotates the KL completions
# within chunks of per_device_train_batch_size = 3). Every sequence, KL ones included, stays within
# tiny-llama's 64 positions, which we enforce and transformers does not.
KTO_ROWS = [
    {"prompt": [U("2+3=?")], "completion": [A("5")], "label": True},
    {"prompt": [S("be brief"), U("capital of France?")], "completion": [A("Rome.")], "label": False},
    {"prompt": [U("4*2=?")], "completion": [A("8")], "label": True},
    {"prompt": [U("7-3=?")], "completion": [A("3, I think")], "label": False},
    {"prompt": [U("hi"), A("yo"), U("9+1=?")], "completion": [A("10")], "label": True},
    {"prompt": [U("capital of Italy?")], "completion": [A("Paris, surely.")], "label": False},
]
BATCH = 3
BETA = 0.1
# Standard (plain-text) rows: TRL appends EOS to the completion and tokenizes with the
# tokenizer's special tokens.
KTO_TEXT_ROWS = [
    {"prompt": "2+3=", "completion": " 5", "label": True},
    {"prompt": "The capital of France is", "completion": " Rome.", "label": False},
    {"prompt": "4*2=", "completion": " 8<|im_end|>", "label": True},  # EOS already there
    {"prompt": "7-3=", "completion": " 3", "label": False},
    {"prompt": "Hello", "completion": ", world", "label": True},
]

# (name, beta, desirable_weight, undesirable_weight, rows of (label, logp, ref, kl_logp, ref_kl))
LOSS_CASES = [
    ("mixed", 0.1, 1.0, 1.0, [
        (True, -12.5, -13.0, -20.0, -21.5),
        (False, -8.25, -7.5, -15.0, -15.25),
        (True, -30.0, -29.0, -9.5, -10.0),
        (False, -5.0, -6.5, -18.0, -17.0),
    ]),
    # mean(logp_KL − ref_KL) < 0: the estimate is clamped to 0
    ("kl_clamped", 0.5, 1.33, 1.0, [
        (True, -3.0, -4.0, -10.0, -8.0),
        (False, -6.0, -5.0, -11.0, -10.5),
        (False, -2.5, -2.0, -7.0, -7.5),
    ]),
    ("only_desirable", 0.2, 1.0, 1.0, [
        (True, -4.0, -4.5, -6.0, -6.5),
        (True, -9.0, -8.0, -12.0, -12.25),
    ]),
    ("only_undesirable", 2.0, 1.0, 0.75, [
        (False, -4.0, -4.5, -6.0, -5.0),
        (False, -1.0, -3.0, -2.0, -4.0),
    ]),
]
# KTOConfig.loss_type = "apo_zero_unpaired": no KL estimate (TRL runs no KL pass, logs kl 0).
APO_CASES = [
    # Rows whose KL estimate is far from 0, so that fixing it at 0 shows.
    ("apo_zero_unpaired", 1.0, 1.0, 1.0, LOSS_CASES[0][4]),
    ("apo_zero_unpaired_weighted", 2.0, 1.0, 0.75, LOSS_CASES[3][4]),
]


def stub_loss(beta, dw, uw, rows, loss_type="kto"):
    """`KTOTrainer._compute_loss` on fixed log-probs: a stand-in `self` and model."""
    n = len(rows)
    label = torch.tensor([r[0] for r in rows])
    logp = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    ref = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    kl_logp = torch.tensor([r[3] for r in rows], dtype=torch.float64)
    ref_kl = torch.tensor([r[4] for r in rows], dtype=torch.float64)
    # Own sequences of 3 tokens, KL ones of 4: the stand-in model tells them apart by width.
    batch = {
        "input_ids": torch.zeros(n, 3, dtype=torch.long),
        "attention_mask": torch.ones(n, 3, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1, 1]] * n),
        "KL_input_ids": torch.zeros(n, 4, dtype=torch.long),
        "KL_attention_mask": torch.ones(n, 4, dtype=torch.long),
        "KL_completion_mask": torch.tensor([[0, 1, 1, 1]] * n),
        "label": label,
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }

    def model(input_ids, **_):
        t = input_ids.shape[1] - 1
        total = logp if input_ids.shape[1] == 3 else kl_logp
        per_token = torch.zeros(n, t, dtype=torch.float64)
        per_token[:, -1] = total  # sums to the row's value
        return SimpleNamespace(
            log_probs=per_token,
            entropy=torch.zeros(n, t, dtype=torch.float64),
            mean_logits=torch.zeros(n, t, dtype=torch.float64),
        )

    model.training = True
    acc = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x)
    me = SimpleNamespace(
        model=model, accelerator=acc, calculate_KL=loss_type != "apo_zero_unpaired",
        precompute_ref_logps=True, loss_type=loss_type, beta=beta, desirable_weight=dw, undesirable_weight=uw,
        aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1,
        _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
    )
    me._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(me, m, b)
    loss = KTOTrainer._compute_loss(me, model, batch, False)
    metrics = {k: v[-1] for k, v in me._metrics["train"].items()
               if k.startswith(("rewards/", "logps/", "kl"))}
    return float(loss), metrics


def loss_fixture():
    cases = []
    for name, beta, dw, uw, rows in LOSS_CASES + APO_CASES:
        loss_type = "apo_zero_unpaired" if name.startswith("apo") else "kto"
        loss, metrics = stub_loss(beta, dw, uw, rows, loss_type)
        cases.append({
            "name": name, "loss_type": loss_type, "beta": beta, "desirable_weight": dw, "undesirable_weight": uw,
            "label": [r[0] for r in rows], "logps": [r[1] for r in rows],
            "ref_logps": [r[2] for r in rows], "kl_logps": [r[3] for r in rows],
            "ref_kl_logps": [r[4] for r in rows], "loss": loss, "metrics": metrics,
        })
    (OUT / "expected_kto_loss.json").write_text(json.dumps(cases, indent=1) + "\n")
    print("loss cases:", {c["name"]: round(c["loss"], 6) for c in cases})


def eval_fixture():
    with open(OUT / "kto.jsonl", "w") as f:
        for r in KTO_ROWS:
            f.write(json.dumps(r) + "\n")
    tok = AutoTokenizer.from_pretrained(MODEL)
    base = AutoModelForCausalLM.from_pretrained(MODEL, attn_implementation="eager", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, MODEL / "adapter", is_trainable=True)
    # A PEFT model alone would get a "ref" copy of its adapter as the reference; ours is the base
    # without the adapter, so it is passed as the reference model.
    ref = AutoModelForCausalLM.from_pretrained(MODEL, attn_implementation="eager", dtype=torch.float32)
    ds = Dataset.from_list(KTO_ROWS)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = KTOConfig(
            output_dir=tmp, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
            beta=BETA, report_to=[], bf16=False, use_cpu=True, gradient_checkpointing=False,
        )
        trainer = KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds,
                             eval_dataset=ds, processing_class=tok)
        calls = []

        def hook(module, _args, kwargs, output):
            t = kwargs["input_ids"].shape[1] - 1
            calls.append(output.log_probs[:, -t:].sum(-1).detach().double())

        handles = [m.register_forward_hook(hook, with_kwargs=True)
                   for m in (trainer.model, trainer.ref_model)]
        metrics = trainer.evaluate()
        for h in handles:
            h.remove()
        prepared = trainer.eval_dataset
    # Per batch: policy KL, policy, reference KL, reference (the order of `_compute_loss`).
    assert len(calls) % 4 == 0, len(calls)
    per_row = []
    for b in range(len(calls) // 4):
        kl, own, ref_kl, ref_sums = calls[4 * b: 4 * b + 4]
        for i in range(len(own)):
            per_row.append({"logps": float(own[i]), "ref_logps": float(ref_sums[i]),
                            "kl_logps": float(kl[i]), "ref_kl_logps": float(ref_kl[i])})
    for i, row in enumerate(prepared):
        per_row[i]["label"] = bool(row["label"])
        per_row[i]["prompt_ids"] = row["prompt_ids"]
        per_row[i]["completion_ids"] = row["completion_ids"]
        per_row[i]["kl_completion_ids"] = row["KL_completion_ids"]
    out = {
        "config": {"beta": BETA, "batch_size": BATCH, "desirable_weight": 1.0, "undesirable_weight": 1.0},
        "metrics": {k.removeprefix("eval_"): v for k, v in metrics.items()
                    if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))},
        "per_row": per_row,
    }
    (OUT / "expected_kto_eval.json").write_text(json.dumps(out, indent=1) + "\n")
    print("eval:", out["metrics"])

    # Tokens and KL pairs of plain-text rows (chunks of 2: the last chunk has one row).
    with open(OUT / "kto_text.jsonl", "w") as f:
        for r in KTO_TEXT_ROWS:
            f.write(json.dumps(r) + "\n")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = KTOConfig(output_dir=tmp, per_device_train_batch_size=2, report_to=[], bf16=False,
                         use_cpu=True, gradient_checkpointing=False)
        trainer = KTOTrainer(model=model, ref_model=ref, args=args,
                             train_dataset=Dataset.from_list(KTO_TEXT_ROWS), processing_class=tok)
        text_rows = [{"prompt_ids": r["prompt_ids"], "completion_ids": r["completion_ids"],
                      "kl_completion_ids": r["KL_completion_ids"], "label": bool(r["label"])}
                     for r in trainer.train_dataset]
    (OUT / "expected_kto_text_tokens.json").write_text(
        json.dumps({"batch_size": 2, "rows": text_rows}) + "\n")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    loss_fixture()
    eval_fixture()
