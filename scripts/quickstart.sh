#!/usr/bin/env bash
# The main job on a fresh machine: installs what is missing, builds, then generates IBC's
# 2-D particle demonstrations with the oracle and validates them by replay.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
out="data/particle/traj"
rm -rf "$out"
printf '\n==> generating 2,000 oracle demonstrations (2-D) in %s\n' "$out"
./target/release/ebmlab data generate --task particle --episodes 2000 --seed 0 --out "$out"
printf '\n==> replaying them through the environment\n'
./target/release/ebmlab data validate "$out"
printf '\nDemonstrations are in %s (one JSON file per episode).\n' "$out"
