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

from ddim_lib.table1 import (CHUNK, LATENT_SEED, NOISE_SEED, ROWS, S_SMALL, cell_key, fingerprint,
                             run_chunk)

# At S = 1000 (the costliest column) the rows E2 needs come first: DDIM and both DDPM references.
ROWS_1000 = ("eta=0", "eta=1", "sigma_hat (unclamped)", "sigma_hat (x0 clamped)", "eta=0.5", "eta=0.2")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = Path(tempfile.gettempdir()) / "table1_digits"


def plan(phases, n_small: int, n_1000: int, first_chunk: int = 0, rows=None):
    """[(phase, chunk index, row, spacing, S)] in the order they run (chunks from ``first_chunk`` on,
    so that several processes can share a phase)."""
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
        for c in range(first_chunk, n // CHUNK):
            for spacing, S in cols:
                for row in (ROWS_1000 if S == 1000 else ROWS):
                    if rows is not None and row not in rows:
                        continue
                    jobs.append((phase, c, row, spacing, S))
    return jobs


def chunk_path(work: Path, row: str, spacing: str, S: int, chunk: int) -> Path:
    safe = hashlib.sha1(cell_key(row, spacing, S).encode()).hexdigest()[:12]
    return work / f"{safe}_{chunk}.pt"


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name == "table1_digits.py"


def public_args(argv: list) -> list:
    """The command line without the values of --out and --work (machine paths stay out of the results)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--out", "--work"):
            skip = True
        elif not a.startswith(("--out=", "--work=")):
            out.append(a)
    return out


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
    # One record per generate run, in its own file (several processes may run at once).
    record = {"command": "python scripts/table1_digits.py " + " ".join(public_args(sys.argv[1:] if argv_is_cli() else [])),
              "commit": git_commit(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "threads": args.threads, "torch": torch.__version__}
    (work / f"run_{time.time_ns()}_{os.getpid()}.json").write_text(json.dumps(record))
    rows = None if args.rows is None else args.rows.split(";")
    if rows is not None and set(rows) - set(ROWS):
        raise SystemExit(f"unknown rows {sorted(set(rows) - set(ROWS))}; rows: {'; '.join(ROWS)}")
    jobs = plan(args.phases.split(","), args.n, args.n_1000, args.first_chunk, rows)
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
    g.add_argument("--first-chunk", type=int, default=0, help="start at this chunk (parallel runs)")
    g.add_argument("--rows", default=None, help="only these rows, separated by ';' (parallel runs)")
    g.add_argument("--work", default=str(DEFAULT_WORK), help="where raw samples go (never committed)")
    a = sub.add_parser("analyse")
    a.add_argument("--work", default=str(DEFAULT_WORK))
    a.add_argument("--out", default=str(REPO / "results" / "table1_digits.json"))
    a.add_argument("--boot", type=int, default=200)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--boot-e2", type=int, default=800, help="bootstrap replicates of each E2 ratio")
    a.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.cmd == "generate":
        generate(args)
    else:
        analyse(args)


# ---- analysis -------------------------------------------------------------------------------------
Z_RESOLVED = 3.0          # an ordering is "resolved" when the paired difference exceeds 3 standard errors
PR_K = 3                  # k of the k-NN manifolds (Kynkaanniemi et al. 2019)
QS = (0.1, 0.5, 0.9)      # nearest-neighbour distance quantiles


def load_chunks(work: Path) -> dict:
    """{cell key: {"raw", "samples" (clamped to [-1, 1]): (n, 1, 8, 8), "wall_s", "cpu_s", "n"}} from the
    contiguous chunks 0, 1, ... of each cell."""
    found: dict = {}
    for f in sorted(work.glob("*.pt")):
        d = torch.load(f)
        found.setdefault(d["key"], {})[d["chunk"]] = d
    cells = {}
    for key, chunks in found.items():
        c = 0
        while c in chunks:
            c += 1
        if c == 0:
            continue
        parts = [chunks[i] for i in range(c)]
        cells[key] = {"raw": torch.cat([p["samples"] for p in parts]), "n": c * CHUNK,
                      "wall_s": sum(p["wall_s"] for p in parts), "cpu_s": sum(p["cpu_s"] for p in parts)}
        # Measured as images are saved (the official code clamps to the data range before writing
        # PNGs, from which FID is computed); the fingerprint is of the raw samples.
        cells[key]["samples"] = cells[key]["raw"].clamp(-1, 1)
    return cells


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pair(v) -> list:
    return [float(v[0]), float(v[1])]


def joint_fd(feats: dict, ref, n: int, n_boot: int, rng) -> tuple[dict, dict]:
    """FD of each cell's first n rows, and its bootstrap replicates with the SAME row indices in every
    cell (the cells share their latents), so differences between cells get paired errors. Cells are
    grouped by column kind and n, so every cell is measured at its full n."""
    keys = list(feats)
    values = {k: ref(feats[k][:n]) for k in keys}
    boot = {k: np.empty(n_boot) for k in keys}
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        for k in keys:
            boot[k][b] = ref(feats[k][idx])
    return values, boot


def verdict(diff: float, se: float) -> str:
    if not np.isfinite(se) or se == 0:
        return "exact" if diff == 0 else "resolved"
    return "resolved" if abs(diff) >= Z_RESOLVED * se else "not resolved"


def analyse(args) -> None:
    from ddim_lib import metrics
    from ddim_lib.evaluate import DIGITS_CLASSIFIER_DIR, DigitsFeatures, FrechetReference
    from ddim_lib.pretrained import pretrained_path

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    t_start = time.process_time()
    def sub_rng(*names) -> np.random.Generator:
        """A generator per use (cell, group, pair), so results do not depend on the cache or on order."""
        return np.random.default_rng([args.seed] + [int(hashlib.sha1(str(n).encode()).hexdigest()[:8], 16)
                                                     for n in names])
    cells = load_chunks(work)
    if not cells:
        raise SystemExit("analyse: no chunks found; run generate first")
    real = dl.load_dataset("digits")
    classifier = DigitsFeatures()
    real_feats = classifier(real)
    real_flat = real.reshape(len(real), -1).double().numpy()
    ref = FrechetReference(real_feats)
    feats = {k: classifier(c["samples"]) for k, c in cells.items()}
    # KID's cubic kernel (x.y / d + 1)^3 expects features of O(1) per coordinate (Inception's are);
    # the classifier's are ~5, so KID runs on features divided by the real digits' RMS feature
    # (one constant: a common rescaling changes KID's unit, not which laws it tells apart).
    kid_scale = float(np.sqrt(np.mean(real_feats**2)))
    real_k = real_feats / kid_scale

    def parse(key):
        row, spacing, S = key.split("|")
        return row, spacing, int(S)

    # Per-cell measures depend only on the cell's samples: cached by (cell, n, chunk digest), so that
    # analysing a grown grid re-measures only the cells that changed.
    cache_file = work / "measures_cache.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    out_cells = {}
    for key, c in cells.items():
        row, spacing, S = parse(key)
        tag = f"{key}|{c['n']}|{hashlib.sha1(c['raw'].numpy().tobytes()).hexdigest()[:16]}|{PR_K}|{kid_scale:.12g}"
        if tag in cache:
            out_cells[key] = dict(cache[tag])
            continue
        kid_v = metrics.kid(feats[key] / kid_scale, real_k)
        pr = metrics.precision_recall(real_feats, feats[key], k=PR_K, blocks=10)
        nn = metrics.nearest_neighbour_distances(c["samples"], real_flat)
        q = metrics.quantiles_with_se(nn, QS, rng=sub_rng("nn", key))
        out_cells[key] = {
            "row": row, "spacing": spacing, "S": S, "n": c["n"],
            "wall_s": round(c["wall_s"], 2), "cpu_s": round(c["cpu_s"], 2),
            "cpu_ms_per_sample": round(1e3 * c["cpu_s"] / c["n"], 4),
            "wall_ms_per_sample": round(1e3 * c["wall_s"] / c["n"], 4),
            "kid": pair(kid_v), "precision": [pr["precision"], pr["precision_se"]],
            "recall": [pr["recall"], pr["recall_se"]],
            "nn_quantiles": {str(k): pair(v) for k, v in q.items()},
            "nn_mean": [float(nn.mean()), float(nn.std(ddof=1) / np.sqrt(len(nn)))],
            "fingerprint": fingerprint(c["raw"]),
            # Chunk 0 alone (what tests/test_results_table1.py regenerates and re-measures).
            "chunk0": {"n": CHUNK, "fd": ref(feats[key][:CHUNK]),
                       "kid": pair(metrics.kid(feats[key][:CHUNK] / kid_scale, real_k)),
                       "precision": metrics.precision_recall(real_feats, feats[key][:CHUNK], k=PR_K, blocks=2)["precision"]},
        }
        cache[tag] = out_cells[key]
        cache_file.write_text(json.dumps(cache))
        print(f"measured {key} (n = {c['n']})", flush=True)

    # Frechet distances: one joint bootstrap per group of cells with a common n (paired errors).
    groups: dict = {}
    for key in cells:
        row, spacing, S = parse(key)
        groups.setdefault(("t1000" if S == 1000 else spacing, cells[key]["n"]), []).append(key)
    comparisons = []
    boots = {}
    for gname, keys in groups.items():
        n = min(cells[k]["n"] for k in keys)
        values, boot = joint_fd({k: feats[k] for k in keys}, ref, n, args.boot, sub_rng("group", *gname))
        for k in keys:
            out_cells[k]["fd"] = [values[k], float(boot[k].std(ddof=1))]
            out_cells[k]["fd_n"] = n
        boots[gname] = (n, values, boot)

    def compare(ka, kb, what):
        """FD and KID of cell a minus cell b on their common first n rows, paired errors."""
        n = min(cells[ka]["n"], cells[kb]["n"])
        ga = ("t1000" if parse(ka)[2] == 1000 else parse(ka)[1], cells[ka]["n"])
        gb = ("t1000" if parse(kb)[2] == 1000 else parse(kb)[1], cells[kb]["n"])
        if ga == gb:
            _, values, boot = boots[ga]
            fd = (values[ka] - values[kb], float((boot[ka] - boot[kb]).std(ddof=1)))
        else:
            fd = metrics.paired_bootstrap(ref, feats[ka][:n], feats[kb][:n], n_boot=args.boot, rng=sub_rng("pair", ka, kb))
        kd = metrics.kid_difference(feats[ka][:n] / kid_scale, feats[kb][:n] / kid_scale, real_k)
        comparisons.append({"a": ka, "b": kb, "what": what, "n": n,
                            "fd_diff": pair(fd), "fd_verdict": verdict(*fd),
                            "kid_diff": pair(kd), "kid_verdict": verdict(*kd)})

    rows = list(ROWS)
    for spacing in ("uniform", "quadratic"):
        for S in S_SMALL + ((1000,) if spacing == "uniform" else ()):
            present = [r for r in rows if cell_key(r, spacing, S) in cells]
            for i, ra in enumerate(present):
                for rb in present[i + 1:]:
                    compare(cell_key(ra, spacing, S), cell_key(rb, spacing, S), "rows")
        for r in rows:
            present = [S for S in S_SMALL + (1000,) if cell_key(r, spacing, S) in cells]
            for Sa, Sb in zip(present, present[1:]):
                compare(cell_key(r, spacing, Sa), cell_key(r, spacing, Sb), "steps")
            if 10 in present and 100 in present:
                compare(cell_key(r, spacing, 10), cell_key(r, spacing, 100), "steps")
    for r in rows:
        for S in S_SMALL:
            if cell_key(r, "uniform", S) in cells and cell_key(r, "quadratic", S) in cells:
                compare(cell_key(r, "quadratic", S), cell_key(r, "uniform", S), "spacing")

    # E2 by the ledger's criterion: DDIM's FD within 10% of DDPM-1000's, at equal n, paired.
    e2 = {}
    for ref_row in ("eta=1", "sigma_hat (unclamped)", "sigma_hat (x0 clamped)"):
        kref = cell_key(ref_row, "uniform", 1000)
        if kref not in cells:
            continue
        entries = {}
        for spacing in ("uniform", "quadratic"):
            for S in S_SMALL + ((1000,) if spacing == "uniform" else ()):
                k = cell_key("eta=0", spacing, S)
                if k not in cells:
                    continue
                n = min(cells[k]["n"], cells[kref]["n"])
                fa, fb = feats[k][:n], feats[kref][:n]
                # The ratio of two Frechet distances is skewed at small n: a percentile interval from
                # a paired bootstrap, at the 3-sigma-equivalent levels (0.135% and 99.865%).
                boot = np.empty(args.boot_e2)
                rng = sub_rng("e2", k, kref)
                for b in range(args.boot_e2):
                    idx = rng.integers(0, n, n)
                    boot[b] = ref(fa[idx]) / ref(fb[idx])
                lo, hi = (float(v) for v in np.percentile(boot, [0.135, 99.865]))
                r = ref(fa) / ref(fb)
                status = "holds" if hi <= 1.1 else "fails" if lo > 1.1 else "not resolved"
                entries[k] = {"n": n, "fd_ddim": ref(fa), "fd_ref": ref(fb), "ratio": [r, lo, hi], "within_10pct": status,
                              "cpu_speedup": cells[kref]["cpu_s"] / cells[kref]["n"] / (cells[k]["cpu_s"] / cells[k]["n"]),
                              "wall_speedup": cells[kref]["wall_s"] / cells[kref]["n"] / (cells[k]["wall_s"] / cells[k]["n"])}
        e2[kref] = entries

    # Floors: what the data's own law scores at the same n, and real digits' own nearest neighbours.
    ns = sorted({v["fd_n"] for v in out_cells.values()})
    floors = {"fd": {str(n): list(metrics.frechet_floor(real_feats, n, draws=50, rng=sub_rng("floor", n))) for n in ns}}
    perm = sub_rng("halves").permutation(len(real_feats))
    half_a, half_b = real_feats[perm[: len(perm) // 2]], real_feats[perm[len(perm) // 2:]]
    pr = metrics.precision_recall(half_a, half_b, k=PR_K)
    floors["precision_recall_halves"] = {"n": [len(half_a), len(half_b)], "precision": [pr["precision"], pr["precision_se"]],
                                         "recall": [pr["recall"], pr["recall_se"]]}
    floors["kid_halves"] = pair(metrics.kid(half_b / kid_scale, half_a / kid_scale))
    nn_real = metrics.nearest_neighbour_distances(real_flat, real_flat, exclude_self=True)
    floors["nn_real_leave_one_out"] = {str(k): pair(v) for k, v in metrics.quantiles_with_se(nn_real, QS, rng=sub_rng("nn_real")).items()}

    runs = json.loads((work / "runs.json").read_text()) if (work / "runs.json").exists() else []
    runs += [json.loads(f.read_text()) for f in sorted(work.glob("run_*.json"))]
    model_dir = pretrained_path("digits")
    model_manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest = {
        "script": "scripts/table1_digits.py",
        "generate_runs": runs,
        "analyse_command": "python scripts/table1_digits.py analyse " + " ".join(public_args(sys.argv[2:] if argv_is_cli() else [])),
        "analyse_commit": git_commit(),
        "analysed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seeds": {"latent_seed": LATENT_SEED, "noise_seed": NOISE_SEED, "chunk": CHUNK,
                  "rule": "chunk c: latents torch.randn(CHUNK, 1, 8, 8) with seed latent_seed + c; sampling noise "
                          "from a torch.Generator seeded noise_seed + c", "analysis_seed": args.seed},
        "n_boot": args.boot, "n_boot_e2": args.boot_e2, "z_resolved": Z_RESOLVED, "pr_k": PR_K, "kid_feature_scale": kid_scale,
        "cpu_s_generate": round(sum(c["cpu_s"] for c in cells.values()), 1),
        "wall_s_generate": round(sum(c["wall_s"] for c in cells.values()), 1),
        "cpu_s_analyse": round(time.process_time() - t_start, 1),
        "sample_steps": int(sum(c["n"] * parse(k)[2] for k, c in cells.items())),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "torch_threads": runs[-1]["threads"] if runs else None,
                    "note": "2-core machine shared by about 9 concurrent jobs: wall times include waiting; "
                            "CPU times are the process's own"},
        "model": {"name": "digits", "sha256": sha256(model_dir / "model.safetensors"),
                  "training_steps": model_manifest.get("step")},
        "features": {"name": "DigitsFeatures (64-d penultimate layer)",
                     "sha256": sha256(DIGITS_CLASSIFIER_DIR / "model.safetensors")},
        "reference": {"data": "all 1797 scikit-learn digits, scaled to [-1, 1]", "n": len(real)},
    }
    result = {"manifest": manifest, "cells": dict(sorted(out_cells.items())), "comparisons": comparisons,
              "e2": e2, "floors": floors}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"analyse: {len(out_cells)} cells, {len(comparisons)} comparisons, "
          f"{manifest['cpu_s_analyse']:.0f} s CPU", flush=True)


if __name__ == "__main__":
    main()
