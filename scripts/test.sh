#!/usr/bin/env bash
# Runs every test: installs what is missing, checks formatting, builds, runs the test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
printf '\n==> cargo fmt --check\n'
cargo fmt --all -- --check
printf '\n==> cargo test (release profile, shares the build with the binary)\n'
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --release --locked --tests "$@" 2>&1 | tee "$log"
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\nsummary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
