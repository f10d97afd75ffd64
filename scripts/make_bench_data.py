#!/usr/bin/env python3
"""Writes data/bench/train.jsonl: 64 synthetic preference pairs for `scripts/bench.sh`.

Each row is a word problem after a sheet of worked sums (the prompt), a step-by-step answer
(chosen) and the same steps with one slip carried through to a wrong answer (rejected). All text
is generated here, deterministically (fixed seed, standard library only).

Rows are conversational ({"role", "content"} lists), so both tools render them with the model's
chat template (TRL and lora-dpo apply no template to plain-string rows). Sized for SmolLM2's
template and tokenizer: the rendered prompt is about 150-180 tokens and prompt + completion
about 240-256, so a job with max_length 256 runs near full length and truncates little.

    python3 scripts/make_bench_data.py                  # writes the file
    python3 scripts/make_bench_data.py --check MODEL    # also prints token-length percentiles
                                                        # (needs transformers, e.g. .venv)
"""

import argparse
import json
import random
from pathlib import Path

ROWS = 64
SHEET_LINES = 5
OPS = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("x", lambda a, b: a * b)]
ITEMS = [("shop", "boxes", "pencils"), ("farm", "crates", "apples"), ("library", "shelves", "books"),
         ("bakery", "trays", "rolls"), ("school", "packs", "markers"), ("garage", "bins", "bolts")]


def sheet(rng):
    lines = []
    for _ in range(SHEET_LINES):
        sym, f = rng.choice(OPS)
        a, b = (rng.randint(11, 99), rng.randint(2, 9)) if sym == "x" else (rng.randint(100, 999), rng.randint(10, 99))
        lines.append(f"{a} {sym} {b} = {f(a, b)}")
    return lines


def row(rng, i):
    place, unit, thing = ITEMS[i % len(ITEMS)]
    a, b, c, d = rng.randint(12, 48), rng.randint(6, 24), rng.randint(20, 90), rng.randint(3, 15)
    prompt = (f"Practice sheet {i + 1}. Here are some worked sums for reference:\n" + "\n".join(sheet(rng)) +
              f"\n\nQuestion: A {place} has {a} {unit} of {b} {thing} each. It gives away {c} {thing}, "
              f"then receives {d} more {unit} of {b}. How many {thing} does it have now? "
              "Work it out step by step and end with the final answer.")

    def answer(slip):
        total = a * b
        left = total - c + (10 if slip == 1 else 0)
        new = d * b + (b if slip == 2 else 0)
        return (f"Step 1: {a} x {b} = {total}.\n"
                f"Step 2: {total} - {c} = {left} left.\n"
                f"Step 3: {d} x {b} = {new} new.\n"
                f"Step 4: {left} + {new} = {left + new}.\n"
                f"Final answer: {left + new} {thing}.")

    msg = lambda role, text: [{"role": role, "content": text}]
    return {"prompt": msg("user", prompt), "chosen": msg("assistant", answer(0)),
            "rejected": msg("assistant", answer(rng.choice([1, 2])))}


def check(rows, model):
    """Token lengths as TRL counts them: the prompt rendered with the generation prompt, and the
    whole conversation rendered, both with the model's chat template."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    n = lambda msgs, gen=False: len(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen,
                                                            return_dict=True)["input_ids"])
    cols = {"prompt": [], "prompt+chosen": [], "prompt+rejected": []}
    for r in rows:
        cols["prompt"].append(n(r["prompt"], True))
        cols["prompt+chosen"].append(n(r["prompt"] + r["chosen"]))
        cols["prompt+rejected"].append(n(r["prompt"] + r["rejected"]))
    print(f"tokens ({model}): {'':17} min  p10  p50  p90  max")
    for name, v in cols.items():
        v = sorted(v)
        pct = lambda q: v[min(len(v) - 1, int(q * len(v)))]
        print(f"  {name:32} {v[0]:4} {pct(.1):4} {pct(.5):4} {pct(.9):4} {v[-1]:4}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/bench/train.jsonl")
    ap.add_argument("--check", metavar="MODEL_DIR", help="print token-length percentiles with this tokenizer")
    args = ap.parse_args()
    rng = random.Random(1234)
    rows = [row(rng, i) for i in range(ROWS)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {out} ({len(rows)} rows, {out.stat().st_size} bytes)")
    if args.check:
        check(rows, args.check)


if __name__ == "__main__":
    main()
