#!/usr/bin/env python3
"""LoRA gradients of one KTO step by TRL 1.16's KTOTrainer, for tests/numerics/kto.rs.

tiny-llama + its PEFT adapter (trainable, dropout 0), the base as `ref_model` (our reference:
the adapter switched off), the first batch of scripts/make_kto_fixtures.py's rows in file order
(batch 3, KL completions rotated within it as TRL does): `compute_loss` on that batch, backward.
Writes tests/fixtures/train/expected_kto_grads.safetensors: `loss` and `grad.<PEFT name>`.

    .venv/bin/python scripts/make_kto_grad_fixture.py
"""
import sys
import tempfile
import warnings

import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import KTOConfig, KTOTrainer

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from make_kto_fixtures import BATCH, BETA, KTO_ROWS, MODEL, OUT  # noqa: E402


def main():
    tok = AutoTokenizer.from_pretrained(MODEL)
    base = AutoModelForCausalLM.from_pretrained(MODEL, attn_implementation="eager", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, MODEL / "adapter", is_trainable=True)
    ref = AutoModelForCausalLM.from_pretrained(MODEL, attn_implementation="eager", dtype=torch.float32)
    ds = Dataset.from_list(KTO_ROWS)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = KTOConfig(output_dir=tmp, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
                         beta=BETA, report_to=[], bf16=False, use_cpu=True, gradient_checkpointing=False)
        trainer = KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, eval_dataset=ds,
                             processing_class=tok)
        batch = next(iter(trainer.get_eval_dataloader()))
        model.train()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
    out = {"loss": loss.detach().reshape(1)}
    for n, p in model.named_parameters():
        if p.grad is not None:
            out[f"grad.{n.replace('.default', '')}"] = p.grad.detach().contiguous()
    save_file(out, OUT / "expected_kto_grads.safetensors", metadata={"format": "pt"})
    print("loss", float(loss), "grads", len(out) - 1)


if __name__ == "__main__":
    main()
