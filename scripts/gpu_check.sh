#!/usr/bin/env bash
# The GPU check kit: one command for a CUDA machine that has the binary built elsewhere
# (scripts/build_cuda.sh writes .kit/: the binary xz-compressed and SmolLM2's tokenizer files).
# It builds nothing. In a few minutes it:
#   1. runs `lora-dpo parity` (the transformers / PEFT / TRL fixture checks, CI tolerances) on the
#      device in f32 and in bf16;
#   2. writes a Mistral-7B-shaped model there (zeros as sparse files, SmolLM2's tokenizer), takes
#      `inspect`'s estimate for it, and runs `bench` of a q4k, bf16 DPO step at max_length 1024
#      (r 16 on all seven projections, gradient checkpointing, batch 1 pair), reading the GPU's
#      memory from the driver (nvidia-smi, every 0.2 s) while it runs;
#   3. where torch + transformers + peft import, times the same DPO step in PyTorch + PEFT (bf16)
#      side by side (scripts/gpu_torch_step.py), memory read the same way;
#   4. writes results.json and summary.txt into OUT.
#
#   scripts/gpu_check.sh OUT                  # on the GPU machine (the device tool's `run`)
#   scripts/gpu_check.sh --device cpu OUT     # dry run here: tiny model, target/release/lora-dpo
# Dry-run settings: GPU_CHECK_BIN (the binary), GPU_CHECK_TOKENIZER (a folder with tokenizer.json
# and tokenizer_config.json), GPU_CHECK_MAX_LENGTH (1024).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
if [[ ${1:-} == --device ]]; then DEVICE=$2; shift 2; fi
OUT=${1:?usage: scripts/gpu_check.sh [--device cpu] OUT}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
LOG=$OUT/log.txt
: > "$LOG"
say() { echo "$*" | tee -a "$LOG" >&2; }
MAX_LENGTH=${GPU_CHECK_MAX_LENGTH:-1024}

# --- the binary, the tokenizer, the model's shape
if [[ $DEVICE == cpu ]]; then
    BIN=${GPU_CHECK_BIN:-target/release/lora-dpo}
    [[ -x $BIN ]] || cargo build --release --quiet
    TOKENIZER=${GPU_CHECK_TOKENIZER:-models/SmolLM2-135M-f32}
    [[ -f $TOKENIZER/tokenizer.json ]] || {
        scripts/fetch_demo_model.sh >/dev/null
        $BIN merge --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out "$TOKENIZER" --dtype f32 >/dev/null
    }
    SHAPE=(--layers 2 --hidden 256 --intermediate 768 --heads 4 --kv-heads 2)
