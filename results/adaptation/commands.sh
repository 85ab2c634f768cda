#!/usr/bin/env bash
# The adaptation experiments of results/adaptation/README.md, in the order they were run.
# Each line is one run folder; stages are shared through the base runs' stage folders, so a
# later line computes only what differs (step 3, or only predictions). Two at a time on a
# 2-core machine, one torch thread each. Summaries: results/adaptation/summarise.py.
set -euo pipefail
H=".venv/bin/hcibench"
GRID="--sources S3 --targets S3,S5,S8,S11 --seeds 0,1,2 --set threads=1"
for c in 0 1; do
  # Steps 1-2 (and Supervised) on S3, with (1, the default) and without (0) the culture shift.
  $H run --methods supervised,dual-dino,dual-cb $GRID --set dataset.culture=$c \
    --out runs/adapt/base-culture$c
  # ODA and CODA as shipped (the quick preset's step 3: all weights, 5 epochs, step 1's lr).
  $H run --methods oda,coda $GRID --set dataset.culture=$c \
    --cache runs/adapt/base-culture$c/stages --out runs/adapt/default-culture$c
  # Token alignment before the frozen task model, with and without the DINO adaptation.
  $H run --methods dual-dino,oda,dual-cb,coda $GRID --set dataset.culture=$c \
    --set adapt.align_tokens=true --cache runs/adapt/base-culture$c/stages \
    --out runs/adapt/align-culture$c
  # Feature alignment added to the DINO adaptation (weight 1, fixed before any run).
  $H run --methods oda,coda $GRID --set dataset.culture=$c --set adapt.feature_alignment=1 \
    --cache runs/adapt/base-culture$c/stages --out runs/adapt/falign1-culture$c
done
# What adapts, without the culture shift: all weights (= default-culture0, shared stages),
# the normalisation layers only, the early layers only.
$H run --methods oda,coda $GRID --set dataset.culture=0 --set adapt.trainable=all,norm,early \
  --cache runs/adapt/base-culture0/stages --out runs/adapt/scope-culture0
# Another training source (S5), culture shift on: does token alignment hold there?
$H run --methods supervised,dual-dino,dual-cb --sources S5 --targets S3,S5,S8,S11 --seeds 0,1,2 \
  --set threads=1 --cache runs/adapt/base-culture1/stages --out runs/adapt/base-S5-culture1
$H run --methods dual-dino,dual-cb --sources S5 --targets S3,S5,S8,S11 --seeds 0,1,2 \
  --set threads=1 --set adapt.align_tokens=true --cache runs/adapt/base-culture1/stages \
  --out runs/adapt/align-S5-culture1
# The two sources no experiment above looked at (S7, S10: test-only in the paper), culture on:
# the token alignment, decided on S5/S8/S11, checked where it was not chosen.
$H run --methods supervised,dual-dino,dual-cb --sources S3 --targets S7,S10 --seeds 0,1,2 \
  --set threads=1 --cache runs/adapt/base-culture1/stages --out runs/adapt/heldout-culture1
$H run --methods dual-dino,dual-cb --sources S3 --targets S7,S10 --seeds 0,1,2 --set threads=1 \
  --set adapt.align_tokens=true --cache runs/adapt/base-culture1/stages \
  --out runs/adapt/heldout-align-culture1
# Where the DINO centre starts in step 3 (culture on): the step-1 teacher's mean output on the
# source instead of zero; default-culture1 is the control (same stages). Two processes share
# the folder (their claims split the groups).
for i in 1 2; do
  $H run --methods oda,coda $GRID --set dataset.culture=1 --set adapt.center=source \
    --cache runs/adapt/base-culture1/stages --out runs/adapt/center-culture1 &
done
wait
# Round 3 (one process per line, one thread; culture on; default-culture1 is the control).
# The research code's global gradient clipping (norm 1.0 over all gradients) in step 3.
$H run --methods oda,coda $GRID --set dataset.culture=1 --set adapt.clip_mode=global \
  --cache runs/adapt/base-culture1/stages --out runs/adapt/clip-culture1
# Predicting with the adapted student instead of the adapted teacher.
$H run --methods oda,coda $GRID --set dataset.culture=1 --set adapt.predict_with=student \
  --cache runs/adapt/base-culture1/stages --out runs/adapt/student-culture1
# The unseen targets S7, S10: the shipped step 3 and feature alignment (weight 1, as in round 2).
HELD="--sources S3 --targets S7,S10 --seeds 0,1,2 --set threads=1 --set dataset.culture=1"
$H run --methods oda,coda $HELD --cache runs/adapt/base-culture1/stages \
  --out runs/adapt/heldout-default-culture1
$H run --methods oda,coda $HELD --set adapt.feature_alignment=1 \
  --cache runs/adapt/base-culture1/stages --out runs/adapt/heldout-falign1-culture1
# Budget: four times the epochs at the paper's step-3 rate (ODA).
$H run --methods oda $GRID --set dataset.culture=1 --set adapt.lr=1e-4 --set adapt.epochs=20 \
  --cache runs/adapt/base-culture1/stages --out runs/adapt/budget-lr1e-4-ep20-culture1
