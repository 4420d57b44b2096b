# Sourced by the other scripts: the project-local Python (torch) and how tch finds libtorch.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export TORCH_VERSION_REQUIRED="2.11.0"
# The CUDA compiler-runtime headers of the CUDA 13.0 series that torch 2.11.0 is built
# with (libtorch's CUDA-graph API includes them; scripts/setup.sh).
export CUDA_CRT_REQUIRED="nvidia-cuda-crt==13.0.88"
