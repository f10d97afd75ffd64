#!/usr/bin/env python3
"""Writes synthetic JSONL datasets of a chosen size for `scripts/bench_data.sh`.

Kinds:
  sft-short   conversational SFT rows of ~150 bytes (one user turn, one assistant turn)
  sft-long    UltraChat-sized SFT rows of ~1.5 kB (three user/assistant exchanges)
  dpo-short   conversational preference pairs of ~200 bytes

Text is generated deterministically (fixed seed, standard library only), so two runs write the same file.

    python3 scripts/make_scale_data.py --kind sft-short --rows 20000 --out data/scale/sft-short-20000.jsonl
"""

import argparse
import json
import random

WORDS = ("the a model data row token train step loss batch pair chosen rejected prompt answer question "
         "shop farm apple pencil library book river stone cloud paper light window garden music "
         "number seven twelve quickly slowly because however therefore maybe").split()


def sentence(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def paragraph(rng, target_bytes):
    out = []
    while sum(len(s) + 1 for s in out) < target_bytes:
        out.append(sentence(rng, rng.randint(6, 14)))
    return " ".join(out)


def msg(role, text):
    return {"role": role, "content": text}


def row(kind, rng):
    if kind == "sft-short":
        return {"messages": [msg("user", paragraph(rng, 50)), msg("assistant", paragraph(rng, 60))]}
    if kind == "sft-long":
        turns = []
        for _ in range(3):
            turns.append(msg("user", paragraph(rng, 120)))
            turns.append(msg("assistant", paragraph(rng, 330)))
        return {"messages": turns}
    if kind == "dpo-short":
        return {"prompt": [msg("user", paragraph(rng, 60))],
                "chosen": [msg("assistant", paragraph(rng, 50))],
                "rejected": [msg("assistant", paragraph(rng, 50))]}
    raise SystemExit(f"unknown kind {kind}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", required=True, choices=["sft-short", "sft-long", "dpo-short"])
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rng = random.Random(f"{args.kind}-{args.rows}")
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for _ in range(args.rows):
            f.write(json.dumps(row(args.kind, rng)) + "\n")
    import os
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
