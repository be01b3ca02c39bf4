#!/usr/bin/env bash
# On this (CPU) machine, before lending the checkout to a GPU machine: the Python 3.12 wheels the
# GPU image lacks (.whl/) and SmolLM2's tokenizer (.gpu_assets/), both git-ignored. Then run
#   device tool: command "bash benchmarks/gpu/check.sh", carry [".whl", ".gpu_assets"].
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ../shared/gpu/fetch_wheels.sh .whl
.venv/bin/python - <<'PY'
from alignlib.models import load_model_and_tokenizer

_, tokenizer = load_model_and_tokenizer("bundled:smollm2-135m-instruct")
tokenizer.save_pretrained(".gpu_assets/tokenizer")
print("tokenizer in .gpu_assets/tokenizer")
PY
du -sh .whl .gpu_assets
