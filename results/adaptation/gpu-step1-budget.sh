#!/usr/bin/env bash
# Does a ten times longer step 1 from random weights make step 3 adapt (section 34)?
# DINO (step 1) for 15 epochs (the quick preset) and for 150, from random weights, on the
# synthetic data; everything after step 1 as shipped. Sources in order (S3, S8, S5, S11),
# every target, seeds 0-2; one process per (seed, family), two torch threads each, all on one
# GPU; every process stops SECONDS after the start and its finished cells stay. Both step-1
# budgets are one sweep (OUT/dino.epochs=15, OUT/dino.epochs=150); their later stages share
# OUT/cache.
#
#   results/adaptation/gpu-step1-budget.sh [OUT] [SECONDS] [SOURCES]
#
# DEVICE (default cuda), PYTHON (default python3) and BUDGETS (the step-1 epochs, default
# 15,150) may be set in the environment; EXTRA adds --set options (a CPU check of this script
# makes the models tiny with it).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/adapt/gpu-step1-budget}
limit=${2:-400}
sources=${3:-S3,S8,S5,S11}
PY=${PYTHON:-python3}
mkdir -p "$out"
common=(--targets S3,S5,S8,S11 --set backbone.pretrained=null
        --set "dino.epochs=${BUDGETS:-15,150}" --set "device=${DEVICE:-cuda}" --set threads=2 ${EXTRA:-})
deadline=$((SECONDS + limit))
one_process() {  # one_process SEED FAMILY: the sources in order, until the deadline
    for source in ${sources//,/ }; do
        local left=$((deadline - SECONDS))
        [ "$left" -gt 0 ] || return
        timeout "$left" $PY -m hcibench.cli run --methods "$2" --seeds "$1" --sources "$source" \
            "${common[@]}" --out "$out"
    done
}
for seed in 0 1 2; do
    for family in dual-dino,oda dual-cb,coda; do
        one_process "$seed" "$family" >"$out/log-$seed-${family%%,*}.txt" 2>&1 &
    done
done
wait
$PY -m hcibench.cli report "$out" >"$out/report.txt" 2>&1
tail -n 2 "$out"/log-*.txt
