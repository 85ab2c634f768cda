#!/usr/bin/env bash
# Kill a run with SIGKILL at random moments, resume it each time, then compare it with the same
# run made without interruption: every record equal, nothing damaged, no stage computed twice.
#
#   benchmarks/kill_soak.sh [OUT] [KILLS]      (default runs/kill-soak, 10 kills)
#
# The grid (supervised, dual-dino and oda, S3 -> S3, S5) takes a few minutes on 2 cores, so that
# the kills land inside stages, between stages and while records are written.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/kill-soak}
kills=${2:-10}
H=${HCIBENCH:-.venv/bin/hcibench}
ARGS=(--methods supervised,dual-dino,oda --sources S3 --targets S3,S5 --seeds 0
      --set threads=1 --set dataset.scale=0.5)
rm -rf "$out"
mkdir -p "$out"
started=$SECONDS
$H run "${ARGS[@]}" --out "$out/reference" >"$out/reference.log" 2>&1 || exit 1
span=$((SECONDS - started))
echo "uninterrupted run: ${span}s"
for i in $(seq "$kills"); do
    $H run "${ARGS[@]}" --out "$out/killed" >>"$out/killed.log" 2>&1 &
    pid=$!
    wait_s=$(python3 -c "import random; print(round(random.uniform(2, max(3, $span / 3)), 1))")
    sleep "$wait_s"
    if kill -9 "$pid" 2>/dev/null; then
        echo "kill $i after ${wait_s}s"
    else
        echo "kill $i: the run had finished after ${wait_s}s"
    fi
    wait "$pid" 2>/dev/null
done
$H run "${ARGS[@]}" --out "$out/killed" >>"$out/killed.log" 2>&1 || exit 1
$H doctor "$out/killed"
${PYTHON:-.venv/bin/python} - "$out" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
def records(run):
    return {p.relative_to(run).as_posix(): json.loads(p.read_text())["metrics"]
            for p in (run / "records").glob("**/*.json")}
reference, killed = records(out / "reference"), records(out / "killed")
same = reference == killed
stages = json.loads((out / "killed" / "manifest.json").read_text())["stages"]
twice = {k: v["computed"] for k, v in stages.items() if v["computed"] > 1}
print(f"records: {len(killed)} of {len(reference)}, equal to the uninterrupted run: {same}")
print(f"stages computed more than once: {twice or 'none'}")
sys.exit(0 if same and len(killed) == len(reference) else 1)
PY
