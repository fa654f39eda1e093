"""Table 1's eta = 0 versus eta = 1 comparison on the digits UNet at three training lengths (issue 17,
item 5): how the gap moves as the network improves.

The 2000- and 5000-step models are re-created with the project's own trainer, exactly as the shipped
20000-step one was started (same preset, seed 0):

    ddim train --config digits --steps 2000 --out runs/len2000 --seed 0
    ddim train --config digits --steps 5000 --out runs/len5000 --seed 0

They are not shipped (the book only needs their numbers); the 20000-step model is the shipped one.
Samples use the grid's latents and noise seeds (``ddim_lib.table1.run_chunk``: common random numbers,
so eta = 0 and eta = 1 are compared on the same latents), n = CHUNKS x 250 per cell, S in {10, 20, 50,
100}, uniform spacing. Per cell (samples clamped to [-1, 1] as saved images are, as in the grid): Frechet distance in the digits classifier's features against all 1797
digits with bootstrap s.e., and a fingerprint of the first 64 samples; per (model, S): the paired
difference FD(eta = 1) - FD(eta = 0) with its paired bootstrap s.e.

Usage: python scripts/table1_training_length.py generate --model 2000=runs/len2000 ...   (one process each)
       python scripts/table1_training_length.py merge PART.json ... --out results/training_length.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ddim_lib as dl
from ddim_lib import table1
from ddim_lib.evaluate import DigitsFeatures, FrechetReference
from ddim_lib.metrics import frechet_with_se, paired_bootstrap

ROWS = ("eta=0", "eta=1")
STEPS = (10, 20, 50, 100)


def load(spec: str):
    """'20000=pretrained' (the shipped model) or '2000=runs/len2000' (a run directory)."""
    steps, where = spec.split("=", 1)
    if where == "pretrained":
        model, schedule, manifest = dl.load_pretrained("digits", with_manifest=True)
    else:
        model, schedule, manifest = dl.load_checkpoint(where)
    if int(manifest["step"]) != int(steps):
        sys.exit(f"{where} holds step {manifest['step']}, not {steps}")
    return int(steps), model.eval(), schedule, where


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def generate(spec: str, chunks: int, out: Path) -> None:
    torch.set_num_threads(1)
    t0 = time.process_time()
    steps, model, schedule, where = load(spec)
    features = DigitsFeatures()
    reference = FrechetReference(features(dl.load_dataset("digits")))
    cells, diffs = {}, {}
    for S in STEPS:
        feats = {}
        for row in ROWS:
            x = torch.cat([table1.run_chunk(model, schedule, row, "uniform", S, c) for c in range(chunks)])
            feats[row] = features(x.clamp(-1, 1))      # measured as images are saved, as the grid is
            fd, se = frechet_with_se(feats[row], reference, n_boot=200, rng=S)
            cells[f"{steps}|{row}|{S}"] = {"n": len(x), "fd": [fd, se], "fingerprint": table1.fingerprint(x)}
            print(f"{steps} steps, {row}, S = {S}: FD {fd:.2f} +- {se:.2f}", flush=True)
        d, se = paired_bootstrap(lambda f: reference(f), feats["eta=1"], feats["eta=0"], n_boot=200, rng=S)
        diffs[f"{steps}|{S}"] = [d, se]
    out.write_text(json.dumps({"model": {"steps": steps, "source": "shipped digits model" if where == "pretrained"
                                         else f"ddim train --config digits --steps {steps} --seed 0",
                                         "weights_sha256": weights_digest(model)},
                               "cells": cells, "differences": diffs, "cpu_s": time.process_time() - t0}, indent=1))


def merge(parts: list[str], out: Path, chunks: int) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    # The commands, without this machine's temporary paths (run directories and part files).
    command = ("python scripts/table1_training_length.py generate --model STEPS=RUN_DIR --chunks "
               f"{chunks} --out PART.json (one per model; 20000=pretrained for the shipped one), then "
               f"merge PART.json ... --out {out.name if out.parent.name != 'results' else 'results/' + out.name}")
    res = {"manifest": {"command": command,
                        "commit": commit, "n": chunks * table1.CHUNK, "rows": list(ROWS), "steps": list(STEPS),
                        "seeds": f"ddim_lib.table1: latents seed {table1.LATENT_SEED} + chunk, noise seed "
                                 f"{table1.NOISE_SEED} + chunk (the Table 1 grid's)",
                        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 thread per model",
                        "models": [], "cpu_s": 0.0}, "cells": {}, "differences": {}}
    for p in parts:
        part = json.loads(Path(p).read_text())
        res["manifest"]["models"].append(part["model"])
        res["manifest"]["cpu_s"] += round(part["cpu_s"], 1)
        res["cells"].update(part["cells"])
        res["differences"].update(part["differences"])
    res["manifest"]["models"].sort(key=lambda m: m["steps"])
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}: {len(res['cells'])} cells, {res['manifest']['cpu_s']:.0f} CPU seconds")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--model", required=True, help="STEPS=pretrained or STEPS=RUN_DIR")
    g.add_argument("--chunks", type=int, default=4)
    g.add_argument("--out", required=True)
    m = sub.add_parser("merge")
    m.add_argument("parts", nargs="+")
    m.add_argument("--out", default="results/training_length.json")
    m.add_argument("--chunks", type=int, default=4)
    a = p.parse_args()
    if a.cmd == "generate":
        generate(a.model, a.chunks, Path(a.out))
    else:
        merge(a.parts, Path(a.out), a.chunks)


if __name__ == "__main__":
    main()
