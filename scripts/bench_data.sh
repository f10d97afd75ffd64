#!/usr/bin/env bash
# Peak memory and speed of `lora-dpo data` on 2k / 20k / 200k-row SFT and DPO files, as a markdown table.
#
#   scripts/bench_data.sh                     # all sizes, target/debug/lora-dpo
#   BIN=/tmp/lora-dpo-old SIZES="2000 20000" scripts/bench_data.sh
#
# The data files are generated once into target/scale-data/ (scripts/make_scale_data.py). The tokenizer is the demo
# model's folder when present (models/SmolLM2-135M-Instruct), else the SmolLM2 tokenizer in tests/fixtures.
# Peak RSS and wall time come from /usr/bin/time -v. TRAIN_MODEL, when set to a model folder, adds
# `lora-dpo sft` and `lora-dpo dpo` runs of 2 steps on the short files of every size (their peak RSS includes
# the model).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug/lora-dpo}
SIZES=${SIZES:-"2000 20000 200000"}
KINDS=${KINDS:-"sft-short sft-long dpo-short"}
if [ -z "${TOKENIZER:-}" ]; then
  if [ -f models/SmolLM2-135M-Instruct/tokenizer.json ]; then TOKENIZER=models/SmolLM2-135M-Instruct
  else TOKENIZER=tests/fixtures/data/smollm2; fi
fi
mkdir -p target/scale-data
measure() { # label rows file command… → one table row
  local label=$1 rows=$2 file=$3; shift 3
  local log; log=$(mktemp)
  if ! /usr/bin/time -v "$@" >/dev/null 2>"$log"; then
    echo "| $label | $rows | failed: $(grep -v '^\s' "$log" | tail -1) | | | | | |"; rm -f "$log"; return
  fi
  local rss_kb wall secs
  rss_kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$log")
  wall=$(awk '/Elapsed \(wall clock\)/ {print $NF}' "$log")
  secs=$(echo "$wall" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  local cpu; cpu=$(awk -F: '/Percent of CPU/ {gsub(/ /,"",$2); print $2}' "$log")
  # CPU seconds (user + system): the work done, whatever else shares the cores.
  local cpu_s; cpu_s=$(awk -F: '/User time|System time/ {t += $2} END {printf "%.1f", t}' "$log")
  local mib=$((rss_kb / 1024)) size_mib
  size_mib=$(du -m "$file" | cut -f1)
  echo "| $label | $rows | $size_mib | $mib | $secs | $(awk -v r="$rows" -v s="$secs" 'BEGIN{printf "%.0f", (s>0? r/s : 0)}') | $cpu | $cpu_s |"
  rm -f "$log"
}
echo "binary: $BIN, tokenizer: $TOKENIZER, $(nproc) cores"
echo
echo "| file | rows | file MiB | peak RSS MiB | wall s | rows/s | CPU | CPU s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for kind in $KINDS; do
  for n in $SIZES; do
    f=target/scale-data/$kind-$n.jsonl
    [ -f "$f" ] || python3 scripts/make_scale_data.py --kind "$kind" --rows "$n" --out "$f"
    stage=sft; [ "$kind" = dpo-short ] && stage=dpo
    measure "$kind data" "$n" "$f" "$BIN" data --model "$TOKENIZER" --data "$f" --stage "$stage" --max-length 2048
  done
done
if [ -n "${TRAIN_MODEL:-}" ]; then
  for kind in sft-short dpo-short; do
    stage=sft; [ "$kind" = dpo-short ] && stage=dpo
    for n in $SIZES; do
      f=target/scale-data/$kind-$n.jsonl
      [ -f "$f" ] || python3 scripts/make_scale_data.py --kind "$kind" --rows "$n" --out "$f"
      cfg=$(mktemp --suffix .toml); out=$(mktemp -d)
      cat >"$cfg" <<TOML
[model]
name_or_path = "$TRAIN_MODEL"
device = "cpu"
[output]
dir = "$out/run"
[$stage]
train_file = "$f"
max_length = 64
truncation_mode = "keep_end"
max_steps = 2
per_device_train_batch_size = 2
TOML
      measure "$kind $stage 2 steps" "$n" "$f" "$BIN" "$stage" --config "$cfg" --no-progress
      rm -rf "$cfg" "$out"
    done
  done
fi