# Step 1's epoch chosen by k-NN accuracy on the source's validation plate (dino.select=knn).
$H run --methods dual-dino,dual-cb,oda,coda $GRID --set dataset.culture=1 --set dino.select=knn \
  --cache runs/adapt/base-culture1/stages --out runs/adapt/knn-culture1
# The whole CODA grid of benchmarks/grids/coda.toml (4 sources x 4 targets x 3 seeds).
$H run --grid benchmarks/grids/coda.toml --set threads=1 \
  --cache runs/adapt/base-culture1/stages --out runs/adapt/coda-grid
# Step 1 with sharper teacher targets (temperature 0.02 instead of 0.04).
$H run --methods dual-dino,oda $GRID --set dataset.culture=1 \
  --set dino.teacher_temp=0.02 --set dino.warmup_teacher_temp=0.02 \
  --cache runs/adapt/base-culture1/stages --out runs/adapt/temp002-culture1
# Round 4. A starting point learned on a disjoint corpus (8 labs drawn from seed 1, 4,320
# images, no labels; 30 DINO epochs), then every method of the quick CODA grid from it.
# The pretraining wrote the file the quick preset ships (plugins/datasets/data/synthetic-labs/
# fe-quick.pt); the runs below use that file (stages name it by content, not by path).
$H pretrain --dataset synthetic-labs --sources L1,L2,L3,L4,L5,L6,L7,L8 \
  --set dino.epochs=30 --set threads=1 --out runs/adapt/synthetic-labs-fe.pt
P=plugins/datasets/data/synthetic-labs/fe-quick.pt
$H run --methods supervised,dual-dino,dual-cb,oda,coda $GRID --set dataset.culture=1 \
  --pretrained $P --out runs/adapt/pretrained-culture1
# The pretrained start where it was not measured: the unseen targets S7, S10 (from S3), another
# training source (S5), and the whole CODA grid (S3's and S5's stages reused).
ALL="supervised,dual-dino,dual-cb,oda,coda"
$H run --methods $ALL --sources S3 --targets S7,S10 --seeds 0,1,2 --set threads=1 \
  --set dataset.culture=1 --pretrained $P --cache runs/adapt/pretrained-culture1/stages \
  --out runs/adapt/pretrained-heldout-culture1
$H run --methods $ALL --sources S5 --targets S3,S5,S8,S11 --seeds 0,1,2 --set threads=1 \
  --set dataset.culture=1 --pretrained $P --cache runs/adapt/pretrained-culture1/stages \
  --out runs/adapt/pretrained-S5-culture1
$H run --grid benchmarks/grids/coda.toml --set threads=1 --set dataset.culture=1 --pretrained $P \
  --cache runs/adapt/pretrained-culture1/stages --out runs/adapt/pretrained-grid
# Round 5. The whole CODA grid from the shipped FE with the token-aligned variants beside the
# paper's methods (the quick preset's defaults: culture on, the shipped FE; one process, both
# threads); the dual models with the alignment and no step 3; the five-method table with the
# aligned variants (benchmarks/grids/coda-aligned.toml). The last two compute predictions only.
ALL7="supervised,dual-dino,oda,oda-align,dual-cb,coda,coda-align"
$H run --methods $ALL7 --sources S3,S5,S8,S11 --targets S3,S5,S8,S11 --seeds 0,1,2 \
  --cache runs/adapt/stages --out runs/adapt/pretrained-grid7
$H run --methods dual-dino,dual-cb --sources S3,S5,S8,S11 --targets S3,S5,S8,S11 --seeds 0,1,2 \
  --set adapt.align_tokens=true --cache runs/adapt/stages --out runs/adapt/pretrained-grid-dual-align
$H run --grid benchmarks/grids/coda-aligned.toml --cache runs/adapt/stages \
  --out runs/adapt/pretrained-grid-aligned
# A dataset written by another program (microscope_world.py: other cells, labs that differ by
# their microscope only), read through `folder`, from the same shipped FE; two processes of one
# thread share the folder.
.venv/bin/python results/adaptation/microscope_world.py --out runs/adapt/microscope-world
for order in LabNorth,LabEast LabEast,LabNorth; do
  $H run --dataset folder --data runs/adapt/microscope-world --set dataset.resize=32 \
    --methods $ALL7 --sources $order --targets LabNorth,LabEast,LabSouth,LabWest \
    --seeds 0,1,2 --set threads=1 --pretrained $P --cache runs/adapt/mw-stages \
    --out runs/adapt/mw-pretrained &
done
wait
# The same world, all four labs as sources (the first run's stages are reused), and the
# five-method table with the aligned variants (predictions only).
MW="--dataset folder --data runs/adapt/microscope-world --set dataset.resize=32 --set threads=1"
MW="$MW --pretrained $P --cache runs/adapt/mw-stages --targets LabNorth,LabEast,LabSouth,LabWest"
for order in LabSouth,LabWest,LabNorth,LabEast LabWest,LabSouth,LabEast,LabNorth; do
  $H run $MW --methods $ALL7 --sources $order --seeds 0,1,2 --out runs/adapt/mw-pretrained-all &
