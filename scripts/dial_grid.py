"""The controlled experiment of chapter 6: Table 1's grid with a denoiser whose error is dialled.

For each data law (chapter 6's ring and 16-D cube), each error level c, each S and each sampler
(eta in {0, 0.2, 0.5, 1} and sigma_hat), draw n samples with ``DialledEps`` (exact eps* + c e, per-t
error c^2 per dimension) and measure the unbiased MMD^2 to the exact law with jackknife replicates.
Latents and sampler noise are seeded per (law, S, chunk), the same for every c and sampler, so all
comparisons are paired. Also measures the shipped digits UNet's per-t error against the exact
denoiser of the digits kernel mixture, to place it on the same c scale.

Resumable: results are written after every (law, c, S) and finished cells are skipped.

    OMP_NUM_THREADS=1 nohup nice -n 10 python scripts/dial_grid.py --out results/dial_grid.json &
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import ddim_lib as dl
from ddim_lib.dial import (GRID_SAMPLERS as SAMPLERS, DialledEps, bandwidth, fingerprint, grid_chunks as chunk_plan,
                           grid_key as key, grid_samples as run_cell, mmd2, per_t_error, seed_for, table1_laws)

C_VALUES = (0.0, 1.0, 0.3, 0.1, 0.5, 0.2, 0.05, 0.7)      # run order: the ends first
STEPS = (10, 20, 50, 100)
UNET_TS = (5, 20, 50, 100, 200, 400, 600, 800, 950)
KERNEL_STD = 0.05


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ddim_lib", "scripts/dial_grid.py"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def source_hash() -> str:
    h = hashlib.sha256()
    for f in ("ddim_lib/dial.py", "ddim_lib/sampler.py", "ddim_lib/toy.py", "scripts/dial_grid.py"):
        h.update(Path(dl.__file__).resolve().parent.parent.joinpath(f).read_bytes())
    return h.hexdigest()[:16]


def merge(out: Path, others: list[Path]):
    """Fold the cells (and the UNet's error) of other results files into ``out``; cells already there
    win. The manifest lists every contributing command and commit; its CPU time is the sum over the
    shipped cells plus the UNet measurement (work repeated by interrupted runs is not counted)."""
    data = json.loads(out.read_text())
    m = data["manifest"]
    commands = set(m.get("commands", []) + ([m["command"] + f"  [--out {out.name}]"] if "command" in m else []))
    commits = {m.get("commit", "unknown")}
    unet_cpu = 0.0
    for other in others:
        extra = json.loads(other.read_text())
        for k, cell in extra["cells"].items():
            data["cells"].setdefault(k, cell)
        if "unet_error" in extra and "unet_error" not in data:
            data["unet_error"] = extra["unet_error"]
            unet_cpu = extra["manifest"].get("cpu_seconds", 0.0) - sum(c["cpu_seconds"] for c in extra["cells"].values())
        commands |= {c + f"  [--out {other.name}, folded in]" for c in extra["manifest"].get("commands", [])}
        commits.add(extra["manifest"].get("commit", "unknown"))
    groups = {}
    for cell in data["cells"].values():
        groups.setdefault((cell["law"], cell["c"], cell["S"]), set()).add(cell["n"])
    mixed = {g: n for g, n in groups.items() if len(n) > 1}
    if mixed:
        raise ValueError(f"cells of one (law, c, S) differ in n, so they are not paired: {mixed}")
    m.pop("command", None)
    m.pop("chunks", None)
    m.update({"commands": sorted(commands), "commits": sorted(commits),
              "n": "per cell (cells[...]['n']); the jackknife groups are the chunks",
              "chunk_size": {str(S): chunk_plan(S)[0] for S in STEPS + (1000,)},
              "cpu_seconds": sum(c["cpu_seconds"] for c in data["cells"].values()) + unet_cpu,
              "note": "run as several resumable processes in parallel on a shared 2-core machine "
                      "(nice 10); wall time is not meaningful there, CPU time is per process"})
    m.setdefault("commit", sorted(commits)[0])
    out.write_text(json.dumps(data, indent=1))
    print(f"{len(data['cells'])} cells in {out.name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/dial_grid.json")
    parser.add_argument("--c", type=float, nargs="*", default=list(C_VALUES))
    parser.add_argument("--chunks", type=int, default=None,
                        help="chunks per cell for S <= 100 (default: grid_chunks(S); chunk k is the same whatever the count)")
    parser.add_argument("--chunks-1000", type=int, default=None, help="chunks per cell for S = 1000")
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="only these S")
    parser.add_argument("--laws", nargs="*", default=None, help="only these laws (ring, cube)")
    parser.add_argument("--no-unet", action="store_true", help="skip the digits UNet's per-t error")
    parser.add_argument("--merge", nargs="*", default=[],
                        help="fold finished results files (run in parallel with other --c) into --out, then stop")
    args = parser.parse_args()
    if args.merge:
        merge(Path(args.out), [Path(f) for f in args.merge])
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    cells = data.setdefault("cells", {})
    manifest = data.setdefault("manifest", {})
    manifest.update({
        "commands": sorted(set(manifest.get("commands", []) + [
            "OMP_NUM_THREADS=1 nice -n 10 python scripts/dial_grid.py " + " ".join(sys.argv[1:])])),
        "commit": git_commit(), "source_sha256_16": source_hash(), "machine": machine(),
        "seeds": "x_T: seed_for('xT', law, S, chunk); sampler noise: seed_for('noise', law, S, chunk) "
                 "(ddim_lib.dial.seed_for); the same for every c and sampler",
        "chunk_size": {str(S): chunk_plan(S)[0] for S in STEPS + (1000,)},
        "n": "per cell (cells[...]['n']); the jackknife groups are the chunks",
        "field": "RandomFeatureField(d, n_features=128, length_scale=1.0, seed=0)",
        "bandwidth": "0.1 * sqrt(2 d)", "schedule": "linear, T = 1000", "spacing": "uniform",
        "kernel_std": KERNEL_STD,
    })
    manifest.setdefault("cpu_seconds", 0.0)
    schedule = dl.NoiseSchedule.linear(T=1000)

    def save():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(out)

    priority = ["eta = 0.0", "eta = 1.0", "eta = 0.5", "eta = 0.2", "sigma_hat"]   # the flip needs the first two
    assert sorted(priority) == sorted(SAMPLERS)
    for c in args.c:
        for name, mixture in table1_laws().items():
            if args.laws and name not in args.laws:
                continue
            ell = bandwidth(mixture)
            model = DialledEps(mixture, schedule, c)
            for sampler in priority:
                for S in STEPS + ((1000,) if c == 0 else ()):
                    if key(name, c, S, sampler) in cells or (args.steps and S not in args.steps):
                        continue
                    start, wall = time.process_time(), time.perf_counter()
                    chunks = (args.chunks_1000 if S == 1000 else args.chunks) or chunk_plan(S)[1]
                    x = run_cell(model, name, mixture, schedule, S, sampler, chunks=chunks)
                    value, left_out, within = mmd2(x, mixture, ell, groups=chunks)
                    cpu = time.process_time() - start
                    cells[key(name, c, S, sampler)] = {
                        "law": name, "c": c, "S": S, "sampler": sampler, "n": x.shape[0], "value": value,
                        "left_out": left_out.tolist(), "within": within.tolist(),
                        "fingerprint": fingerprint(x), "cpu_seconds": cpu}
                    manifest["cpu_seconds"] += cpu
                    print(f"{key(name, c, S, sampler)}: {1e3 * value:.4f} x 1e-3 ({cpu:.0f} s cpu, "
                          f"{time.perf_counter() - wall:.0f} s wall)", flush=True)
                    save()
    if "unet_error" not in data and not args.no_unet:
        start = time.process_time()
        digits = dl.load_dataset("digits")
        unet, unet_schedule = dl.load_pretrained("digits")
        law = dl.GaussianMixture(digits.reshape(-1, 64).double(), KERNEL_STD)
        gen = torch.Generator().manual_seed(seed_for("unet_error"))
        err = per_t_error(unet, dl.OracleEps(law, unet_schedule), law, unet_schedule, UNET_TS, 512, gen,
                          shape=(1, 8, 8), batch=64)
        data["unet_error"] = {"kernel_std": KERNEL_STD, "n": 512, "per_t": {str(t): list(v) for t, v in err.items()}}
        manifest["cpu_seconds"] += time.process_time() - start
        save()
        print("unet error", err, flush=True)

    manifest["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    save()


if __name__ == "__main__":
    main()
