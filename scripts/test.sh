#!/usr/bin/env bash
# Runs every test: installs what is missing, checks formatting, builds, brings up the
# services the tests use (a one-node Slurm cluster and a PostgreSQL server, through
# scripts/cluster.sh), runs the test suite, and takes the services down again if it
# brought them up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
printf '\n==> cargo fmt --check\n'
cargo fmt --all -- --check

printf '\n==> Slurm and PostgreSQL for the tests (scripts/cluster.sh)\n'
was_up=0
pidfile="${EBMLAB_CLUSTER_DIR:-$ROOT/.cluster}/run/slurmctld.pid"
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then was_up=1; fi
EBMLAB_TEST_POSTGRES="$(bash scripts/cluster.sh up | tail -n1)"
export EBMLAB_TEST_POSTGRES EBMLAB_TEST_SLURM=1
export SLURM_CONF="${EBMLAB_CLUSTER_DIR:-$ROOT/.cluster}/etc/slurm.conf"

printf '\n==> cargo test (release profile, shares the build with the binary)\n'
log="$(mktemp)"
trap 'rm -f "$log"; [ "$was_up" -eq 1 ] || bash scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT
cargo test --release --locked --tests "$@" 2>&1 | tee "$log"
# One closing line for the whole suite, summed over every test binary. Skipped: the tests
# that need a CUDA device (`#[ignore]`; bench/gpu.sh runs them on a GPU).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\nsummary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
