#!/usr/bin/env python3
"""Unpairs the DPO sample pairs into KTO's unpaired layout: data/dpo/{train,eval}.jsonl ->
data/kto/{train,eval}.jsonl, each pair giving `{prompt, completion: chosen, label: true}` and
`{prompt, completion: rejected, label: false}` (TRL's `unpair_preference_dataset`), shuffled
with a fixed seed.

Why shuffled: the KL estimate pairs each row with the completion of the row before it in its
batch-size chunk of the file. Kept in pair order, a chunk would pair a rejected row with its
own prompt's chosen completion, a matched pair rather than a mismatched one; all chosen rows
first (TRL's own unpairing order) would give batches of one label.

    python3 scripts/make_kto_data.py
"""
import json
import pathlib
import random

ROOT = pathlib.Path(__file__).resolve().parent.parent / "data"


def unpair(rows):
    out = []
    for r in rows:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def main():
    (ROOT / "kto").mkdir(exist_ok=True)
    for split in ["train", "eval"]:
        rows = [json.loads(l) for l in open(ROOT / "dpo" / f"{split}.jsonl")]
        out = unpair(rows)
        random.Random(42).shuffle(out)
        with open(ROOT / "kto" / f"{split}.jsonl", "w") as f:
            for r in out:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"data/kto/{split}.jsonl: {len(out)} rows from {len(rows)} pairs")


if __name__ == "__main__":
    main()
