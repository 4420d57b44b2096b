#!/usr/bin/env bash
# Installs whatever is missing, then builds ebmlab (release). Safe to run again: each step
# checks first. Used by quickstart.sh and test.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found: it is needed for the project's .venv" >&2; exit 1; }

# The project-local Python environment with libtorch.
have_torch() {
  [ -x "$VIRTUAL_ENV/bin/python" ] &&
    "$VIRTUAL_ENV/bin/python" -c "import torch, numpy, safetensors, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION_REQUIRED')" 2>/dev/null
}
if ! have_torch; then
  step "creating .venv with torch==$TORCH_VERSION_REQUIRED (a large download, once)"
  [ -x "$VIRTUAL_ENV/bin/python" ] || python3 -m venv "$VIRTUAL_ENV"
  "$VIRTUAL_ENV/bin/python" -m pip install --quiet --upgrade pip
  "$VIRTUAL_ENV/bin/python" -m pip install --quiet -r scripts/requirements.txt
  have_torch || { echo "torch $TORCH_VERSION_REQUIRED did not install into .venv" >&2; exit 1; }
fi

# The CUDA headers libtorch's CUDA-graph API includes (`crt/`, not in the CUDA runtime
# wheel): without them ebmlab builds without CUDA graphs, and Langevin chains on a GPU
# run eagerly (slower, same results).
CUDA_INCLUDE=$("$VIRTUAL_ENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "include"))')
if [ -f "$CUDA_INCLUDE/cuda_runtime_api.h" ] && [ ! -f "$CUDA_INCLUDE/crt/host_config.h" ]; then
  step "adding the CUDA compiler-runtime headers to .venv (for CUDA graphs)"
  "$VIRTUAL_ENV/bin/python" -m pip install --quiet "$CUDA_CRT_REQUIRED" ||
    echo "warning: $CUDA_CRT_REQUIRED did not install: ebmlab builds without CUDA graphs" >&2
fi

step "building ebmlab (release; the first build compiles libtorch bindings and takes minutes)"
cargo build --release --locked
