#!/usr/bin/env bash
# The 7B scale on this machine: a model with Mistral-7B-v0.1's shapes (scripts/make_mistral7b_shape.py,
# SmolLM2's tokenizer, vocab 49152), trained with q4k frozen projections, bf16 activations, LoRA
# r 16 on all seven projections, gradient checkpointing, batch 1 at a short max_length: SFT then
# DPO steps through `lora-dpo train`, the same steps timed by `lora-dpo bench`, then `merge` into
# a sharded bf16 folder. Measures peak RSS (/usr/bin/time -v) against `inspect`'s estimate, load +
# quantize time, s/step, and merge time and peak RSS. Prints a Markdown table and writes
# runs/scale/results.json. About 30 minutes on 2 cores; 15 GB of disk with random weights.
#
#   scripts/scale_check.sh                 # random N(0, 0.02) weights (needs numpy)
#   SCALE_WEIGHTS=zeros scripts/scale_check.sh   # zeros as sparse files: no disk, same memory
#   SCALE_LAYERS=4 scripts/scale_check.sh        # a quick 4-layer run of the same shapes
set -euo pipefail
cd "$(dirname "$0")/.."

WEIGHTS=${SCALE_WEIGHTS:-random}
LAYERS=${SCALE_LAYERS:-32}
MAX_LENGTH=${SCALE_MAX_LENGTH:-64}
RUN=runs/scale
MODEL=models/mistral-7b-shape-$LAYERS-$WEIGHTS
TOKENIZER=models/SmolLM2-135M-f32
BIN=target/release/lora-dpo
mkdir -p "$RUN"

cargo build --release --quiet
scripts/fetch_demo_model.sh >/dev/null
[[ -f $TOKENIZER/tokenizer.json ]] ||
    $BIN merge --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out "$TOKENIZER" --dtype f32 >/dev/null
if [[ ! -f $MODEL/model.safetensors.index.json ]]; then
    flag=$([[ $WEIGHTS == random ]] && echo --random || true)
    python3 scripts/make_mistral7b_shape.py "$MODEL" --tokenizer "$TOKENIZER" --layers "$LAYERS" $flag
fi

CONFIG=$RUN/scale.toml
cat > "$CONFIG" <<EOF
[model]
name_or_path = "$MODEL"
dtype = "bf16"
quantize = "q4k"
device = "cpu"

[lora]
r = 16
lora_alpha = 32
lora_dropout = 0.05
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

[sft]
train_file = "data/sft/train.jsonl"
learning_rate = 1e-4
max_steps = 2
per_device_train_batch_size = 1
max_length = $MAX_LENGTH
gradient_checkpointing = true
logging_steps = 1
save_steps = 0

[dpo]
train_file = "data/dpo/train.jsonl"
learning_rate = 1e-5
max_steps = 2
per_device_train_batch_size = 1
max_length = $MAX_LENGTH
max_prompt_length = $((MAX_LENGTH / 2))
gradient_checkpointing = true
logging_steps = 1
save_steps = 0

[output]
dir = "$RUN/out"
seed = 42
EOF

# peak_kib LOG: the maximum resident set size /usr/bin/time -v reported.
peak_kib() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }
wall_s() { awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$1" |
    awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }'; }

echo "== inspect (the estimate)"
$BIN inspect --config "$CONFIG" | tee "$RUN/inspect.txt"

echo "== train: 2 SFT + 2 DPO steps"
rm -rf "$RUN/out"
/usr/bin/time -v $BIN train --config "$CONFIG" --no-progress 2> >(tee "$RUN/train.log" >&2)
echo "== bench: SFT and DPO steps timed"
/usr/bin/time -v $BIN bench --config "$CONFIG" --stage sft --steps 2 --warmup 0 --json \
    > "$RUN/bench_sft.json" 2> "$RUN/bench_sft.log"
/usr/bin/time -v $BIN bench --config "$CONFIG" --stage dpo --steps 2 --warmup 0 --json \
    > "$RUN/bench_dpo.json" 2> "$RUN/bench_dpo.log"
