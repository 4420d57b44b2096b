#!/usr/bin/env bash
# The GPU checks in one call (a lent GPU machine has minutes, not hours): builds nothing.
# Before: `cargo build --release` here, then `mkdir -p device-bin && cp target/release/ebmlab
# device-bin/`; run from the repository root on the GPU machine with device-bin carried.
# Writes under $OUT: gpu.txt (the card), bench.jsonl (throughput and latency beside the
# PyTorch reference, every precision), the 4-seed packed run of IBC's config (runs/, its
# status, evaluations by DFO too, report), and nvidia-smi samples taken during the run.
set -uo pipefail
OUT=${OUT:-/tmp/ebmlab-gpu}
mkdir -p "$OUT"
HERE=$PWD
BIN=$HERE/device-bin/ebmlab
TORCH_PY=${TORCH_PY:-/opt/torch/.venv/bin/python3}
TORCH_LIB=$("$TORCH_PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$HERE/device-bin:$TORCH_LIB
# The whole script must fit one device call (600 s): bench ~200 s (packed training now twice,
# with CUDA graphs and without), the 4-seed run ~290 s, DFO evaluations and the report ~100 s.
BENCH_SECONDS=${BENCH_SECONDS:-200}
# For a rehearsal on the CPU: BENCH_ARGS="--device cpu ..." RUN_ARGS="--set train.iterations=20".
BENCH_ARGS=${BENCH_ARGS:---device cuda --eval-samples 16384 --eval-pack-sizes 1,4}
RUN_ARGS=${RUN_ARGS:-}
# 10,000 iterations of a pack of 4 took ~300 s on an H100 (26 it/s per member).
RUN_SECONDS=${RUN_SECONDS:-290}

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "card"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"

step "bench: training step, DFO, 100-episode evaluation (16,384 samples), packs of 1-64, packed evaluation of 1 and 4"
timeout "$BENCH_SECONDS" "$BIN" bench $BENCH_ARGS --python "$TORCH_PY" \
    --overhead-trials 0 --ingest-rows 0 --warmup 2 --repeats 3 \
    > "$OUT/bench.jsonl" 2> "$OUT/bench.log"
echo "bench exit $?"
"$TORCH_PY" - "$OUT/bench.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    c = r["config"]
    what = " ".join(f"{k}={c[k]}" for k in ("members", "batch", "precision", "cuda_graphs") if k in c)
    rate = f" {r['per_second']:.0f}/s" if r.get("per_second") else ""
    waits = r.get("device_waits_per_step")
    waits = f" ({waits:g} waits for the GPU per step)" if waits is not None else ""
    print(f"{r['bench']:13s} {r['impl']:27s} {what:32s} {r['median_ms']:9.2f} ms{rate}{waits}")
EOF
echo "-- what the CUDA-graph guard said (bench):"
grep -iE "cuda graph|chains (stay|go back|replayed)" "$OUT/bench.log" | sort | uniq -c | head -n 20

step "4 seeds x 10,000 iterations of IBC's config, one pack, default precision"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu_util.csv" 2>&1 &
SMI=$!
start=$(date +%s)
timeout "$RUN_SECONDS" "$BIN" run experiments/particle_ibc_seeds.toml --runs "$OUT/runs" --quiet $RUN_ARGS \
    > "$OUT/run.log" 2>&1
echo "run exit $? after $(( $(date +%s) - start )) s"
kill "$SMI" 2>/dev/null
tail -n 5 "$OUT/run.log"
echo "-- what the CUDA-graph guard said (training worker):"
grep -rhiE "cuda graph|chains (stay|go back|replayed)" "$OUT"/runs/particle-ibc-seeds/*/worker.log 2>/dev/null | head -n 5
DB=$OUT/runs/ebmlab.sqlite
"$BIN" status particle-ibc-seeds --db "$DB" | tee "$OUT/status.txt"
"$BIN" query --db "$DB" "SELECT trial, step, successes, episodes, ci_low, ci_high, wall_seconds
    FROM evaluations WHERE experiment = 'particle-ibc-seeds' ORDER BY trial, step" \
    2>&1 | tee "$OUT/evaluations.txt"

step "the same checkpoints acting by DFO (16,384 samples, bf16)"
for trial in "$OUT"/runs/particle-ibc-seeds/*/; do
    printf '{"trial":"%s","dfo":' "$(basename "$trial")"
    timeout 25 "$BIN" eval "$trial" --inference dfo --json --out "$OUT/dfo/$(basename "$trial")" \
        2>/dev/null | tail -n 1 | tr -d '\n'
    echo '}'
done | tee "$OUT/dfo_evals.jsonl"

step "report"
timeout 40 "$BIN" report particle-ibc-seeds --db "$DB" --out "$OUT/report" > "$OUT/report.log" 2>&1
echo "report exit $?"
tail -n 2 "$OUT/report.log"
head -n 30 "$OUT/report/report.md" 2>/dev/null
