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

# The digits UNet (preset "digits": 1 channel 8x8, batch 128, lr 1e-3, EMA 0.999).
$DDIM train --config digits --steps 2000 --out "$RUNS/digits" --seed 0 --log-every 50 --ckpt-every 250 --no-progress
$PY scripts/ship_pretrained.py "$RUNS/digits" digits --steps 20,50 --n 500

# 2-D MLPs (preset "toy2d": batch 512, lr 1e-3, 4000 steps, EMA 0.995).
for data in swiss_roll two_moons; do
  $DDIM train --config toy2d --data "$data" --out "$RUNS/toy2d-$data" --seed 0 --no-progress --log-every 200 --ckpt-every 1000
  $PY scripts/ship_pretrained.py "$RUNS/toy2d-$data" "toy2d-$data" --steps 20,50 --n 2000
done
