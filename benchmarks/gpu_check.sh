#!/usr/bin/env bash
# The GPU path, checked in at most 8 minutes on one GPU machine: the GPU-marked tests, the DINO
# step of the paper preset (images/s, fraction of the bf16 matmul peak), batched TTT against one
# image at a time, a torchrun smoke test with one process per GPU, and a small synthetic grid at
# 64 px on the GPU. Every figure and log goes to OUT (default: gpu-check-<date> here).
#
#   benchmarks/gpu_check.sh [OUT]
#
# Needs hcibench installed (pip install .) in $PYTHON (default python3), and a CUDA GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check-$(date +%Y%m%d-%H%M)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s)"
    local started=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$out/$name.log"
    echo "== $name: exit $rc in $((SECONDS - started))s" | tee -a "$out/summary.txt"
    [ $rc -eq 0 ] || status=1
}

{ nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__)"; } >"$out/summary.txt"
step tests 120 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
step figures 120 $PY benchmarks/gpu_check.py --out "$out"
TINY=(--set backbone.depth=1 --set backbone.embed_dim=32 --set backbone.num_heads=2 --set backbone.pretrained=null
      --set dataset.scale=0.34 --set dino.epochs=2 --set dino.batch_size=32 --set task.epochs=1
      --set adapt.epochs=2 --set device=cuda)
step torchrun 60 $PY -m torch.distributed.run --standalone --nproc_per_node="$gpus" -m hcibench.cli run \
    --methods oda --sources S3 --targets S3,S5 "${TINY[@]}" --out "$out/runs/torchrun"
PX64=(--set dataset.image_size=64 --set input_size=64 --set backbone.img_size=64
      --set backbone.patch_size=8 --set task.model.img_size=64 --set task.model.patch_size=8
      --set dino.global_size=48 --set dino.local_size=24 --set device=cuda)
step grid64 150 $PY -m hcibench.cli run --methods supervised,dual-cb,coda --sources S3 \
    --targets S3,S5,S8,S11 --seeds 0 "${PX64[@]}" --out "$out/runs/grid64"
step report 20 $PY -m hcibench.cli report "$out/runs/grid64"
rm -rf "$out/runs/torchrun/stages" "$out/runs/grid64/stages"  # model weights: not figures
exit $status
