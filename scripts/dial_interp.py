"""Chapter 10's E4 measured: how plausible are decoded slerp and lerp interpolants?

64 latent pairs z0, z1 ~ N(0, I_64) (seed 2), points lambda in {0, 0.25, 0.5, 0.75, 1} on the slerp and
the lerp path (the ends are shared), each decoded by the shipped digits UNet with eta = 0, S = 50, and
scored with ``ddim_lib.dial.plausibility`` against the 1797 real digits: classifier confidence,
nearest-neighbour RMS pixel distance, k-NN precision indicator (k = 3). Writes per-image scores and a
manifest to results/dial_interp.json.

    OMP_NUM_THREADS=1 nohup nice -n 10 python scripts/dial_interp.py &
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

import ddim_lib as dl
from ddim_lib.dial import interpolation_latents, plausibility

LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/dial_interp.json")
    parser.add_argument("--pairs", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.process_time()
    unet, schedule = dl.load_pretrained("digits")
    digits = dl.load_dataset("digits")
    paths = interpolation_latents(args.pairs, LAMBDAS)                     # {"slerp", "lerp"}: (L, P, 64)
    scores = {}
    for kind, latents in paths.items():
        L, P = latents.shape[:2]
        images = dl.sample(unet, latents.reshape(L * P, 1, 8, 8).float(), schedule, 50).reshape(L, P, 1, 8, 8)
        per = plausibility(images.reshape(L * P, 1, 8, 8), digits)
        scores[kind] = {k: v.reshape(L, P).tolist() for k, v in per.items()}
        print(kind, {k: v.reshape(L, P).mean(1).round(3).tolist() for k, v in per.items()}, flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    manifest = {"command": "OMP_NUM_THREADS=1 nice -n 10 python scripts/dial_interp.py", "commit": commit,
                "seeds": "latents: ddim_lib.dial.interpolation_latents (torch seed 2)", "pairs": args.pairs,
                "lambdas": list(LAMBDAS), "decoder": "shipped digits UNet, eta = 0, S = 50 (uniform)",
                "cpu_seconds": time.process_time() - start,
                "machine": {"platform": platform.platform(), "torch": torch.__version__}}
    Path(args.out).write_text(json.dumps({"manifest": manifest, "scores": scores}, indent=1))


if __name__ == "__main__":
    main()