done
wait
$H run $MW --methods supervised,dual-dino,oda-align,dual-cb,coda-align \
  --sources LabNorth,LabEast,LabSouth,LabWest --seeds 0,1,2 --out runs/adapt/mw-aligned5
# Round 6. The token alignment on real profiles (BBBC021), then with the alignment checked on the
# source's validation images and skipped past a cost of 0.05 (only predictions are new).
$H run --dataset bbbc021 --methods $ALL7 --seeds 0-2 --set threads=1 --out runs/adapt/bbbc021-align
$H run --dataset bbbc021 --methods dual-dino,oda-align,dual-cb,coda-align --seeds 0-2 --set threads=1 \
  --set adapt.align_guard=0.05 --cache runs/adapt/bbbc021-align/stages --out runs/adapt/bbbc021-guard
# The same check on the synthetic data: the dual models with the alignment, every source, target
# S3 only; then without it (predictions only).
$H run --methods dual-dino,dual-cb --sources S3,S5,S8,S11 --targets S3 --seeds 0,1,2 \
  --set adapt.align_tokens=true --set threads=1 --cache runs/adapt/stages --out runs/adapt/guard-synthetic
$H run --methods dual-dino,dual-cb --sources S3,S5,S8,S11 --targets S3 --seeds 0,1,2 \
  --set threads=1 --cache runs/adapt/stages --out runs/adapt/guard-synthetic-plain
# The microscope world with six times the drift between a lab's batches (section 21).
.venv/bin/python results/adaptation/microscope_world.py --batch-drift 0.3 \
  --out runs/adapt/microscope-world-drift
for order in LabNorth,LabEast LabEast,LabNorth; do
  $H run --dataset folder --data runs/adapt/microscope-world-drift --set dataset.resize=32 \
    --methods $ALL7 --sources $order --targets LabNorth,LabEast,LabSouth,LabWest \
    --seeds 0,1,2 --set threads=1 --pretrained $P --cache runs/adapt/mwd-stages \
    --out runs/adapt/mwd-pretrained &
done
wait
# Round 7. Batches of a lab imaged with microscopes half-way from the lab's towards a fresh draw
# (section 22); everything else as the first microscope world.
.venv/bin/python results/adaptation/microscope_world.py --batch-scope 0.5 \
  --out runs/adapt/microscope-world-scope
for order in LabNorth,LabEast LabEast,LabNorth; do
  $H run --dataset folder --data runs/adapt/microscope-world-scope --set dataset.resize=32 \
    --methods $ALL7 --sources $order --targets LabNorth,LabEast,LabSouth,LabWest \
    --seeds 0,1,2 --set threads=1 --pretrained $P --cache runs/adapt/mws-stages \
    --out runs/adapt/mws-pretrained &
done
wait
# Budget: ODA with four times the epochs, at the paper's step-3 rate and at the quick preset's
# (section 23); the control is ODA of mw-pretrained (5 epochs at 5e-4, the same stages).
MW="--dataset folder --data runs/adapt/microscope-world --set dataset.resize=32 --set threads=1"
MW="$MW --pretrained $P --cache runs/adapt/mw-stages --targets LabNorth,LabEast,LabSouth,LabWest"
for lr in 1e-4 5e-4; do
  $H run $MW --methods oda --sources LabNorth --seeds 0,1,2 --set adapt.epochs=20 \
    --set adapt.lr=$lr --out runs/adapt/mw-budget-ep20-lr$lr &
done
wait
# What adapts on the culture shift, from the shipped FE (section 24): all weights, the patch
# embedding and first block, the normalisation layers; S3's stages are those of Round 5. Two
# processes share the sweep folder, seeds in opposite orders.
for seeds in 0,1,2 2,1,0; do
  $H run --methods oda,oda-align --sources S3 --targets S3,S5,S8,S11 --seeds $seeds \
    --set threads=1 --set adapt.trainable=all,early,norm --cache runs/adapt/stages \
    --out runs/adapt/trainable-pretrained &
done
wait
# The microscope-only shift of the synthetic data (culture 0) from the shipped FE (section 25).
for seeds in 0,1,2 2,1,0; do
  $H run --methods $ALL7 --sources S3 --targets S3,S5,S8,S11 --seeds $seeds --set threads=1 \
    --set dataset.culture=0 --cache runs/adapt/stages --out runs/adapt/pretrained-culture0 &
done
wait
# The same from another source, S5 (section 25).
for seeds in 0,1,2 2,1,0; do
  $H run --methods $ALL7 --sources S5 --targets S3,S5,S8,S11 --seeds $seeds --set threads=1 \
    --set dataset.culture=0 --cache runs/adapt/stages --out runs/adapt/pretrained-culture0-S5 &
done
wait
# And from S8 (section 25).
for seeds in 0,1,2 2,1,0; do
  $H run --methods $ALL7 --sources S8 --targets S3,S5,S8,S11 --seeds $seeds --set threads=1 \
    --set dataset.culture=0 --cache runs/adapt/stages --out runs/adapt/pretrained-culture0-S8 &
done
wait