else
    BIN=$WORK/lora-dpo
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
        .kit/lora-dpo.xz "$BIN" || { say "no .kit/lora-dpo.xz: run scripts/build_cuda.sh first"; exit 1; }
    chmod +x "$BIN"
    TOKENIZER=.kit/tokenizer
    SHAPE=()
    # cuBLAS, cuRAND and the runtime from torch's CUDA 13 wheels (the driver provides libcuda).
    for lib in libcublas.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13; do
        dir=$(dirname "$(find / -name "$lib" -not -path "*/proc/*" 2>/dev/null | head -1)" 2>/dev/null)
        [[ -n $dir && $dir != . ]] && export LD_LIBRARY_PATH=$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    done
    missing=$(ldd "$BIN" | grep "not found")
    [[ -z $missing ]] || { say "missing libraries: $missing"; exit 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"
fi
say "binary: $BIN ($("$BIN" --version))"

# --- GPU memory from the driver while a command runs: the peak of memory.used, in MiB.
gpu_peak() { # gpu_peak FILE cmd...: runs cmd, writes the peak to FILE
    local file=$1; shift
    if [[ $DEVICE != cuda ]]; then "$@"; local rc=$?; echo null > "$file"; return $rc; fi
    local base
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    ( peak=0; while true; do
        v=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
        (( v > peak )) && peak=$v && echo "$peak $base" > "$file"
        sleep 0.2; done ) &
    local poller=$!
    "$@"; local rc=$?
    kill $poller 2>/dev/null; wait $poller 2>/dev/null
    [[ -s $file ]] || echo "0 $base" > "$file"
    return $rc
}

# --- 1. parity
for dtype in f32 bf16; do
    say "== parity on $DEVICE, $dtype"
    "$BIN" parity --fixtures tests/fixtures --device "$DEVICE" --dtype "$dtype" \
        > "$OUT/parity_$dtype.json" 2>> "$LOG" || say "parity $dtype: FAILED (see parity_$dtype.json)"
done

# --- 2. the 7B-shaped model, estimate, bench
say "== model and data"
python3 scripts/make_mistral7b_shape.py "$WORK/model" --tokenizer "$TOKENIZER" "${SHAPE[@]}" >> "$LOG"
python3 - "$WORK/pairs.jsonl" <<'PY'
import json, random, sys
random.seed(0)
words = "the of and to in is was for on that with as by at from his her it an are this be".split()
text = lambda n: " ".join(random.choice(words) + str(random.randrange(100)) for _ in range(n))
with open(sys.argv[1], "w") as f:
    for _ in range(8):  # long enough that every sequence is truncated to max_length
        f.write(json.dumps({"prompt": text(1200), "chosen": text(900), "rejected": text(900)}) + "\n")
PY
cat > "$WORK/bench.toml" <<EOF
[model]
name_or_path = "$WORK/model"
dtype = "bf16"
quantize = "q4k"
device = "$DEVICE"
[lora]
r = 16
lora_alpha = 32
lora_dropout = 0.05
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
[dpo]
train_file = "$WORK/pairs.jsonl"
per_device_train_batch_size = 1
max_length = $MAX_LENGTH
max_prompt_length = $((MAX_LENGTH / 2))
gradient_checkpointing = true
[output]
dir = "$WORK/out"
EOF
"$BIN" inspect --config "$WORK/bench.toml" --device "$DEVICE" > "$OUT/inspect.txt" 2>> "$LOG"
say "== bench: DPO, q4k, bf16, max_length $MAX_LENGTH"
gpu_peak "$WORK/ours_gpu" "$BIN" bench --config "$WORK/bench.toml" --stage dpo --steps 3 --warmup 1 --json \
    > "$OUT/bench.json" 2>> "$LOG" || say "bench: FAILED (see log.txt)"

# --- 3. PyTorch + PEFT
if python3 -c "import torch, transformers, peft" 2>/dev/null; then
    say "== PyTorch + PEFT: the same step"
    gpu_peak "$WORK/torch_gpu" python3 scripts/gpu_torch_step.py --model "$WORK/model" --device "$DEVICE" \
        --steps 3 --warmup 1 --max-length "$MAX_LENGTH" > "$OUT/torch.json" 2>> "$LOG" ||
        say "torch step: FAILED (see log.txt)"
else
    say "== PyTorch + PEFT: not installed here, skipped"
    echo null > "$OUT/torch.json"; echo null > "$WORK/torch_gpu"
fi

# --- 4. results
python3 - "$OUT" "$DEVICE" "$WORK/ours_gpu" "$WORK/torch_gpu" <<'PY' | tee "$OUT/summary.txt"
import json, re, sys
out, device, ours_gpu, torch_gpu = sys.argv[1:]
def load(path):
    """A JSON file, or the JSON object on its last line (commands that print logs first)."""
    try:
        text = open(path).read().strip()
    except OSError:
        return None
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    return None
def gpu(path):
    try:
        peak, base = map(int, open(path).read().split())
        return {"peak_used_mib": peak, "before_mib": base, "process_mib": peak - base}
    except (OSError, ValueError):
        return None
parity = {d: load(f"{out}/parity_{d}.json") for d in ["f32", "bf16"]}
inspect = open(f"{out}/inspect.txt").read()
m = re.search(r"\[dpo\].*?\(([\d.]+) (GiB|MiB) with gradient checkpointing\)", inspect)
estimate = (float(m.group(1)) * (1 if m.group(2) == "GiB" else 1 / 1024)) if m else None
r = {
    "device": device,
    "parity": {d: (p or {}).get("pass") for d, p in parity.items()},
    "parity_checks": {d: (p or {}).get("checks") for d, p in parity.items()},
    "estimate_gib": estimate,
    "lora_dpo": load(f"{out}/bench.json"),
    "lora_dpo_gpu_memory": gpu(ours_gpu),
    "pytorch_peft": load(f"{out}/torch.json"),
    "pytorch_peft_gpu_memory": gpu(torch_gpu),
}
ours, theirs = r["lora_dpo"], r["pytorch_peft"]
if ours and theirs:
    r["speed_ratio_vs_pytorch"] = ours["tokens_per_sec"] / theirs["tokens_per_sec"]
json.dump(r, open(f"{out}/results.json", "w"), indent=2)
print(f"device: {device}")
for d, ok in r["parity"].items():
    worst = [(c["name"], c["value"], c["tolerance"]) for c in (r["parity_checks"][d] or []) if not c["pass"]]
    print(f"parity {d}: {'pass' if ok else 'FAIL'}" + (f" {worst}" if worst else ""))
if estimate:
    print(f"inspect estimate (DPO, checkpointed): {estimate:.2f} GiB")
if ours:
    print(f"lora-dpo: {ours['sec_per_step_median']:.3f} s/step, {ours['tokens_per_sec']:.0f} tokens/s, "
          f"breakdown {ours['breakdown_sec_median']}")
if r["lora_dpo_gpu_memory"]:
    g = r["lora_dpo_gpu_memory"]
    print(f"lora-dpo GPU memory (driver): {g['process_mib'] / 1024:.2f} GiB"
          + (f" = {g['process_mib'] / 1024 / estimate:.2f}x the estimate" if estimate else ""))
if theirs:
    print(f"pytorch+peft: {theirs['sec_per_step_median']:.3f} s/step, {theirs['tokens_per_sec']:.0f} tokens/s"
          + (f", torch peak allocated {theirs['peak_allocated_mib'] / 1024:.2f} GiB" if "peak_allocated_mib" in theirs else ""))
if r["pytorch_peft_gpu_memory"]:
    print(f"pytorch+peft GPU memory (driver): {r['pytorch_peft_gpu_memory']['process_mib'] / 1024:.2f} GiB")
if "speed_ratio_vs_pytorch" in r:
    print(f"lora-dpo tokens/s / pytorch+peft tokens/s: {r['speed_ratio_vs_pytorch']:.2f}x")
PY
rm -rf "$WORK"
