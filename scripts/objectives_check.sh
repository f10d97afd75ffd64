#!/usr/bin/env bash
# The learning check of the reference-free objectives on the sample data, at the demo's budget:
# held-out preference accuracy (data/dpo/eval.jsonl) of the base, then of
#   - SimPO: configs/demo.toml (SFT 10 steps, then [dpo] 12 steps) with loss_type = "simpo",
#     beta = 2.0 (SimPO's range), simpo_gamma 0.5; the SFT adapter alone is shown too;
#   - ORPO: configs/demo-orpo.toml ([orpo] alone, 12 steps, beta 0.1).
# The accuracy is `rewards/accuracies` of `eval --loss-type simpo` / `orpo`: the share of pairs
# whose chosen completion has the higher mean token log-prob (what both objectives compare);
# the share with the higher summed log-prob is printed beside it.
#
#   scripts/objectives_check.sh       # after scripts/fetch_demo_model.sh and a release build
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/lora-dpo
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
EVAL=data/dpo/eval.jsonl
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

report() { # $1 label, $2 eval JSON
    python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
rows = r["per_row"]
summed = sum(x["chosen_logps"] > x["rejected_logps"] for x in rows) / len(rows)
print(f"{sys.argv[1]:<28} accuracy (mean log-prob) {r['rewards/accuracies']:.3f}   "
      f"(summed log-prob) {summed:.3f}   loss {r['loss']:.4f}   of {len(rows)} pairs")
PY
}
ev() { # $1 label, $2 loss type + flags..., adapter via ADAPTER
    local label=$1; shift
    $BIN eval --model "$MODEL" --quantize dense --data "$EVAL" --per-row --batch-size 20 \
        ${ADAPTER:+--adapter "$ADAPTER"} "$@" > "$TMP/e.json"
    report "$label" "$TMP/e.json"
}

ev "base (simpo metric)" --loss-type simpo --beta 2.0
ev "base (orpo metric)" --loss-type orpo
s=$(date +%s)
$BIN train --config configs/demo.toml --overwrite --set 'dpo.loss_type="simpo"' --set dpo.beta=2.0 \
    --set 'output.dir="adapters/demo-simpo"' 2> "$TMP/simpo.log"
echo "simpo: SFT + SimPO trained in $(( $(date +%s) - s )) s"
ADAPTER=adapters/demo-simpo/sft/adapter ev "after SFT alone" --loss-type simpo --beta 2.0
ADAPTER=adapters/demo-simpo/combined ev "after SFT + SimPO" --loss-type simpo --beta 2.0
s=$(date +%s)
$BIN orpo --config configs/demo-orpo.toml --overwrite 2> "$TMP/orpo.log"
echo "orpo: trained in $(( $(date +%s) - s )) s"
ADAPTER=adapters/demo-orpo/orpo/adapter ev "after ORPO" --loss-type orpo

# SimPO from the base over seeds 0-7 (its spread at this budget is wider than the gap between
# settings): the demo's lr 5e-4 and lr 2e-4, beta 2.0, simpo_gamma 0.5.
for lr in 5e-4 2e-4; do
    for seed in 0 1 2 3 4 5 6 7; do
        $BIN dpo --config configs/demo.toml --overwrite --set 'dpo.loss_type="simpo"' \
            --set dpo.beta=2.0 --set dpo.learning_rate=$lr --set output.seed=$seed \
            --set 'dpo.report_to="none"' --set "output.dir=\"$TMP/simpo-$lr-$seed\"" 2> "$TMP/s.log"
        ADAPTER=$TMP/simpo-$lr-$seed/dpo/adapter ev "SimPO lr $lr seed $seed" --loss-type simpo --beta 2.0
    done
done