# Round 8. Target size (section 26): a microscope world with 8 batches per lab, read through two
# indexes of the same files. small.csv: every lab's first 3 batches (the default world's size);
# large.csv: the training lab's first 3 batches, every target lab's 8 (2.7 times the images).
# The training lab's images are the same in both, so only the targets' size differs.
W=runs/adapt/microscope-world-b8
.venv/bin/python results/adaptation/microscope_world.py --batches 8 --out $W
.venv/bin/python results/adaptation/index_subset.py $W small.csv --batches 3
.venv/bin/python results/adaptation/index_subset.py $W large.csv --batches 3 --labs LabNorth
for size in small large; do
  for seeds in 0,1,2 2,1,0; do
    $H run --dataset folder --data $W --set dataset.index=$size.csv --set dataset.resize=32 \
      --methods $ALL7 --sources LabNorth --targets LabNorth,LabEast,LabSouth,LabWest \
      --seeds $seeds --set threads=1 --pretrained $P --cache runs/adapt/mwb8-stages \
      --out runs/adapt/mwb8-$size &
  done
  wait
done
# The CODA authors' recipe together (section 27): their augmentation (jitter p 0.5, shift first,
# gamma within 1 ± 0.005, crops in the central 448 px: a no-op on 32 px images), global gradient
# clipping, step 1's epoch by source k-NN, and their step 2 (weight decay 1e-5, no plateau decay,
# gradient clip 1, jitter on the training images); ODA from random weights on the culture
# shift, as sections 7 and 10. The control is the quick preset, in its own folder.
G="--methods dual-dino,oda --sources S3 --targets S3,S5,S8,S11 --set threads=1"
G="$G --set backbone.pretrained=null --cache runs/adapt/faith-stages"
AUTHORS="--set dino.jitter_p=0.5 --set dino.shift_first=true --set dino.gamma_clip=0.005"
AUTHORS="$AUTHORS --set dino.crop_region=448 --set dino.clip_mode=global --set dino.select=knn"
AUTHORS="$AUTHORS --set task.weight_decay=1e-5 --set task.decay=1 --set task.clip_grad=1"
AUTHORS="$AUTHORS --set task.jitter=true --set task.cache_tokens=false"
for seeds in 0,1,2 2,1,0; do
  $H run $G --seeds $seeds --out runs/adapt/faith-control &
done
wait
for seeds in 0,1,2 2,1,0; do
  $H run $G $AUTHORS --seeds $seeds --out runs/adapt/faith-together &
done
wait
# Cross-batch pairs against pairs that never cross a batch (dino.pair_key=same-batch), on the
# microscope-only shift from the shipped FE where CODA-align is above ODA-align (section 28).
for key in batch same-batch; do
  for seeds in 0,1,2 2,1,0; do
    $H run --methods dual-cb,coda,coda-align --sources S3 --targets S3,S5,S8,S11 \
      --seeds $seeds --set threads=1 --set dataset.culture=0 --set dino.pair_key=$key \
      --cache runs/adapt/stages --out runs/adapt/pairs-$key-culture0 &
  done
  wait
done
# Round 9. The authors' recipe one part at a time (section 29), against the same control as
# section 27 (faith-control, sharing its stage cache): their augmentation alone, then their
# step 2 alone. Their global clipping and step-1 selection alone are sections 7 and 10.
AUGMENT="--set dino.jitter_p=0.5 --set dino.shift_first=true --set dino.gamma_clip=0.005"
AUGMENT="$AUGMENT --set dino.crop_region=448"
STEP2="--set task.weight_decay=1e-5 --set task.decay=1 --set task.clip_grad=1"
STEP2="$STEP2 --set task.jitter=true --set task.cache_tokens=false"
for part in augment step2; do
  [ $part = augment ] && SETTINGS=$AUGMENT || SETTINGS=$STEP2
  for seeds in 0,1,2 2,1,0; do
    $H run $G $SETTINGS --seeds $seeds --out runs/adapt/faith-$part &
  done
  wait
done
# Round 10. A label-free epoch rule for step 3 (section 30): adapt.keep=spread keeps the last
# epoch whose predicted classes on the target spread at least as widely as step 1's, less 0.05.
# Twice the quick preset's epochs at its rate, where section 23 saw the accuracy fall; the
# last epoch's accuracy is the oracle curve's last point of the same adaptations. The
# microscope world from LabEast (section 23 measured LabNorth), and the synthetic culture shift
# from S3 (where step 3 gains); one process each, seeds in order.
P=plugins/datasets/data/synthetic-labs/fe-quick.pt
RULE="--set adapt.epochs=10 --set adapt.keep=spread --set adapt.keep_tolerance=0.05"
MW="--dataset folder --data runs/adapt/microscope-world --set dataset.resize=32 --set threads=1"
MW="$MW --pretrained $P --cache runs/adapt/mw-stages --targets LabNorth,LabEast,LabSouth,LabWest"
[ -d runs/adapt/microscope-world ] ||
  .venv/bin/python results/adaptation/microscope_world.py --out runs/adapt/microscope-world
