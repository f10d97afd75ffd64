#!/usr/bin/env python3
"""Writes the project's sample datasets (no third-party text; deterministic).

data/sft/{train,eval}.jsonl   SFT, `messages` schema: arithmetic and capital-city questions, some multi-turn,
                              some with a system message.
data/dpo/{train,eval}.jsonl   DPO, `prompt` / `chosen` / `rejected` message lists: chosen is the right answer,
                              rejected a wrong one (off-by-a-little sums, another country's capital).

The eval splits hold questions that do not appear in the train splits. Run from the repository root:
    python scripts/make_sample_data.py
Only the standard library is used.
"""

import json
import random
from pathlib import Path

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"),
    ("Denmark", "Copenhagen"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Poland", "Warsaw"), ("Greece", "Athens"), ("Ireland", "Dublin"), ("Hungary", "Budapest"),
    ("Czechia", "Prague"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Croatia", "Zagreb"),
    ("Serbia", "Belgrade"), ("Ukraine", "Kyiv"), ("Iceland", "Reykjavik"), ("Estonia", "Tallinn"),
    ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"), ("South Korea", "Seoul"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Ghana", "Accra"),
    ("Morocco", "Rabat"), ("Ethiopia", "Addis Ababa"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"), ("Peru", "Lima"),
    ("Colombia", "Bogota"), ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Turkey", "Ankara"),
]

SYSTEM = "You are a concise assistant. Answer in one sentence."

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_questions():
    qs = []
    for a in range(2, 40):
        for b in range(2, 40):
            for op in "+-*":
                if op == "*" and (a > 12 or b > 12):
                    continue
                if op == "-" and b > a:
                    continue
                qs.append((a, op, b))
    return qs


def ask_sum(a, op, b, rng):
    forms = [
        f"What is {a} {op} {b}?",
        f"Compute {a} {op} {b}.",
        f"How much is {a} {op} {b}?",
    ]
    return rng.choice(forms)


def answer_sum(a, op, b, value):
    return f"{a} {op} {b} = {value}."


def ask_capital(country, rng):
    forms = [
        f"What is the capital of {country}?",
        f"Which city is the capital of {country}?",
        f"Name the capital city of {country}.",
    ]
    return rng.choice(forms)


def answer_capital(country, city):
    return f"The capital of {country} is {city}."


def wrong_value(value, rng):
    delta = rng.choice([-3, -2, -1, 1, 2, 3, 10, -10])
    return value + delta


def split_items(items, n_eval, rng):
    items = list(items)
    rng.shuffle(items)
    return items[n_eval:], items[:n_eval]


def qa_pairs(arith, capitals, rng):
    """(question, right answer, wrong answer) triples, alternating tasks."""
    out = []
    for i in range(max(len(arith), len(capitals))):
        if i < len(arith):
            a, op, b = arith[i]
            v = OPS[op](a, b)
            out.append((ask_sum(a, op, b, rng), answer_sum(a, op, b, v), answer_sum(a, op, b, wrong_value(v, rng))))
        if i < len(capitals):
            country, city = capitals[i]
            others = [c for _, c in CAPITALS if c != city]
            out.append((ask_capital(country, rng), answer_capital(country, city),
                        answer_capital(country, rng.choice(others))))
    return out


def sft_rows(pairs, n, rng):
    rows = []
    i = 0
    while len(rows) < n:
        kind = len(rows) % 5
        q, a, _ = pairs[i % len(pairs)]
        i += 1
        msgs = []
        if kind == 1:
            msgs.append({"role": "system", "content": SYSTEM})
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if kind == 3:  # a second turn
            q2, a2, _ = pairs[i % len(pairs)]
            i += 1
            msgs += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
        rows.append({"messages": msgs})
    return rows


def dpo_rows(pairs, n, rng):
    rows = []
    for k in range(n):
        q, right, wrong = pairs[k % len(pairs)]
        prompt = [{"role": "user", "content": q}]
        if k % 4 == 1:
            prompt.insert(0, {"role": "system", "content": SYSTEM})
        rows.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": right}],
            "rejected": [{"role": "assistant", "content": wrong}],
        })
    return rows


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    rng = random.Random(1234)
    arith_train, arith_eval = split_items(arithmetic_questions(), 60, rng)
    cap_train, cap_eval = split_items(CAPITALS, 12, rng)
    # SFT and DPO use disjoint question pools too, so that DPO measures more than memorised SFT answers.
    arith_sft, arith_dpo = arith_train[: len(arith_train) // 2], arith_train[len(arith_train) // 2:]
    train_pairs_sft = qa_pairs(arith_sft[:170], cap_train, rng)
    train_pairs_dpo = qa_pairs(arith_dpo[:170], cap_train, rng)
    eval_pairs = qa_pairs(arith_eval, cap_eval, rng)

    root = Path("data")
    write_jsonl(root / "sft" / "train.jsonl", sft_rows(train_pairs_sft, 200, rng))
    write_jsonl(root / "sft" / "eval.jsonl", sft_rows(eval_pairs, 40, rng))
    write_jsonl(root / "dpo" / "train.jsonl", dpo_rows(train_pairs_dpo, 200, rng))
    write_jsonl(root / "dpo" / "eval.jsonl", dpo_rows(eval_pairs, 40, rng))


if __name__ == "__main__":
    main()
