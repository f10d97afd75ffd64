#!/usr/bin/env bash
# Side-by-side benchmark on CPU: the same LoRA DPO job (configs/bench.toml, data/bench/train.jsonl)
# through `lora-dpo bench` and through TRL + PEFT (scripts/bench_trl.py), back to back. Prints each
# tool's median s/step, tokens/s (real tokens of the chosen + rejected batch) and peak RSS of the
# whole process, then the ratios. Timings on a shared machine are indicative only.
#
#   scripts/bench.sh [MODEL_DIR] [STEPS] [WARMUP]     # defaults: models/SmolLM2-135M-f32 5 1
#
# Makes what is missing: .venv (pip install -r scripts/requirements.txt; torch from the default
# index, whose Linux wheels pull CUDA libraries that stay unused here: set PIP_EXTRA_INDEX_URL to a
# CPU-only wheel index to avoid them), and the default MODEL_DIR, an f32 HF folder made from the
# demo GGUF with `lora-dpo merge`.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${1:-models/SmolLM2-135M-f32}"
STEPS="${2:-5}"
WARMUP="${3:-1}"
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
PY=.venv/bin/python
BIN=target/release/lora-dpo

if ! "$PY" -c "import trl, peft" 2>/dev/null; then
    echo "== making .venv (TRL, PEFT, torch; a while)" >&2
    python3 -m venv .venv
    .venv/bin/pip install --quiet -r scripts/requirements.txt
fi
cargo build --release --quiet
if [[ ! -f "$MODEL/config.json" ]]; then
    [[ "$MODEL" == models/SmolLM2-135M-f32 ]] || { echo "error: $MODEL/config.json not found" >&2; exit 1; }
    scripts/fetch_demo_model.sh >&2
    "$BIN" merge --model "$GGUF" --out "$MODEL" --dtype f32 >&2
fi
[[ -f data/bench/train.jsonl ]] || python3 scripts/make_bench_data.py >&2

echo "== lora-dpo: $STEPS timed steps after $WARMUP warm-up ($MODEL)" >&2
OURS=$("$BIN" bench --config configs/bench.toml --stage dpo --steps "$STEPS" --warmup "$WARMUP" --json \
    --set "model.name_or_path=$MODEL" | tail -n 1)
echo "$OURS"
echo "== TRL + PEFT: the same job" >&2
TRL=$("$PY" scripts/bench_trl.py --model "$MODEL" --data data/bench/train.jsonl \
    --steps "$STEPS" --warmup "$WARMUP" --json | tail -n 1)
echo "$TRL"

"$PY" - "$OURS" "$TRL" <<'PY'
import json, sys
ours, trl = json.loads(sys.argv[1]), json.loads(sys.argv[2])
v = trl.get("versions", {})
print(f"\n{'':28}{'s/step':>9}{'tokens/s':>10}{'peak RSS MiB':>14}")
for name, r in (("lora-dpo", ours), ("trl " + v.get("trl", "") + " + peft " + v.get("peft", ""), trl)):
    print(f"{name:28}{r['sec_per_step_median']:9.3f}{r['tokens_per_sec']:10.1f}{r['peak_rss_mib']:14.0f}")
print(f"\nTRL s/step / lora-dpo s/step: {trl['sec_per_step_median'] / ours['sec_per_step_median']:.2f}x"
      f"   lora-dpo RSS / TRL RSS: {ours['peak_rss_mib'] / trl['peak_rss_mib']:.2f}")
PY