$H run $MW --methods dual-dino,oda,dual-cb,coda --sources LabEast --seeds 0,1,2 $RULE \
  --out runs/adapt/keep-spread-mw &
$H run --methods dual-dino,oda,dual-cb,coda --sources S3 --targets S3,S5,S8,S11 --seeds 0,1,2 \
  --set threads=1 $RULE --cache runs/adapt/stages --out runs/adapt/keep-spread-culture1 &
wait
# Round 11. The authors' lr warm-up (from lr / W, one step past lr) and teacher momentum (the
# next step's) together, from random weights, as section 29; the control is the quick preset
# rerun at the same commit (these settings re-drew every DINO stage's seed).
SMALL="--set dino.lr_warmup=first-step --set dino.momentum_ahead=true"
$H run $G --seeds 0,1,2 --out runs/adapt/faith-control-r11 &
$H run $G $SMALL --seeds 0,1,2 --out runs/adapt/faith-schedule &
wait
# Round 12. A label-free epoch rule on the FE's drift (section 32): adapt.keep=drift keeps the
# last epoch whose class tokens on the target keep a linear CKA of at least 0.95 to step 1's
# (tolerance 0.05, fixed before these runs from section 30's diagnostics). Ten epochs at the
# quick rate, on conditions not looked at before with ten epochs: the microscope world from
# LabSouth and the synthetic culture shift from S8 (shipped FE); the last epoch's accuracy is the
# oracle curve's last point of the same adaptations. One process each, seeds in order.
DRIFT="--set adapt.epochs=10 --set adapt.keep=drift --set adapt.keep_tolerance=0.05"
$H run $MW --methods dual-dino,oda,dual-cb,coda --sources LabSouth --seeds 0,1,2 $DRIFT \
  --out runs/adapt/keep-drift-mw &
$H run --methods dual-dino,oda,dual-cb,coda --sources S8 --targets S3,S5,S8,S11 --seeds 0,1,2 \
  --set threads=1 $DRIFT --cache runs/adapt/stages --out runs/adapt/keep-drift-culture1 &
wait
# Round 13. Is CODA's place below ODA its cross-batch start (step 1) or its cross-batch step 3
# (section 33)? The two crossed cells of start x step 3, on Round 12's conditions and settings
# (its stage caches hold both step 1s): ODA's start with cross-batch pairs in step 3, CODA's
# start without them. Round 12's ODA and CODA are the other two cells.
for data in mw culture1; do
  if [ $data = mw ]; then WHERE="$MW --sources LabSouth"; else
    WHERE="--sources S8 --targets S3,S5,S8,S11 --set threads=1 --cache runs/adapt/stages"; fi
  $H run $WHERE --methods oda --seeds 0,1,2 $DRIFT --set adapt.cross_batch=true \
    --out runs/adapt/crossed-oda-$data &
  $H run $WHERE --methods coda --seeds 0,1,2 $DRIFT --set adapt.cross_batch=false \
    --out runs/adapt/crossed-coda-$data &
  wait
done
# Round 14. Section 33's start x step 3 again, on the microscope world from another lab
# (LabWest), the same settings: each family's own cells first, then the crossed ones.
WHERE="$MW --sources LabWest"
$H run $WHERE --methods dual-dino,oda --seeds 0,1,2 $DRIFT --out runs/adapt/start-dino-mw-west &
$H run $WHERE --methods dual-cb,coda --seeds 0,1,2 $DRIFT --out runs/adapt/start-cb-mw-west &
wait
$H run $WHERE --methods oda --seeds 0,1,2 $DRIFT --set adapt.cross_batch=true \
  --out runs/adapt/crossed-oda-mw-west &
$H run $WHERE --methods coda --seeds 0,1,2 $DRIFT --set adapt.cross_batch=false \
  --out runs/adapt/crossed-coda-mw-west &
wait
# Round 15. A ten times longer step 1 from random weights (section 34), on one GPU: six
# processes (seed x family), 15 and 150 epochs of step 1 as one sweep, sources in order until
# the time limit; the second call completed S5 in another folder. Needs a CUDA GPU and
# hcibench installed in python3 (or PYTHON=...).
results/adaptation/gpu-step1-budget.sh runs/adapt/gpu-step1-budget 430 S3,S8,S5,S11
results/adaptation/gpu-step1-budget.sh runs/adapt/gpu-step1-budget-2 215 S5,S11
A=runs/adapt/gpu-step1-budget
for b in 15 150; do
  .venv/bin/python results/adaptation/summarise.py "dino=$A/dino.epochs=$b@S3,S8,S5" \
    "cb=$A/dino.epochs=$b@S3,S8" "cb=$A-2/dino.epochs=$b@S5" \
    --versus dino:oda,dino:dual-dino --versus cb:coda,cb:dual-cb
