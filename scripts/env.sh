# Sourced by the other scripts: the project-local Python (torch) and how tch finds libtorch.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export TORCH_VERSION_REQUIRED="2.11.0"
