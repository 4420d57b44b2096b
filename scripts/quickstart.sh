#!/usr/bin/env bash
# The main job on a fresh machine: installs what is missing, builds, then trains and
# evaluates the CPU quickstart experiment (experiments/quickstart.toml) end to end, then
# writes its report beside IBC's numbers (reports/quickstart/report.html).
# Running it again reports the finished trial instead of training it twice.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
printf '\n==> training and evaluating experiments/quickstart.toml\n'
start=$(date +%s)
./target/release/ebmlab train experiments/quickstart.toml "$@"
printf '\nwall time: %d s. Per-trial files: config.toml, metrics.csv, evaluations.csv, episodes.csv,\nsummary.json and checkpoints/ under the folder named above.\n' "$(( $(date +%s) - start ))"
# The report reads the default database; with --runs or --db, run `ebmlab report` yourself.
if [ "$#" -eq 0 ]; then
    printf '\n==> report\n'
    ./target/release/ebmlab report quickstart --out reports/quickstart
fi