done
# Round 16. Batch artifacts (section 35): do cross-batch pairs gain when every batch of a source
# carries artifacts of its own (dataset.artifacts=1, as bright as the cells)? Control: the same
# runs without artifacts (dataset.artifacts=0), one sweep; shipped FE, five adaptation epochs.
ART="--sources S3 --targets S3,S5,S8,S11 --seeds 0,1,2 --set threads=1 --set dataset.artifacts=0,1"
$H run $ART --methods supervised,dual-dino,oda,oda-align --out runs/adapt/artifacts-S3 &
$H run $ART --methods dual-cb,coda,coda-align --out runs/adapt/artifacts-S3 &
wait
# Round 17. Round 16 from the other source, S5 (section 35).
ART="--sources S5 --targets S3,S5,S8,S11 --seeds 0,1,2 --set threads=1 --set dataset.artifacts=0,1"
$H run $ART --methods supervised,dual-dino,oda,oda-align --out runs/adapt/artifacts-S5 &
$H run $ART --methods dual-cb,coda,coda-align --out runs/adapt/artifacts-S5 &
wait
# Rounds 18 and 19. Round 16 from S8, then from S11 (section 35's replication, fixed before
# any of their runs).
for S in S8 S11; do
  ART="--sources $S --targets S3,S5,S8,S11 --seeds 0,1,2 --set threads=1 --set dataset.artifacts=0,1"
  $H run $ART --methods supervised,dual-dino,oda,oda-align --out runs/adapt/artifacts-$S &
  $H run $ART --methods dual-cb,coda,coda-align --out runs/adapt/artifacts-$S &
  wait
done
# Round 20. Section 25 from the last source, S11 (fixed before its runs): the microscope-only
# shift of the synthetic data from the shipped FE.
for seeds in 0,1,2 2,1,0; do
  $H run --methods $ALL7 --sources S11 --targets S3,S5,S8,S11 --seeds $seeds --set threads=1 \
    --set dataset.culture=0 --cache runs/adapt/stages --out runs/adapt/pretrained-culture0-S11 &
done
wait
# Round 21. Section 35's CODA − ODA with artifacts on two new seeds (3, 4) from every source,
# the four methods it compares (fixed before these runs).
for S in S3 S5 S8 S11; do
  ART="--sources $S --targets S3,S5,S8,S11 --seeds 3,4 --set threads=1 --set dataset.artifacts=1"
  $H run $ART --methods dual-dino,oda --out runs/adapt/artifacts-seeds34-$S &
  $H run $ART --methods dual-cb,coda --out runs/adapt/artifacts-seeds34-$S &
  wait
done
# Round 22. Section 35's CODA − ODA with artifacts on five more seeds (5-9) from every source,
# so that the test over (source, seed) means has the 40 its spread asks for (fixed, with the
# test, before these runs). One seed at a time, so that every finished seed has all sources.
for seed in 5 6 7 8 9; do
  ART="--sources S3,S5,S8,S11 --targets S3,S5,S8,S11 --seeds $seed --set threads=1 --set dataset.artifacts=1"
  $H run $ART --methods dual-dino,oda --out runs/adapt/artifacts-seed$seed &
  $H run $ART --methods dual-cb,coda --out runs/adapt/artifacts-seed$seed &
  wait
done
# Round 23. Section 36: the teacher's EMA momentum in step 3. The control is Round 16's
# no-artifacts sweep variant (step 3 with step 1's momentum, 0.99 rising to 1); the same runs
# with 0.9 reuse its steps 1 and 2 through its stage folder.
$H run --methods oda,coda --sources S3 --targets S3,S5,S8,S11 --seeds 0,1,2 --set threads=1 \
  --set dataset.artifacts=0 --set adapt.momentum_teacher=0.9 \
  --cache runs/adapt/artifacts-S3/cache --out runs/adapt/momentum-S3
# Round 24. Section 36's momentum from the other three sources (fixed, with its test, before
# these runs; Round 22 paused after seed 6 to make room for it, before any of its records
# were read, and went on with seeds 7-9 beside it). Controls: the no-artifacts variants of
# Rounds 17-19.
for S in S5 S8 S11; do
  M="--sources $S --targets S3,S5,S8,S11 --seeds 0,1,2 --set threads=1 --set dataset.artifacts=0"
  M="$M --set adapt.momentum_teacher=0.9 --cache runs/adapt/artifacts-$S/cache --out runs/adapt/momentum-$S"
  $H run $M --methods oda &
  $H run $M --methods coda &
  wait
done
# Round 25. Section 37: section 36's momentum on the microscope world (fixed, with its test,
# before these runs). The control is section 18's grid rerun at this commit; the runs with 0.9
# share its steps 1 and 2 through the stage cache. One source at a time, both processes on it.
# $P and $ALL7 as set above.
[ -d runs/adapt/microscope-world ] ||
  .venv/bin/python results/adaptation/microscope_world.py --out runs/adapt/microscope-world
MW="--dataset folder --data runs/adapt/microscope-world --set dataset.resize=32 --set threads=1"
MW="$MW --pretrained $P --cache runs/adapt/mw37-stages --targets LabNorth,LabEast,LabSouth,LabWest"
for S in LabNorth LabEast LabSouth LabWest; do
  for seeds in 0,1,2 2,1,0; do
    $H run $MW --methods $ALL7 --sources $S --seeds $seeds --out runs/adapt/mw37-control &
  done
  wait
  for seeds in 0,1,2 2,1,0; do
    $H run $MW --methods oda,oda-align,coda,coda-align --sources $S --seeds $seeds \
      --set adapt.momentum_teacher=0.9 --out runs/adapt/mw37-momentum &
  done
  wait