echo "== merge into a sharded bf16 folder"
rm -rf "$RUN/merged"
/usr/bin/time -v $BIN merge --model "$MODEL" --adapter "$RUN/out/combined" --out "$RUN/merged" \
    --dtype bf16 2> >(tee "$RUN/merge.log" >&2)

python3 - "$RUN" "$MODEL" "$(peak_kib "$RUN/train.log")" "$(wall_s "$RUN/train.log")" \
    "$(peak_kib "$RUN/merge.log")" "$(wall_s "$RUN/merge.log")" <<'PY'
import glob, json, os, re, sys
run, model, train_kib, train_s, merge_kib, merge_s = sys.argv[1:]
gib = lambda b: b / 2**30
text = open(f"{run}/inspect.txt").read()
def estimate(stage):
    m = re.search(rf"\[{stage}\].*?\(([\d.]+) (GiB|MiB) with gradient checkpointing\)", text)
    v = float(m.group(1))
    return v if m.group(2) == "GiB" else v / 1024
est = max(estimate("sft"), estimate("dpo"))
load = re.search(r"loaded .* in ([\d.]+) s", open(f"{run}/train.log").read())
bench = {s: json.load(open(f"{run}/bench_{s}.json")) for s in ["sft", "dpo"]}
shards = sorted(glob.glob(f"{model}/*.safetensors"))
largest_in = max(os.path.getsize(p) for p in shards)
adapter = os.path.getsize(f"{run}/out/combined/adapter_model.safetensors")
merge_budget = 2 * largest_in + adapter + 2**30
peak = int(train_kib) * 1024
r = {
    "model": model,
    "estimate_gib": est,
    "train_peak_rss_gib": gib(peak),
    "train_peak_over_estimate": gib(peak) / est,
    "load_and_quantize_s": float(load.group(1)) if load else None,
    "train_wall_s": float(train_s),
    "sft_s_per_step": bench["sft"]["sec_per_step_median"],
    "dpo_s_per_step": bench["dpo"]["sec_per_step_median"],
    "dpo_breakdown_s": bench["dpo"]["breakdown_sec_median"],
    "bench_peak_rss_gib": {s: bench[s]["peak_rss_mib"] / 1024 for s in bench},
    "merge_s": float(merge_s),
    "merge_peak_rss_gib": gib(int(merge_kib) * 1024),
    "merge_budget_gib": gib(merge_budget),
    "largest_input_shard_gib": gib(largest_in),
    "adapter_gib": gib(adapter),
}
json.dump(r, open(f"{run}/results.json", "w"), indent=2)
ok = lambda c: "yes" if c else "**no**"
print(f"""
| what | figure |
|---|---|
| `inspect` estimate, checkpointed (larger stage) | {est:.2f} GiB |
| peak RSS of `train` (`/usr/bin/time -v`) | {r['train_peak_rss_gib']:.2f} GiB: {r['train_peak_over_estimate']:.2f}x the estimate (within 15%: {ok(abs(r['train_peak_over_estimate'] - 1) <= 0.15)}) |
| load + quantize | {r['load_and_quantize_s']:.0f} s |
| SFT step (`bench`, median of 2) | {r['sft_s_per_step']:.1f} s |
| DPO step (`bench`, median of 2) | {r['dpo_s_per_step']:.1f} s (reference {r['dpo_breakdown_s']['reference']:.1f}, forward {r['dpo_breakdown_s']['forward']:.1f}, backward {r['dpo_breakdown_s']['backward']:.1f}, optimizer {r['dpo_breakdown_s']['optimizer']:.1f}) |
| `merge` into sharded bf16 | {r['merge_s']:.0f} s, peak RSS {r['merge_peak_rss_gib']:.2f} GiB (budget: 2 shards + adapter + 1 GiB = {r['merge_budget_gib']:.2f} GiB: {ok(r['merge_peak_rss_gib'] <= r['merge_budget_gib'])}) |
""")
PY
