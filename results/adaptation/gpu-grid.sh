#!/usr/bin/env bash
# The synthetic CODA grid (benchmarks/grids/coda.toml: 5 methods, 4 sources x 4 targets,
# 3 seeds) on one GPU, with the shipped settings and with token alignment
# (adapt.align_tokens=true), each run folder shared by PROCS processes whose claims split the
# (method, source, seed) groups; the stages are shared between the two folders (--cache).
#
#   results/adaptation/gpu-grid.sh [OUT] [SECONDS] [PROCS] [extra run options...]
#
# DEVICE (default cuda) and PYTHON (default python3) may be set in the environment.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/gpu-grid}
limit=${2:-330}
procs=${3:-3}
extra=("${@:4}")
PY=${PYTHON:-python3}
mkdir -p "$out"
common=(--grid benchmarks/grids/coda.toml --set "device=${DEVICE:-cuda}" --cache "$out/cache")
for i in $(seq "$procs"); do
    timeout "$limit" $PY -m hcibench.cli run "${common[@]}" "${extra[@]}" \
        --out "$out/shipped" >"$out/shipped-$i.log" 2>&1 &
    timeout "$limit" $PY -m hcibench.cli run "${common[@]}" "${extra[@]}" \
        --methods dual-dino,oda,dual-cb,coda --set adapt.align_tokens=true \
        --out "$out/aligned" >"$out/aligned-$i.log" 2>&1 &
done
wait
for name in shipped aligned; do
    $PY -m hcibench.cli report "$out/$name" >"$out/$name-report.txt" 2>&1
    for baseline in dual-dino dual-cb; do
        $PY -m hcibench.cli report "$out/$name" --stats --baseline "$baseline" \
            >>"$out/$name-stats.txt" 2>&1
    done
done
tail -n 3 "$out"/*-1.log
