"""Chapter 14's heavy part: how many model evaluations DPM-Solver++(2M) needs to match DDIM-50.

    python scripts/dpm_compare.py [--out results/dpm_compare.json] [--n-digits 1000] [--quick]

1. Oracle mixtures (exact eps*): the mean distance of x_0 to the exact solution of DDIM's ODE
   (eq. 14, scipy DOP853 at 1e-10, from t = 999 down to t = 0, then the common last step to
   alpha_bar = 1), for DDIM and DPM-Solver++(2M) on grids with both ends fixed (t = 999 and 0):
   "linspace" (uniform in t, rounded) and "logsnr" (uniform in lambda, rounded, repeats dropped).
2. The shipped digits UNet: the Frechet distance in the digits classifier's features (64-d) to all
   1797 digits, bootstrap s.e., n samples from the same latents, DDIM-50 (the book's uniform grid)
   against DPM-Solver++(2M) on the same uniform grid rule; the paired difference to DDIM-50 with
   its paired bootstrap s.e.

Writes a small JSON with a manifest (command, commit, seeds, n, CPU time). Single-threaded.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ddim_lib  # noqa: E402
from ddim_lib import GaussianMixture, NoiseSchedule, OracleEps, sample  # noqa: E402
from ddim_lib.dpm_solver import dpm_solver_pp_2m, logsnr_timesteps, mixture_ode_x0  # noqa: E402

MIXTURES = {"ring8 (std 0.3)": dict(k=8, radius=2.0, std=0.3), "ring8 (std 0.1)": dict(k=8, radius=2.0, std=0.1)}
S_ORACLE = [5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50]
S_DIGITS = [5, 6, 8, 10, 15, 20]
S_DIGITS_LOGSNR = [10, 15, 20]
T_START = 999


def grid(schedule: NoiseSchedule, S: int, spacing: str, t_start: int = T_START) -> list[int]:
    """An increasing grid from 0 to t_start with S points: uniform in t (rounded), or uniform in lambda."""
    if spacing == "linspace":
        return sorted({int(round(v)) for v in np.linspace(0, t_start, S)})
    return logsnr_timesteps(schedule, S, t_start)


def oracle_part(n: int, s_grid: list[int], seed: int = 0) -> dict:
    torch.set_default_dtype(torch.float64)
    schedule = NoiseSchedule.linear(1000)
    out = {}
    for name, kw in MIXTURES.items():
        mix = GaussianMixture.ring(**kw)
        oracle = OracleEps(mix, schedule)
        x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        ref = mixture_ode_x0(mix, schedule, x_T, T_START)
        rows = []
        for spacing in ("linspace", "logsnr"):
            for S in s_grid:
                tau = grid(schedule, S, spacing)
                for method, fn in (("ddim", lambda tau: sample(oracle, x_T, schedule, tau)),
                                   ("dpm++2m", lambda tau: dpm_solver_pp_2m(oracle, x_T, schedule, tau)),
                                   ("dpm++2m, lower_order_final=False",
                                    lambda tau: dpm_solver_pp_2m(oracle, x_T, schedule, tau, lower_order_final=False))):
                    err = (fn(tau) - ref).norm(dim=1).numpy()
                    rows.append({"method": method, "spacing": spacing, "S": S, "nfe": len(tau),
                                 "mean_error": float(err.mean()), "se": float(err.std(ddof=1) / math.sqrt(n))})
        out[name] = {"mixture": kw, "n": n, "seed": seed, "rows": rows, "match": _match(rows)}
    torch.set_default_dtype(torch.float32)
    return out


def _match(rows: list[dict]) -> dict:
    """Per spacing: the fewest evaluations at which DPM-Solver++(2M)'s mean error is at most DDIM-50's
    (DDIM-50 on the linspace grid: the reference quality)."""
    ref = next(r for r in rows if r["method"] == "ddim" and r["spacing"] == "linspace" and r["S"] == 50)
    out = {"ddim50": ref}
    for spacing in ("linspace", "logsnr"):
        ok = [r for r in rows if r["method"] == "dpm++2m" and r["spacing"] == spacing
              and r["mean_error"] <= ref["mean_error"]]
        out[spacing] = min(ok, key=lambda r: r["nfe"]) if ok else None
    return out


def digits_part(n: int, s_grid: list[int], seed: int = 2, n_boot: int = 200) -> dict:
    from ddim_lib.evaluate import DigitsFeatures, digits_split

    model, schedule = ddim_lib.load_pretrained("digits")
    model.eval()
    features = DigitsFeatures()
    x_train, x_test, _, _ = digits_split()
    real = features(torch.cat([x_train, x_test]))
    x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))

    def run(fn):
        start = time.process_time()
        feats = np.concatenate([features(fn(x_T[i:i + 250]).clamp(-1, 1)) for i in range(0, n, 250)])
        return feats, time.process_time() - start

    cells = {}
    feats, cpu = run(lambda x: sample(model, x, schedule, 50))
    cells["ddim-50"] = feats
    rows = [{"method": "ddim", "spacing": "uniform", "S": 50, "nfe": 50, "cpu_s": cpu}]
    for S in s_grid:
        feats, cpu = run(lambda x: dpm_solver_pp_2m(model, x, schedule, S))
        cells[f"dpm-{S}"] = feats
        rows.append({"method": "dpm++2m", "spacing": "uniform", "S": S, "nfe": S, "cpu_s": cpu})
    for S in (10, 20):
        feats, cpu = run(lambda x: sample(model, x, schedule, S))
        cells[f"ddim-{S}"] = feats
        rows.append({"method": "ddim", "spacing": "uniform", "S": S, "nfe": S, "cpu_s": cpu})
    for S in (10,)[: len(s_grid)]:                # Algorithm 2 as written: eq. 3 also on the step into t = 0
        feats, cpu = run(lambda x: dpm_solver_pp_2m(model, x, schedule, S, lower_order_final=False))
        cells[f"dpm-nolof-{S}"] = feats
        rows.append({"method": "dpm++2m, lower_order_final=False", "spacing": "uniform", "S": S, "nfe": S, "cpu_s": cpu})
    for S in S_DIGITS_LOGSNR[: len(s_grid)]:      # the same solver on a grid uniform in lambda (999 to 0)
        tau = grid(schedule, S, "logsnr")
        feats, cpu = run(lambda x: dpm_solver_pp_2m(model, x, schedule, tau))
        cells[f"dpm-logsnr-{S}"] = feats
        rows.append({"method": "dpm++2m", "spacing": "logsnr", "S": S, "nfe": len(tau), "cpu_s": cpu})

    np.savez("/tmp/dpm_compare_digits_features.npz", real=real, **cells)     # in case the statistics fail
    return {**digits_statistics(real, cells, rows, n_boot), "n": n, "seed": seed, "weights_sha256": weights_sha256()}


def weights_sha256() -> dict:
    """SHA-256 of the shipped weights measured here: the digits UNet and the digits classifier."""
    import hashlib

    root = ROOT / "ddim_lib" / "pretrained"
    return {f"{d}/model.safetensors": hashlib.sha256((root / d / "model.safetensors").read_bytes()).hexdigest()
            for d in ("digits", "digits_classifier")}


def digits_statistics(real: np.ndarray, cells: dict, rows: list[dict], n_boot: int) -> dict:
    """FD of each cell to the real features with bootstrap s.e., its paired difference to DDIM-50, the floor."""
    from ddim_lib.evaluate import FrechetReference
    from ddim_lib.metrics import frechet_floor, frechet_with_se, paired_bootstrap

    fd = FrechetReference(real)
    for row, feats in zip(rows, cells.values()):
        row["fd"], row["se"] = frechet_with_se(feats, fd, n_boot=n_boot)
        row["diff_vs_ddim50"], row["diff_se"] = paired_bootstrap(fd, feats, cells["ddim-50"], n_boot=n_boot)
    floor = frechet_floor(real, len(next(iter(cells.values()))))
    ref = rows[0]
    # matched: the fewest NFE whose FD is at most DDIM-50's plus two paired s.e. of the difference
    # (not resolvably worse), and the fewest whose FD is not above DDIM-50's at all
    match = {}
    for spacing in ("uniform", "logsnr"):
        dpm = [r for r in rows if r["method"] == "dpm++2m" and r["spacing"] == spacing]
        match[spacing] = {"not_resolvably_worse": min((r["nfe"] for r in dpm if r["diff_vs_ddim50"] <= 2 * r["diff_se"]), default=None),
                          "at_most": min((r["nfe"] for r in dpm if r["diff_vs_ddim50"] <= 0), default=None)}
    return {"n_boot": n_boot, "features": "digits classifier (64-d), samples clamped to [-1, 1]",
            "reference": "all 1797 digits", "floor": {"mean": floor[0], "sd": floor[1]}, "rows": rows,
            "ddim50_fd": ref["fd"], "match": match}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "dpm_compare.json"))
    p.add_argument("--n-oracle", type=int, default=2000)
    p.add_argument("--n-digits", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="tiny sizes (checks the code path)")
    p.add_argument("--skip-digits", action="store_true")
    p.add_argument("--skip-oracle", action="store_true")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge the parts of several runs into --out and exit")
    args = p.parse_args(argv)
    if args.merge:      # the oracle and digits parts run as two processes; one file with both manifests
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        merged = {k: v for part in parts for k, v in part.items() if k != "manifest"}
        merged["manifest"] = {"parts": [part["manifest"] for part in parts],
                              "cpu_seconds": round(sum(part["manifest"]["cpu_seconds"] for part in parts), 1)}
        merged["manifest"].update({k: parts[0]["manifest"][k] for k in ("commit", "seeds", "threads", "torch")})
        merged["manifest"]["command"] = " && ".join(part["manifest"]["command"] for part in parts)
        merged["manifest"]["n_oracle"] = next(q["manifest"]["n_oracle"] for q in parts if "oracle" in q)
        merged["manifest"]["n_digits"] = next(q["manifest"]["n_digits"] for q in parts if "digits" in q)
        Path(args.out).write_text(json.dumps(merged, indent=1) + "\n")
        return 0
    torch.set_num_threads(1)
    start, wall = time.process_time(), time.time()
    n_oracle, n_digits = (64, 250) if args.quick else (args.n_oracle, args.n_digits)
    result = {}
    if not args.skip_oracle:
        result["oracle"] = oracle_part(n_oracle, S_ORACLE[:3] + [50] if args.quick else S_ORACLE)
    if not args.skip_digits:
        result["digits"] = digits_part(n_digits, S_DIGITS[:2] if args.quick else S_DIGITS,
                                       n_boot=20 if args.quick else 200)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    result["manifest"] = {"command": "python scripts/dpm_compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                          "commit": commit, "seeds": {"oracle_latents": 0, "digits_latents": 2, "bootstrap": 0},
                          "n_oracle": n_oracle, "n_digits": n_digits, "cpu_seconds": round(time.process_time() - start, 1),
                          "wall_seconds": round(time.time() - wall, 1), "threads": 1, "torch": torch.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["manifest"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
