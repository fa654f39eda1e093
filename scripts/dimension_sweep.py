"""The dimension sweep behind chapter 11: each sampler's excess Frechet distance to a mixture whose
geometry is fixed while its dimension d grows (ddim_lib.dimension.fixed_geometry_mixture).

For every d in D, S in {10, 20, 50} and sampler (eta = 0, 0.2, 0.5, 1 and sigma_hat), REPS independent
runs of N samples with the exact denoiser, uniform spacing, T = 1000 linear schedule; the same latents
x_T (seed 1000 d + r) in every cell of a given d. The floor (the same estimator on N exact draws, REPS
times) is stored beside. Writes results/dimension_sweep.json (resumable: finished cells are kept),
with a manifest and, per cell, a fingerprint of the first 64 samples of run 0, which the chapter
regenerates live.

Usage: python scripts/dimension_sweep.py [--out results/dimension_sweep.json] [--n 2000] [--reps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import ddim_lib as dl
from ddim_lib.dimension import fixed_geometry_mixture, frechet_floor, frechet_to_law
from ddim_lib.table1 import fingerprint

DIMS = [2, 4, 8, 16, 32, 64, 128, 256, 512]
STEPS = [10, 20, 50]
SAMPLERS = {"eta=0": (0.0, "eta"), "eta=0.2": (0.2, "eta"), "eta=0.5": (0.5, "eta"),
            "eta=1": (1.0, "eta"), "sigma_hat": (0.0, "sigma_hat")}


def run_cell(d: int, S: int, name: str, n: int, reps: int) -> dict:
    """REPS runs of one sampler at (d, S): Frechet distances and the fingerprint of run 0."""
    schedule = dl.NoiseSchedule.linear(1000)
    mixture = fixed_geometry_mixture(d)
    oracle = dl.OracleEps(mixture, schedule)
    eta, variance = SAMPLERS[name]
    values, fp = [], None
    for r in range(reps):
        g = torch.Generator().manual_seed(1000 * d + r)
        x_T = torch.randn(n, d, generator=g, dtype=torch.float64)
        x_0 = dl.sample(oracle, x_T, schedule, S, eta=eta, variance=variance, generator=g)
        values.append(frechet_to_law(x_0, mixture))
        if r == 0:
            fp = fingerprint(x_0[:64])
    return {"fd": values, "fingerprint": fp}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/dimension_sweep.json")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    if res.get("manifest", {}).get("n") not in (None, args.n) or res.get("manifest", {}).get("reps") not in (None, args.reps):
        sys.exit(f"{out} holds another n or reps; remove it to start again")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    manifest = res.setdefault("manifest", {})
    manifest.update({"command": "python scripts/dimension_sweep.py " + " ".join(argv or sys.argv[1:]),
                     "commit_started": manifest.get("commit_started", commit), "n": args.n, "reps": args.reps,
                     "seeds": "x_T of run r at dimension d: torch.Generator().manual_seed(1000 d + r); floor: seed d",
                     "schedule": "linear, T = 1000", "spacing": "uniform", "dims": DIMS, "steps": STEPS,
                     "samplers": list(SAMPLERS), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 thread",
                     "torch": torch.__version__})
    cells, floors = res.setdefault("cells", {}), res.setdefault("floor", {})
    cpu = manifest.get("cpu_seconds", 0.0)
    for d in DIMS:
        if str(d) not in floors:
            t0 = time.process_time()
            mean, se = frechet_floor(fixed_geometry_mixture(d), args.n, args.reps, torch.Generator().manual_seed(d))
            floors[str(d)] = {"mean": mean, "se": se}
            cpu += time.process_time() - t0
        for S in STEPS:
            for name in SAMPLERS:
                key = f"d={d},S={S},{name}"
                if key in cells:
                    continue
                t0 = time.process_time()
                cells[key] = run_cell(d, S, name, args.n, args.reps)
                cpu += time.process_time() - t0
                manifest["cpu_seconds"] = round(cpu, 1)
                manifest["commit_finished"] = commit
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(res, indent=1))
                os.replace(tmp, out)
                print(f"{key}: FD {sum(cells[key]['fd']) / args.reps:.4f} (floor {floors[str(d)]['mean']:.4f}), "
                      f"cpu {cpu:.0f} s", flush=True)


if __name__ == "__main__":
    main()
