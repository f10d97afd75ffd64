#!/usr/bin/env python3
"""Fixture for `lora-dpo data binarize` (tests/data_pipeline/data_binarize.rs), needing only the
standard library.

Writes tests/fixtures/data/binarize/ultrafeedback_1k.jsonl: 1000 prompts in openbmb/UltraFeedback's
raw schema (`instruction`, `completions[]` with `model`, `response` and
`annotations.<aspect>.Rating` as strings), with 0-5 completions each, ratings 1-5 drawn from a
narrow range so that ties are common, about 8% "N/A" ratings, some aspects missing and some
completions rated N/A throughout. Then applies the binarization rules here, independently of the
Rust code, and writes what they choose to expected.json:

- a completion's score is the mean of its numeric ratings over instruction_following, honesty,
  truthfulness, helpfulness (in that order); "N/A" and missing aspects are left out; none left:
  unrated, never paired;
- fewer than two rated completions: dropped; all rated scores equal: dropped;
- best-vs-worst: the first highest vs the first lowest, in input order;
- best-vs-random (seed S): the first highest vs lower[d], where lower are the rated completions
  scored strictly below it, in input order, and
  d = splitmix64(S XOR le_u64(sha256(prompt_id)[:8])) mod len(lower), prompt_id = sha256 hex of
  the instruction;
- all-pairs (min margin M): every (i, j) with 0 < s_i - s_j and s_i - s_j >= M, i then j in input
  order.

Completion j of row i has the response "p{i}c{j}", so the test maps each output pair back to its
indices.

    python3 scripts/make_binarize_fixtures.py
"""
import hashlib, json, os, random

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "data", "binarize")
ASPECTS = ["instruction_following", "honesty", "truthfulness", "helpfulness"]
MODELS = ["gpt-4", "llama-2-70b-chat", "falcon-40b-instruct", "ultralm-13b", "wizardlm-7b"]
SEED = 42
MIN_MARGIN = 1.0
M64 = (1 << 64) - 1


def generate(n=1000):
    rnd = random.Random(0)
    rows = []
    for i in range(n):
        completions = []
        for j in range(rnd.choice([0, 1, 2, 3, 4, 4, 4, 5])):
            lo = rnd.randint(1, 4)
            ann = {}
            all_na = rnd.random() < 0.04
            for a in ASPECTS:
                if rnd.random() < 0.05:
                    continue  # aspect missing
                r = "N/A" if all_na or rnd.random() < 0.08 else str(rnd.randint(lo, min(5, lo + 1)))
                ann[a] = {"Rating": r}
            completions.append({"model": rnd.choice(MODELS), "response": f"p{i}c{j}", "annotations": ann})
        rows.append({"source": "evol_instruct", "instruction": f"Question {i}: explain item {rnd.randint(0, 10**6)}.",
                     "models": [c["model"] for c in completions], "completions": completions})
    return rows


def score(c):
    rs = []
    for a in ASPECTS:
        r = c["annotations"].get(a, {}).get("Rating")
        if r is not None and r != "N/A":
            rs.append(float(r))
    return sum(rs) / len(rs) if rs else None


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def draw(seed, prompt_id, n):
    key = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "little")
    return splitmix64(seed ^ key) % n


def choices(row, rule):
    scored = [(j, s) for j, s in enumerate(score(c) for c in row["completions"]) if s is not None]
    if len(scored) < 2:
        return "fewer than two rated completions"
    best = max(s for _, s in scored)
    worst = min(s for _, s in scored)
    if best == worst:
        return "all rated completions tie"
    b = next(j for j, s in scored if s == best)
    if rule == "best-vs-worst":
        return [(b, next(j for j, s in scored if s == worst))]
    if rule == "best-vs-random":
        lower = [j for j, s in scored if s < best]
        pid = hashlib.sha256(row["instruction"].encode()).hexdigest()
        return [(b, lower[draw(SEED, pid, len(lower))])]
    pairs = [(i, j) for i, si in scored for j, sj in scored if si - sj > 0 and si - sj >= MIN_MARGIN]
    return pairs or "no pair reaches --min-margin"


def main():
    os.makedirs(OUT, exist_ok=True)
    rows = generate()
    with open(os.path.join(OUT, "ultrafeedback_1k.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    expected = {"seed": SEED, "min_margin": MIN_MARGIN, "rules": {}}
    for rule in ["best-vs-random", "best-vs-worst", "all-pairs"]:
        pairs, dropped, gaps = [], {}, []
        for i, row in enumerate(rows):
            got = choices(row, rule)
            if isinstance(got, str):
                dropped[got] = dropped.get(got, 0) + 1
                continue
            for c, r in got:
                pairs.append([i, c, r])
                gaps.append(score(row["completions"][c]) - score(row["completions"][r]))
        expected["rules"][rule] = {"pairs": pairs, "dropped": dropped,
                                   "mean_score_gap": sum(gaps) / len(gaps)}
        print(rule, len(pairs), "pairs", dropped, "gap %.4f" % (sum(gaps) / len(gaps)))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
