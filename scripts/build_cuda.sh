#!/usr/bin/env bash
# Builds `lora-dpo` with `--features cuda` on a machine without a CUDA toolkit or GPU: nvcc and
# the CUDA runtime come from NVIDIA's PyPI wheels (CUDA 13.0), the driver and cuBLAS/cuRAND/NVRTC
# are link-time stubs made from cudarc's bindings. The binary runs where the real libraries are
# (a GPU machine with a CUDA 13 driver; torch's cu13 wheels carry cuBLAS and friends): point
# LD_LIBRARY_PATH at them there. The first build takes ~15 minutes on 2 cores (nvcc compiling
# candle's kernels).
#
#   scripts/build_cuda.sh [COMPUTE_CAP]     # 90 (H100/H200) by default; 89 RTX 40xx, 86 RTX 30xx
#
# Output: target-cuda/release/lora-dpo (stripped), and the GPU kit's payload in .kit/ (git-ignored:
# name it in the device tool's `carry`): lora-dpo.xz (the binary, xz-compressed) and tokenizer/
# (SmolLM2's tokenizer files, for the 7B-shaped model scripts/gpu_check.sh writes there). CI never
# runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
CAP="${1:-90}"
T0=$PWD/.cuda
CUDA=$T0/nvidia/cu13

if [[ ! -x $CUDA/bin/nvcc ]]; then
    mkdir -p "$T0/wheels"
    for p in nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
             nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85; do
        pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
            --platform manylinux_2_17_x86_64 --python-version 3.11 -d "$T0/wheels" "$p"
    done
    (cd "$T0" && for w in wheels/*.whl; do unzip -qo "$w"; done)
    ln -sf libcudart.so.13 "$CUDA/lib/libcudart.so"
fi

# Link-time stubs for the libraries no wheel provides, one symbol per function cudarc binds.
cargo fetch --quiet
SRC=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.*/src | tail -1)
mkdir -p "$CUDA/lib/stubs"
stub() {
    grep -ohE "pub (unsafe )?fn $4[A-Za-z0-9_]*" "$SRC/$3/sys/mod.rs" | awk '{print $NF}' | sort -u |
        awk '{print "int "$1"(void){return 999;}"}' > "$T0/stub_$1.c"
    gcc -shared -fPIC -Wl,-soname,"$2" -o "$CUDA/lib/stubs/lib$1.so" "$T0/stub_$1.c"
}
stub cuda libcuda.so.1 driver cu
stub cublas libcublas.so.13 cublas cublas
stub cublasLt libcublasLt.so.13 cublaslt cublasLt
stub curand libcurand.so.10 curand curand
stub nvrtc libnvrtc.so.13 nvrtc nvrtc

export CUDA_HOME=$CUDA PATH=$CUDA/bin:$PATH CUDA_COMPUTE_CAP=$CAP
export LIBRARY_PATH=$CUDA/lib:$CUDA/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda
strip target-cuda/release/lora-dpo
ls -l target-cuda/release/lora-dpo

# The kit's payload.
mkdir -p .kit/tokenizer
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(open(sys.argv[1], 'rb'), lzma.open(sys.argv[2], 'wb', preset=6))" \
    target-cuda/release/lora-dpo .kit/lora-dpo.xz
TOKENIZER=models/SmolLM2-135M-f32
if [[ ! -f $TOKENIZER/tokenizer.json ]]; then
    scripts/fetch_demo_model.sh >/dev/null
    cargo build --release --quiet
    target/release/lora-dpo merge --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out "$TOKENIZER" --dtype f32 >/dev/null
fi
cp "$TOKENIZER"/tokenizer.json "$TOKENIZER"/tokenizer_config.json .kit/tokenizer/
du -sh .kit
