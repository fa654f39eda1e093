"""The paper's Table 1 on the shipped digits UNet, at real sample sizes: generate, then measure.

    python scripts/table1_digits.py generate [--n 1000] [--n-1000 500] [--phases uniform,t1000,quadratic]
    python scripts/table1_digits.py analyse  [--out results/table1_digits.json]

``generate`` samples every cell of the grid (rows: eta in {0, 0.2, 0.5, 1} and sigma_hat, the
latter both as the official code ran it, x_0 clamped to [-1, 1] at every step, and unclamped;
columns: S in {10, 20, 50, 100} with uniform and quadratic spacing, and S = 1000) in chunks of
``CHUNK`` samples. Chunk c of every cell starts from the same latents (seed LATENT_SEED + c) and
draws its sampling noise from the same generator (seed NOISE_SEED + c): common random numbers.
Each finished chunk is saved under ``--work`` (default: a folder in the system temp directory; raw
samples are never committed), so the run is resumable and a partial run is usable. Cells run in
order of importance: uniform S <= 100 (all rows), then S = 1000, then quadratic S <= 100, chunk
by chunk within each phase (so an interrupted phase has every cell at the same n).

``analyse`` reads whatever chunks exist and writes the small results file the book loads
(``results/table1_digits.json``): per cell its n, wall and CPU seconds, the measures of
``ddim_lib.metrics`` with standard errors, paired-bootstrap differences between cells of the same
column, and a fingerprint of the cell's first 64 samples; plus a manifest (command, commit, seeds,
n, CPU time, machine). Quadratic spacing at S = 1000 is every step, identical to uniform: not rerun.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ddim_lib as dl

CHUNK = 250
LATENT_SEED, NOISE_SEED = 1000, 2000
ROWS = {  # name -> keyword arguments of ddim_lib.sample
    "eta=0": dict(eta=0.0),
    "eta=0.2": dict(eta=0.2),
    "eta=0.5": dict(eta=0.5),
    "eta=1": dict(eta=1.0),
    "sigma_hat (x0 clamped)": dict(variance="sigma_hat", clip_x0=True),
    "sigma_hat (unclamped)": dict(variance="sigma_hat"),
}
S_SMALL = (10, 20, 50, 100)
# At S = 1000 (the costliest column) the rows E2 needs come first: DDIM and both DDPM references.
ROWS_1000 = ("eta=0", "eta=1", "sigma_hat (unclamped)", "sigma_hat (x0 clamped)", "eta=0.5", "eta=0.2")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = Path(tempfile.gettempdir()) / "table1_digits"


def cell_key(row: str, spacing: str, S: int) -> str:
    """The cell's name in the results file, e.g. "eta=0|uniform|10"."""
    return f"{row}|{spacing}|{S}"


def plan(phases, n_small: int, n_1000: int):
    """[(phase, chunk index, row, spacing, S)] in the order they run."""
    jobs = []
    for phase in phases:
        if phase == "uniform":
            cols, n = [("uniform", S) for S in S_SMALL], n_small
        elif phase == "t1000":
            cols, n = [("uniform", 1000)], n_1000
        elif phase == "quadratic":
            cols, n = [("quadratic", S) for S in S_SMALL], n_small
        else:
            raise SystemExit(f"unknown phase {phase!r}: use uniform, t1000, quadratic")
        if n % CHUNK:
            raise SystemExit(f"n = {n} must be a multiple of the chunk size {CHUNK}")
        for c in range(n // CHUNK):
            for spacing, S in cols:
                for row in (ROWS_1000 if S == 1000 else ROWS):
                    jobs.append((phase, c, row, spacing, S))
    return jobs


def latents(chunk: int) -> torch.Tensor:
    """Chunk ``chunk``'s latents x_T (CHUNK, 1, 8, 8), the same for every cell."""
    return torch.randn(CHUNK, 1, 8, 8, generator=torch.Generator().manual_seed(LATENT_SEED + chunk))


def run_chunk(model, schedule, row: str, spacing: str, S: int, chunk: int) -> torch.Tensor:
    """Samples (CHUNK, 1, 8, 8) of one chunk of one cell: the function the book re-runs live."""
    tau = dl.timesteps(schedule.T, S, spacing)
    return dl.sample(model, latents(chunk), schedule, tau,
                     generator=torch.Generator().manual_seed(NOISE_SEED + chunk), **ROWS[row])


def chunk_path(work: Path, row: str, spacing: str, S: int, chunk: int) -> Path:
    safe = hashlib.sha1(cell_key(row, spacing, S).encode()).hexdigest()[:12]
    return work / f"{safe}_{chunk}.pt"


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name == "table1_digits.py"


def git_commit() -> str:
    """HEAD's hash, with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "ddim_lib",
                                "scripts/table1_digits.py"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def generate(args) -> None:
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, schedule = dl.load_pretrained("digits")
    runs = work / "runs.json"
    log = json.loads(runs.read_text()) if runs.exists() else []
    log.append({"command": "python scripts/table1_digits.py " + " ".join(sys.argv[1:] if argv_is_cli() else []),
                "commit": git_commit(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "threads": args.threads, "torch": torch.__version__})
    runs.write_text(json.dumps(log, indent=1))
    jobs = plan(args.phases.split(","), args.n, args.n_1000)
    for i, (phase, c, row, spacing, S) in enumerate(jobs):
        path = chunk_path(work, row, spacing, S, c)
        if path.exists():
            continue
        wall, cpu = time.perf_counter(), time.process_time()
        x = run_chunk(model, schedule, row, spacing, S, c)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        torch.save({"key": cell_key(row, spacing, S), "chunk": c, "samples": x, "wall_s": wall,
                    "cpu_s": cpu, "threads": args.threads}, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        print(f"[{i + 1}/{len(jobs)}] {phase} chunk {c} {cell_key(row, spacing, S)}: {wall:.1f} s wall, "
              f"{cpu:.1f} s CPU", flush=True)
    print("generate: done", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--n", type=int, default=1000, help="samples per cell for S <= 100")
    g.add_argument("--n-1000", type=int, default=500, help="samples per cell at S = 1000")
    g.add_argument("--phases", default="uniform,t1000,quadratic")
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--work", default=str(DEFAULT_WORK), help="where raw samples go (never committed)")
    a = sub.add_parser("analyse")
    a.add_argument("--work", default=str(DEFAULT_WORK))
    a.add_argument("--out", default=str(REPO / "results" / "table1_digits.json"))
    a.add_argument("--boot", type=int, default=300)
    args = p.parse_args(argv)
    if args.cmd == "generate":
        generate(args)
    else:
        analyse(args)


def analyse(args) -> None:
    raise SystemExit("analyse: not written yet")


if __name__ == "__main__":
    main()
