#!/usr/bin/env bash
# Runs every test: installs what is missing, checks formatting, builds, runs the test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
printf '\n==> cargo fmt --check\n'
cargo fmt --all -- --check
printf '\n==> cargo test (release profile, shares the build with the binary)\n'
cargo test --release --locked "$@"