done
# Round 26. Section 38: batch artifacts and a teacher that follows the student together (fixed,
# with its test, before these runs). One seed at a time, so that every finished seed has all
# sources.
for seed in 0 1 2; do
  A="--sources S3,S5,S8,S11 --targets S3,S5,S8,S11 --seeds $seed --set threads=1"
  A="$A --set dataset.artifacts=1 --set adapt.momentum_teacher=0.9"
  $H run $A --methods supervised,dual-dino,oda --out runs/adapt/artifacts-momentum &
  $H run $A --methods dual-cb,coda --out runs/adapt/artifacts-momentum &
  wait
done
# Round 27. Section 39: section 38 from fresh seeds, and its control at step 1's momentum (fixed,
# with its test, before these runs). The replication one seed at a time, sharing its steps 1
# and 2 with the control through the stage cache; the control at seeds 0-2 reads Round 26's.
for seed in 3 4 5; do
  A="--sources S3,S5,S8,S11 --targets S3,S5,S8,S11 --seeds $seed --set threads=1"
  A="$A --set dataset.artifacts=1 --cache runs/adapt/art39-stages"
  $H run $A --set adapt.momentum_teacher=0.9 --methods supervised,dual-dino,oda \
    --out runs/adapt/artifacts-momentum-39 &
  $H run $A --set adapt.momentum_teacher=0.9 --methods dual-cb,coda \
    --out runs/adapt/artifacts-momentum-39 &
  wait
done
for seeds in 0,1,2 3,4,5; do
  A="--sources S3,S5,S8,S11 --targets S3,S5,S8,S11 --seeds $seeds --set threads=1"
  A="$A --set dataset.artifacts=1 --out runs/adapt/artifacts-control-39"
  case $seeds in 0,1,2) C=runs/adapt/artifacts-momentum/stages ;; *) C=runs/adapt/art39-stages ;; esac
  $H run $A --cache $C --methods oda &
  $H run $A --cache $C --methods coda &
  wait
done
# Rounds 28-30 run one design on microscope worlds: all four labs as sources and targets, seeds
# 0-2, the shipped FE, stages shared through one cache; one source at a time, both processes on
# it. mw_round DATA OUT METHODS [OPTION...]. $P and $ALL7 as set above; MW_START, when set,
# replaces the start (`MW_START= mw_round ...` starts from random weights), MW_SIZE the 32 px
# scaling, MW_CACHE the stage cache, MW_SEEDS the seeds (one list per process).
mw_round() {
  local data=$1 out=$2 methods=$3
  shift 3
  local mw="--dataset folder --data $data ${MW_SIZE---set dataset.resize=32} --set threads=1"
  mw="$mw ${MW_START-"--pretrained $P"}"
  mw="$mw --cache ${MW_CACHE:-runs/adapt/mw40-stages} --targets LabNorth,LabEast,LabSouth,LabWest"
  mw="$mw --out $out"
  for S in LabNorth LabEast LabSouth LabWest; do
    for seeds in ${MW_SEEDS:-0,1,2 2,1,0}; do
      $H run $mw "$@" --methods "$methods" --sources $S --seeds $seeds &
    done
    wait
  done
}
# Round 28. Section 40: the microscope world with batch artifacts of its own (fixed, with its
# test, before these runs). The control is Round 25's mw37-control.
[ -d runs/adapt/microscope-world-artifacts ] ||
  .venv/bin/python results/adaptation/microscope_world.py --batch-artifacts 1 \
    --out runs/adapt/microscope-world-artifacts
mw_round runs/adapt/microscope-world-artifacts runs/adapt/mw40-artifacts $ALL7
# Round 29. Section 40's follow-up: the same design at strength 0.5 (fixed, with its test,
# before these runs).
[ -d runs/adapt/microscope-world-artifacts05 ] ||
  .venv/bin/python results/adaptation/microscope_world.py --batch-artifacts 0.5 \
    --out runs/adapt/microscope-world-artifacts05
mw_round runs/adapt/microscope-world-artifacts05 runs/adapt/mw40-artifacts05 $ALL7
# Round 30. Section 41: Round 29 with a teacher that follows the student, step 3 only through
# Round 29's stage cache (fixed, with its tests, before these runs).
mw_round runs/adapt/microscope-world-artifacts05 runs/adapt/mw41-momentum05 \
  oda,oda-align,coda,coda-align --set adapt.momentum_teacher=0.9
# Round 31. Section 42: the microscope world of section 18 from random weights, the paper's five
# methods (fixed, with its test, before these runs). The control is Round 25's mw37-control.
[ -d runs/adapt/microscope-world ] ||
  .venv/bin/python results/adaptation/microscope_world.py --out runs/adapt/microscope-world
MW_START= mw_round runs/adapt/microscope-world runs/adapt/mw42-random \
  supervised,dual-dino,oda,dual-cb,coda
