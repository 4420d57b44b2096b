#!/usr/bin/env bash
# The GPU checks in one call (a lent GPU machine has minutes, not hours): builds nothing.
# Before: `cargo build --release` here, then `mkdir -p device-bin && cp target/release/ebmlab
# device-bin/`, and the unit tests' binary as device-bin/ebmlab-tests (`cargo test --release
# --lib --no-run` names it); run from the repository root on the GPU machine with device-bin
# carried.
#
# Each part runs in its own process with its own time limit, so a part that fails or
# crashes costs only its own figures. First the unit tests that need a CUDA device (the
# cuBLASLt ReLU product and our run-time compiled kernels against ATen's, and the Langevin
# gradient that uses them),
# where device-bin/ebmlab-tests is carried. Then, in order of what matters most:
#   1. packed training, K = 1..64, each precision, CUDA graphs on and off, beside the
#      PyTorch reference doing the same packing (and the host's waits for the GPU per step);
#      packs of 1 and 64 again with the Langevin gradient's fused steps off (what
#      they gain, and what the guard said of them); and a few of the same figures from an
#      earlier build where device-bin/ebmlab-baseline is carried (a before-and-after on one
#      card);
#   2. IBC's config, 4 seeds x 10,000 iterations as one pack in the default GPU precision,
#      evaluated by Langevin inference (as IBC does) and then by DFO;
#   3. acting: DFO batches 1 and 100 x 16,384 samples, 100-episode evaluations (128 and
#      256 wide), packed evaluation, one solo training step;
#   4. where time is left and Nsight Compute is there, the kernels of a packed step;
#   5. (asked for only) the N-D study for the time left (PARTS="5": the whole call), then
#      its report: ND_SLOTS (15) slots under the run's own CUDA MPS daemon (resources.mps =
#      "auto"; 12 slots on an H200 trained the Langevin trials in ~430 s and the MSE ones at
#      37 it/s beside them: bench/results/2026-11-27-h200-nd-study/; 24 on an H100, the MSE
#      iterations replayed as CUDA graphs, still 33-42 it/s beside the packs:
#      bench/results/2026-11-27-h100-nd-study/);
#   6. (asked for only) where time is left: packs of 1 and 3 with the samples' update in
#      our kernel and in ATen's five passes (what the kernel gains where launches count);
#   m. (asked for only, run right after the tests) the study's MSE iterations, eager and
#      replayed as a CUDA graph.
# PARTS chooses (default "1 2 3 4"). A second call on the same warm machine resumes what the
# first call's time cut short (its runs stay in $WORK): PARTS="2 4 5" the 4-seed run,
# PARTS="5" the N-D study (with SKIP_TESTS=1; the MPS check is not repeated, and nd.txt
# sums the study's run time over the calls).
# Everything comes back in a few files under $OUT: console.txt (what is printed),
# bench.jsonl, bench.log, run.log, results.txt (status, evaluations, report), gpu_util.csv,
# runs.tar.gz (database and checkpoints, to resume), kernels.txt, nd.txt,
# nd-report.tar.gz and nd.sqlite.gz.
set -uo pipefail
OUT=${OUT:-/tmp/ebmlab-gpu}
WORK=${WORK:-/tmp/ebmlab-gpu-work}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/console.txt") 2>&1
HERE=$PWD
BIN=$HERE/device-bin/ebmlab
TORCH_PY=${TORCH_PY:-/opt/torch/.venv/bin/python3}
TORCH_LIB=$("$TORCH_PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$HERE/device-bin:$TORCH_LIB
# Seconds the whole script may take (the device call's limit less a margin).
BUDGET=${BUDGET:-540}
# For a rehearsal on the CPU: DEVICE=cpu PRECISIONS=fp32 GRAPHS=off PACKS=1,4
# WARMUP=0 REPEATS=1 BENCH_EXTRA="--hidden 32 --batch-size 16 --langevin-steps 2 ..."
# RUN_ARGS="--set train.iterations=20" TORCH_PY=.venv/bin/python (part 5's MSE trials keep
# the 50,000 steps their entry sets: rehearse it with PARTS="1 2 3 4")
DEVICE=${DEVICE:-cuda}
PRECISIONS=${PRECISIONS:-fp32,tf32,bf16}
# Precisions of the acting figures (part 3): fp32 acting is the slow end and was measured.
ACT_PRECISIONS=${ACT_PRECISIONS:-tf32,bf16}
GRAPHS=${GRAPHS:-on,off}
PACKS=${PACKS:-1,4,16,64}
RUN_ARGS=${RUN_ARGS:-}
WARMUP=${WARMUP:-2}
REPEATS=${REPEATS:-3}
# Smaller figures for a rehearsal, e.g. "--hidden 32 --batch-size 16 --langevin-steps 2".
BENCH_EXTRA=${BENCH_EXTRA:-}
PARTS=" ${PARTS:-1 2 3 4} "
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
part() { [[ "$PARTS" == *" $1 "* ]]; }
step() { printf '\n== %s (%s, %s s left)\n' "$1" "$(date +%T)" "$(left)"; }

# bench NAME SECONDS ARGS...: one `ebmlab bench` process, its lines appended to bench.jsonl.
bench() {
    local name=$1 seconds=$2
    shift 2
    echo "-- bench $name: $*" >>"$OUT/bench.log"
    timeout "$seconds" "$BIN" bench --device "$DEVICE" --python "$TORCH_PY" \
        --overhead-trials 0 --ingest-rows 0 --warmup "$WARMUP" --repeats "$REPEATS" "$@" $BENCH_EXTRA \
        >>"$OUT/bench.jsonl" 2>>"$OUT/bench.log"
    echo "bench $name: exit $?"
}

# The bench lines as a table (per-second rates, waits for the GPU per step).
table() {
    "$TORCH_PY" - "$OUT/bench.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    c = r["config"]
    keys = ("members", "batch", "episodes", "hidden", "samples", "precision", "cuda_graphs",
            "fused_gradient", "fused_update")
    what = " ".join(f"{k}={c[k]}" for k in keys if k in c)
    rate = f" {r['per_second']:.0f}/s" if r.get("per_second") else ""
    waits = r.get("device_waits_per_step")
    waits = f" ({waits:g} waits/step)" if waits is not None else ""
    print(f"{r['bench']:12s} {r['impl']:28s} {what:78s} {r['median_ms']:9.2f} ms{rate}{waits}")
EOF
}

step "card"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 2 >>"$OUT/gpu_util.csv" 2>&1 &
SMI=$!

if [[ -x $HERE/device-bin/ebmlab-tests && -z ${SKIP_TESTS:-} ]]; then
    step "0. the unit tests that need a CUDA device"
    timeout 120 "$HERE/device-bin/ebmlab-tests" --ignored --test-threads 1 on_a_gpu 2>&1 | tail -n 30
fi

if part m; then
    step "m. the N-D study's MSE iterations, eager and replayed as a CUDA graph"
    bench mse-steps 60 --only mse-step --cuda-graphs on,off --no-reference
    table | grep mse_steps
    grep -iE "training steps|cuda graph" "$OUT/bench.log" | sed 's/^.*\(WARN\|INFO\)/\1/' | sort | uniq -c
fi

if part 1; then
    step "1. packed training: K = $PACKS, $PRECISIONS, graphs $GRAPHS, beside the PyTorch reference"
    bench packed 200 --only packed --pack-sizes "$PACKS" --precisions "$PRECISIONS" --cuda-graphs "$GRAPHS"
    step "1a. packs of 1 and 64 with the gradient's fused steps off (ATen's passes)"
    bench packed-unfused 90 --only packed --pack-sizes 1,64 --precisions tf32,bf16 --cuda-graphs on \
        --fused-gradient off --no-reference
    table
    echo "-- what the CUDA-graph and gradient guards said:"
    grep -iE "cuda graph|chains (stay|go back|replayed)|Langevin (gradient|update)|cublaslt" "$OUT/bench.log" |
        sed 's/^.*\(WARN\|INFO\)/\1/' | sort | uniq -c | head -n 20
    # An earlier build beside this one on the same card (its lines tagged `baseline-`):
    # device-bin/ebmlab-baseline, when carried.
    if [[ -x $HERE/device-bin/ebmlab-baseline ]]; then
        step "1b. the baseline build on the same card: packs of 1 and 64, DFO batch 100, one evaluation"
        for only in "packed --pack-sizes 1,64 --precisions tf32,bf16 --cuda-graphs on" \
            "dfo,eval --dfo-batches 100 --eval-samples 16384 --precisions bf16"; do
            echo "-- baseline bench: --only $only" >>"$OUT/bench.log"
            timeout 90 "$HERE/device-bin/ebmlab-baseline" bench --device "$DEVICE" --no-reference \
                --overhead-trials 0 --ingest-rows 0 --warmup "$WARMUP" --repeats "$REPEATS" \
                --only $only $BENCH_EXTRA 2>>"$OUT/bench.log" |
                sed 's/"impl":"/"impl":"baseline-/' >>"$OUT/bench.jsonl"
            echo "baseline bench: exit ${PIPESTATUS[0]}"
        done
        table | grep baseline
    fi
fi

RUNS=$WORK/runs
[[ -e $WORK/runs-eager ]] && RUNS=$WORK/runs-eager
DB=$RUNS/ebmlab.sqlite
if part 2; then
    # Started afresh, or resumed where an earlier call's time ran out.
    step "2. IBC's config, 4 seeds x 10,000 iterations, one pack, default precision"
    # Room after the run: the acting figures (part 3), DFO evaluations and the report.
    reserve=60
    part 3 && reserve=190
    run_seconds=$(($(left) - reserve))
    ((run_seconds > 330)) && run_seconds=330
    ((run_seconds < 10)) && run_seconds=10
    started=$(date +%s)
    timeout "$run_seconds" "$BIN" run experiments/particle_ibc_seeds.toml --runs "$RUNS" --quiet $RUN_ARGS \
        >>"$OUT/run.log" 2>&1
    code=$?
    echo "run exit $code after $(($(date +%s) - started)) s (limit $run_seconds s)"
    if ((code != 0 && $(date +%s) - started < 60)) && [[ $RUNS != *eager ]]; then
        echo "-- it failed at once: again with the chains eager (resources.cuda_graphs = false)"
        RUNS=$WORK/runs-eager
        DB=$RUNS/ebmlab.sqlite
        timeout $((run_seconds - 60)) "$BIN" run experiments/particle_ibc_seeds.toml --runs "$RUNS" \
            --quiet --set resources.cuda_graphs=false $RUN_ARGS >>"$OUT/run.log" 2>&1
        echo "eager run exit $?"
    fi
    tail -n 6 "$OUT/run.log"
    {
        echo "== worker logs: the CUDA-graph guard, errors"
        grep -hiE "cuda graph|chains (stay|go back|replayed)|error|panic" "$RUNS"/particle-ibc-seeds/*/worker.log \
            2>/dev/null | sed 's/^[^ ]* //' | sort | uniq -c | tail -n 20
        echo "== status"
        "$BIN" status particle-ibc-seeds --db "$DB"
        echo "== evaluations (Langevin inference, the trials' own)"
        "$BIN" query --db "$DB" "SELECT trial, step, successes, episodes, ci_low, ci_high, wall_seconds
            FROM evaluations WHERE experiment = 'particle-ibc-seeds' ORDER BY trial, step"
    } >>"$OUT/results.txt" 2>&1
    cat "$OUT/results.txt"
fi

if part 3; then
    step "3. acting: DFO, 100-episode evaluations (16,384 samples), packed evaluation, one solo step"
    bench acting 70 --only train-step,dfo,eval --eval-samples 16384 --precisions "$ACT_PRECISIONS"
    bench eval-256 30 --only eval --eval-samples 16384 --eval-hidden 256 --no-reference \
        --precisions "$ACT_PRECISIONS"
    bench packed-eval 40 --only packed-eval --eval-samples 16384 --eval-pack-sizes 1,4 --no-reference \
        --precisions bf16
    table | grep -vE "^packed_train"
fi

if part 2; then
    step "the 4-seed checkpoints acting by DFO (16,384 samples, the default inference precision)"
    for trial in "$RUNS"/particle-ibc-seeds/*/; do
        printf '{"trial":"%s","dfo":' "$(basename "$trial")"
        timeout 25 "$BIN" eval "$trial" --inference dfo --json --out "$WORK/dfo/$(basename "$trial")" --overwrite \
            2>/dev/null | tail -n 1 | tr -d '\n'
        echo '}'
    done | tee -a "$OUT/results.txt"

    step "report"
    timeout 25 "$BIN" report particle-ibc-seeds --db "$DB" --out "$WORK/report" >>"$OUT/results.txt" 2>&1
    echo "report exit $?"
    cat "$WORK/report/report.md" >>"$OUT/results.txt" 2>/dev/null
    head -n 14 "$WORK/report/report.md" 2>/dev/null
    # The database and each trial's latest checkpoint (all of them could pass the 16 MiB a
    # returned file may have): enough to resume the run in a later call.
    (
        cd "$WORK" || exit
        find "$(basename "$RUNS")" -type f ! -name '*.png' ! -path '*/checkpoints/*'
        for dir in "$(basename "$RUNS")"/*/*/checkpoints; do
            latest=$(ls "$dir" | grep -o '^step_[0-9]*' | sort | tail -n 1)
            [[ -n "$latest" ]] && ls "$dir/$latest".*
        done
    ) >"$WORK/keep.txt"
    tar -czf "$OUT/runs.tar.gz" -C "$WORK" -T "$WORK/keep.txt" 2>/dev/null
fi

NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if part 4 && [[ ! -s $WORK/kernels.txt ]]; then
    step "4. the kernels of a packed step (K = 64, bf16, eager chains), where Nsight Compute is"
    if [[ -n "$NCU" && $(left) -gt 45 ]]; then
        timeout $(($(left) - 10)) "$NCU" --clock-control none --metrics gpu__time_duration.sum \
            --launch-skip 3000 --launch-count 1500 --csv \
            "$BIN" bench --device "$DEVICE" --only packed --pack-sizes 64 --precisions bf16 \
            --cuda-graphs off --no-reference --warmup 2 --repeats 2 >"$WORK/ncu.csv" 2>"$WORK/ncu.log"
        echo "ncu exit $?"
        "$TORCH_PY" - "$WORK/ncu.csv" >"$WORK/kernels.txt" 2>&1 <<'EOF'
import csv, collections, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
name, value = head.index("Kernel Name"), head.index("Metric Value")
total = collections.Counter(); count = collections.Counter()
for r in rows:
    total[r[name][:150]] += float(r[value].replace(",", "")); count[r[name][:150]] += 1
all_ns = sum(total.values())
print(f"{len(rows)} kernels, {all_ns / 1e3:.1f} us in all")
for k, ns in total.most_common(40):
    print(f"{ns / all_ns * 100:5.1f}% {ns / count[k] / 1e3:8.2f} us x{count[k]:4d}  {k}")
EOF
        cp "$WORK/kernels.txt" "$OUT/kernels.txt"
        head -n 30 "$OUT/kernels.txt"
    else
        echo "skipped (ncu: ${NCU:-none}, $(left) s left)"
    fi
fi

if part 5 && (($(left) > 40)); then
    # The whole study when it fits (PARTS="5" gives it the call), else its rates and
    # progress: ND_SLOTS slots on the GPU under the run's own CUDA MPS daemon. 15: the 15
    # MSE trials (queued first) start at once and have the GPU to themselves (alone an MSE
    # iteration replays at 1,394 it/s on an H100, beside the energy packs at 33-42), and the
    # other jobs (5 Langevin packs, 5 DFO packs, 15 autoregressive trials) follow as slots
    # free. A second call's ND_SLOTS holds too (a run's resources replace those the trials
    # were recorded with).
    # First a small run under MPS (4 trials of 20 steps on 2 slots): if its workers fail,
    # the study runs without MPS rather than losing the call.
    # An earlier call's verdict stands (its study ran with or without MPS; so does this).
    if [[ -e $WORK/mps-verdict ]]; then
        mps=$(cat "$WORK/mps-verdict")
    # (base.toml, not the study: the study's MSE entry sets its own 50,000 steps, which
    # `--set train.iterations` does not change.)
    elif timeout 90 "$BIN" run experiments/base.toml --runs "$WORK/mps-check" --quiet \
        --set resources.slots_per_gpu=2 --set resources.mps=on --set resources.pack=1 \
        --set 'sweep.train.seed=[0, 1, 2, 3]' --set train.iterations=20 --set eval.episodes=2 \
        >"$WORK/mps-check.log" 2>&1; then
        mps=auto
    else
        mps=off
        echo "-- the MPS check failed (study without MPS):"
        tail -n 5 "$WORK/mps-check.log"
    fi
    echo "$mps" >"$WORK/mps-verdict"
    step "5. the N-D study (particle_nd.toml, 60 trials), ${ND_SLOTS:-15} slots, MPS $mps, for the $(left) s left"
    started=$(date +%s)
    timeout $(($(left) - 45)) "$BIN" run experiments/particle_nd.toml --runs "$WORK/nd" --quiet \
        --set resources.slots_per_gpu="${ND_SLOTS:-15}" --set resources.mps=$mps $RUN_ARGS >"$WORK/nd.log" 2>&1
    code=$?
    echo "$(($(date +%s) - started))" >>"$WORK/nd-seconds"
    echo "N-D run exit $code after $(($(date +%s) - started)) s"
    {
        awk '{ s += $1 } END { printf "N-D run: %d call(s), %d s of run time in all\n", NR, s }' \
            "$WORK/nd-seconds"
        tail -n 5 "$WORK/nd.log"
        grep -hiE "mps|error|panic|(fused|eager) kernels|training steps|cuda graph" "$WORK/nd.log" "$WORK"/nd/particle-nd/*/worker.log 2>/dev/null |
            sed 's/^[^ ]* //' | sort | uniq -c | tail -n 30
        "$BIN" status particle-nd --db "$WORK/nd/ebmlab.sqlite"
        "$BIN" query --db "$WORK/nd/ebmlab.sqlite" "SELECT trial, MAX(step) AS step,
            ROUND((MAX(step) - MIN(step)) / (MAX(wall_time) - MIN(wall_time) + 1e-9), 1) AS it_per_s
            FROM metrics WHERE experiment = 'particle-nd' GROUP BY trial ORDER BY trial"
    } >"$OUT/nd.txt" 2>&1
    grep -vE " pending " "$OUT/nd.txt" | cut -c1-160 | tail -n 40
    # The report of what finished (the study's table and success-vs-N figure).
    timeout 30 "$BIN" report particle-nd --db "$WORK/nd/ebmlab.sqlite" --out "$WORK/nd-report" \
        >/dev/null 2>&1 && tar -czf "$OUT/nd-report.tar.gz" -C "$WORK" nd-report
    echo "report exit $?"
    # The study's database (metrics, evaluations: the report made again anywhere).
    gzip -c "$WORK/nd/ebmlab.sqlite" >"$OUT/nd.sqlite.gz"
fi
if part 6 && (($(left) > 50)); then
    step "6. small packs (K = 1, 3), TF32, graphs on: the samples' update in our kernel and in ATen's passes"
    bench small-packs $(($(left) - 15)) --only packed --pack-sizes 1,3 --precisions tf32 --cuda-graphs on \
        --fused-update on,off --no-reference
    table | grep -E "members=(1|3) " | tail -n 4
fi
kill "$SMI" 2>/dev/null
ls -la "$OUT"
step "done"
