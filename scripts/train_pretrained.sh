#!/usr/bin/env bash
# Re-create the shipped checkpoints in ddim_lib/pretrained/ with the project's own `ddim train`.
# Every shipped manifest.json records its literal command ("command"), the commit, the seed, the
# metrics and the `ddim evaluate` commands that produced them; this file lists them in one place.
# The shipped ones were trained on a shared 2-core CPU with RUNS=/tmp/e_runs and one thread per run
# (thread hand-offs cost more than they save for models this small on a busy machine).
#
#   bash scripts/train_pretrained.sh            # all of them, one after another
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/pretrained}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DDIM=${DDIM:-.venv/bin/ddim}
PY=${PY:-.venv/bin/python}

# The digits classifier behind `ddim evaluate`'s digits features (a few seconds).
$PY scripts/train_digits_classifier.py

# The digits UNet (preset "digits": 1 channel 8x8, batch 64, lr 1e-3, EMA 0.999), 20000 steps: about
# 45 minutes on one core of a 2-core machine (10000 steps took 23 min here). The shipped one was
# trained in three legs (2000, then resumed to 10000, then to 20000; its manifest's "history" lists
# them with their commits). The last leg ran with fused Adam and the sub-pixel up-sampling, which
# change float32 round-off only, so this one-leg run follows the same recipe but is not bit-identical
# to the shipped model (and has not been re-run to compare its Frechet distances).
$DDIM train --config digits --steps 20000 --out "$RUNS/digits" --seed 0 --log-every 100 --ckpt-every 2000 --no-progress
$PY scripts/ship_pretrained.py "$RUNS/digits" digits --steps 20,50 --n 500

# 2-D MLPs (preset "toy2d": batch 512, lr 1e-3, 4000 steps, EMA 0.995).
for data in swiss_roll two_moons; do
  $DDIM train --config toy2d --data "$data" --out "$RUNS/toy2d-$data" --seed 0 --no-progress --log-every 200 --ckpt-every 1000
  $PY scripts/ship_pretrained.py "$RUNS/toy2d-$data" "toy2d-$data" --steps 20,50 --n 2000
done