# Round 32. Section 43: Round 31 at the world's native 64 px, patches of 8 pixels (fixed, with
# its test, before these runs). The control is Round 31.
MW_START= MW_SIZE="--set input_size=64 --set backbone.img_size=64 --set backbone.patch_size=8" \
  mw_round runs/adapt/microscope-world runs/adapt/mw43-native supervised,dual-dino,oda,dual-cb,coda \
  --set dino.global_size=48 --set dino.local_size=24
# Round 33. Section 44: section 18's design with colour images read band first (commit 85caa48),
# a new stage cache (fixed, with its test, before these runs). Rounds 1-32's microscope worlds
# were read row first.
MW_CACHE=runs/adapt/mw44-stages mw_round runs/adapt/microscope-world runs/adapt/mw44-read $ALL7
# Round 34. Section 45: Round 33 with a teacher that follows the student, step 3 only through
# Round 33's stage cache (fixed, with its tests, before these runs).
MW_CACHE=runs/adapt/mw44-stages mw_round runs/adapt/microscope-world runs/adapt/mw45-momentum \
  oda,oda-align,coda,coda-align --set adapt.momentum_teacher=0.9
# Round 35. Section 46: Round 33 from seeds 3 to 5 (fixed, with its test, before these runs).
MW_SEEDS="3,4,5 5,4,3" MW_CACHE=runs/adapt/mw46-stages \
  mw_round runs/adapt/microscope-world runs/adapt/mw46-seeds345 $ALL7
# Round 36. Section 47: Round 34 from seeds 3 to 5, step 3 only through Round 35's stage cache
# (fixed, with its test, before these runs).
MW_SEEDS="3,4,5 5,4,3" MW_CACHE=runs/adapt/mw46-stages mw_round runs/adapt/microscope-world \
  runs/adapt/mw47-momentum345 oda,oda-align,coda,coda-align --set adapt.momentum_teacher=0.9
# Round 37. Section 48: Round 33 from random weights (fixed, with its test, before these runs).
MW_START= MW_CACHE=runs/adapt/mw48-stages mw_round runs/adapt/microscope-world \
  runs/adapt/mw48-random $ALL7
# Round 38. Section 49: Round 37 at the world's native 64 px, patches of 8 pixels (fixed, with
# its tests, before these runs). The control is Round 37.
MW_START= MW_CACHE=runs/adapt/mw49-stages \
  MW_SIZE="--set input_size=64 --set backbone.img_size=64 --set backbone.patch_size=8" \
  mw_round runs/adapt/microscope-world runs/adapt/mw49-native $ALL7 \
  --set dino.global_size=48 --set dino.local_size=24
# The CODA grids as shipped (benchmarks/grids/coda.toml, then coda-aligned.toml through the same
# stage cache), two processes splitting the sources. grid_round SUFFIX [OPTION...]: the run
# folders are runs/adapt/check-coda$SUFFIX and check-coda-aligned$SUFFIX.
grid_round() {
  local suffix=$1
  shift
  for grid in coda coda-aligned; do
    for sources in S3,S8 S5,S11; do
      $H run --grid benchmarks/grids/$grid.toml --sources $sources "$@" --set threads=1 \
        --cache runs/adapt/check-stages --out runs/adapt/check-$grid$suffix &
    done
    wait
  done
}
# Round 39. Section 50: the CODA grids as shipped, at the current code (fixed, with its checks,
# before these runs); then `report --stats --baseline dual-dino` and `dual-cb` on each folder.
grid_round ""
# Round 40. Section 51: Round 33 on the world with batch artifacts of its own, read as written
# (fixed, with its test, before these runs). The control is Round 33.
[ -d runs/adapt/microscope-world-artifacts ] ||
  .venv/bin/python results/adaptation/microscope_world.py --batch-artifacts 1 \
    --out runs/adapt/microscope-world-artifacts
MW_CACHE=runs/adapt/mw51-stages mw_round runs/adapt/microscope-world-artifacts \
  runs/adapt/mw51-artifacts $ALL7
# Round 41. Section 52: Round 39 from seeds 3 to 5 (fixed, with its tests, before these runs).
grid_round -345 --seeds 3,4,5
# Round 42. Section 53: section 23's budget on the microscope world read as written, from LabNorth
# and LabEast (fixed, with its tests, before these runs): the quick preset's 5 epochs at 5e-4
# against 20 epochs at 1e-4 and at 5e-4, steps 1 and 2 shared through one new stage cache.
MW53="--dataset folder --data runs/adapt/microscope-world --set dataset.resize=32 --set threads=1"
MW53="$MW53 --pretrained $P --cache runs/adapt/mw53-stages"
MW53="$MW53 --targets LabNorth,LabEast,LabSouth,LabWest"
for S in LabNorth LabEast; do
  for seeds in 0,1,2 2,1,0; do
    {
      $H run $MW53 --methods dual-dino,oda --sources $S --seeds $seeds --out runs/adapt/mw53-ep5
      $H run $MW53 --methods oda --sources $S --seeds $seeds --set adapt.epochs=20 \
        --set adapt.lr=1e-4,5e-4 --out runs/adapt/mw53-ep20
    } &
  done
  wait
done
