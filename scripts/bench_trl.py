#!/usr/bin/env python3
"""The TRL + PEFT half of `scripts/bench.sh`: the same LoRA DPO job as `lora-dpo bench`, on CPU.

Runs `--warmup + --steps` optimizer steps of TRL's DPOTrainer with a fresh PEFT LoRA adapter on
all seven projections (lora_dropout 0.0), f32, no gradient checkpointing, no gradient
accumulation, and the reference log-probs computed every step with the adapter disabled (PEFT +
TRL's default; precompute_ref_log_probs=False). Measures, over the steps after the warm-up:

- sec_per_step_median: median wall time of one optimizer step, from TrainerCallback.on_step_begin
  to on_step_end (time.perf_counter): policy forward + backward, reference forward, clipping and
  AdamW. The batch is fetched and collated just before on_step_begin, so it is not counted
  (a few ms at this size).
- tokens_per_sec: median over the steps of (tokens / step time), where tokens are the real,
  non-pad tokens of the step's policy batch (attention_mask sums of the chosen and the rejected
  sequences), read from TRL's own counter (DPOTrainer._total_train_tokens) at each step's ends.
- peak_rss_mib: ru_maxrss of the whole process (model load included) / 1024.

    .venv/bin/python scripts/bench_trl.py --model DIR --data data/bench/train.jsonl --steps 5 --warmup 1 --json
"""

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
import warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a Hugging Face model folder")
    ap.add_argument("--data", default="data/bench/train.jsonl")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-prompt-length", type=int, default=None,
                    help="keep the last N prompt tokens (older TRL's option, gone in TRL 1.x: done here after "
                         "TRL tokenizes, as lora-dpo's `max_prompt_length` does); default: no limit, as TRL 1.16")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    import datasets
    import peft
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(42)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.trainer, self.steps = None, []  # (seconds, tokens) per optimizer step

        def on_step_begin(self, *_, **__):
            self.t0, self.tok0 = time.perf_counter(), self.trainer._total_train_tokens

        def on_step_end(self, *_, **__):
            self.steps.append((time.perf_counter() - self.t0, self.trainer._total_train_tokens - self.tok0))

    class Trainer(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, *a, **kw):
            dataset = super()._prepare_dataset(dataset, *a, **kw)
            n = args.max_prompt_length
            return dataset if n is None else dataset.map(lambda ex: {"prompt_ids": ex["prompt_ids"][-n:]})

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    with open(args.data) as f:
        data = datasets.Dataset.from_list([json.loads(line) for line in f if line.strip()])
    lora = peft.LoraConfig(
        r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out:
        config = trl.DPOConfig(
            output_dir=out, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant",
            beta=args.beta, max_length=args.max_length, precompute_ref_log_probs=False,
            bf16=False, fp16=False, activation_checkpointing=False, use_cpu=True, seed=42,
            report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                          peft_config=lora, callbacks=[timer])
        assert not config.gradient_checkpointing and config.gradient_accumulation_steps == 1
        trainer.remove_callback(transformers.PrinterCallback)  # the end-of-training log line
        timer.trainer = trainer
        trainer.train()

    kept = timer.steps[args.warmup:]
    result = {
        "tool": "trl",
        "steps": len(kept),
        "warmup": args.warmup,
        "sec_per_step_median": statistics.median(s for s, _ in kept),
        "tokens_per_sec": statistics.median(t / s for s, t in kept),
        "tokens_per_step_median": statistics.median(t for _, t in kept),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "optim": str(config.optim),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "trl": trl.__version__},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"trl dpo on cpu: {result['sec_per_step_median']:.3f} s/step (median of {result['steps']}), "
              f"{result['tokens_per_sec']:.1f} tokens/s, peak RSS {result['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
