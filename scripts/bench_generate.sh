#!/usr/bin/env bash
# Batched generation on this machine: `lora-dpo generate --data` on 32 prompts (the first 32 of
# data/dpo/eval.jsonl, then data/sft/eval.jsonl) × 64 new tokens (--ignore-eos, so every answer
# has 64), SmolLM2-135M-Instruct (the demo GGUF, dequantized), greedy, at --batch-size 1, 8 and 32,
# ROUNDS alternating rounds in one run. Prints each run's tokens/s, then the medians and the
# speed-ups over batch 1.
#
#   scripts/bench_generate.sh [ROUNDS]     # default 3
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f "$MODEL" ]] || scripts/fetch_demo_model.sh
cargo build --release --quiet
BIN=target/release/lora-dpo
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 - "$TMP/prompts.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for f in ("data/dpo/eval.jsonl", "data/sft/eval.jsonl") for l in open(f)]
prompts = [r["prompt"] if "prompt" in r else [m for m in r["messages"] if m["role"] != "assistant"] for r in rows][:32]
with open(sys.argv[1], "w") as f:
    for p in prompts:
        f.write(json.dumps({"prompt": p}) + "\n")
PY
declare -A RATES
for round in $(seq 1 "$ROUNDS"); do
    for b in 1 8 32; do
        line=$("$BIN" generate --model "$MODEL" --quantize dense --data "$TMP/prompts.jsonl" \
            --out "$TMP/answers-$b.jsonl" --overwrite --batch-size "$b" --max-new-tokens 64 \
            --ignore-eos 2>&1 | grep -E '^[0-9]+ answers' | tail -1)
        rate=$(sed -E 's/.*\(([0-9.]+) tok\/s\).*/\1/' <<<"$line")
        echo "round $round  batch $b: $line"
        RATES[$b]+="$rate "
    done
done
python3 - "${RATES[1]}" "${RATES[8]}" "${RATES[32]}" <<'PY'
import statistics, sys
med = [statistics.median(float(x) for x in a.split()) for a in sys.argv[1:]]
for b, m in zip((1, 8, 32), med):
    print(f"batch {b:>2}: median {m:.1f} tok/s  ({m / med[0]:.2f}x batch 1)")
PY
