"""Copy a trained checkpoint into ``ddim_lib/pretrained/<name>/`` with its quality metrics.

    python scripts/ship_pretrained.py RUN_DIR NAME [--steps 20,50] [--n 500]

Ships only what sampling needs: ``model.safetensors`` (the EMA weights) and ``manifest.json`` (no
raw weights, no optimizer state). The metrics come from ``ddim evaluate`` itself, run once per S in
``--steps`` (DDIM, eta = 0, uniform tau, seed 0): the Frechet distance of n samples to n real points
beside the distance between two disjoint real halves of n, in pixel space (and digits-classifier
features for the digits). The exact ``ddim evaluate`` commands are recorded in the manifest.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from ddim_lib.checkpoint import MODEL_FILE, find_checkpoint, load_checkpoint
from ddim_lib.cli import main as ddim
from ddim_lib.pretrained import PRETRAINED_DIR


def evaluate(run: Path, steps: int, n: int) -> tuple[dict, str]:
    """``ddim evaluate`` on the run: (its JSON report, the command)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "fd.json"
        argv = ["evaluate", "--checkpoint", str(run), "--steps", str(steps), "--n", str(n), "--seed", "0",
                "--device", "cpu", "--json", str(report)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if ddim(argv) != 0:
                sys.exit(f"ddim evaluate failed on {run}")
        print(out.getvalue(), end="")
        command = shlex.join(["ddim", *argv[:-2]])       # the temporary --json path is not part of it
        return json.loads(report.read_text()), command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="checkpoint directory written by `ddim train`")
    parser.add_argument("name", help="name under ddim_lib/pretrained/, e.g. digits or toy2d-swiss_roll")
    parser.add_argument("--steps", default="50", help="comma-separated S values to evaluate")
    parser.add_argument("--n", type=int, default=500, help="samples (and real points per half)")
    parser.add_argument("--note", default=None, help="a remark stored in the manifest")
    args = parser.parse_args()

    _, _, manifest = load_checkpoint(args.run)          # validates the weights against the manifest
    evaluations = {}
    for steps in (int(s) for s in args.steps.split(",")):
        report, command = evaluate(args.run, steps, args.n)
        evaluations[f"ddim_S{steps}"] = {"command": command, **report}
    manifest["metrics"] = {**manifest.get("metrics", {}), "fd": evaluations}
    manifest["files"] = {MODEL_FILE: manifest["files"][MODEL_FILE]}
    manifest["shipped_with"] = shlex.join(["python", "scripts/ship_pretrained.py", *sys.argv[1:]])
    if args.note:
        manifest["note"] = args.note
    manifest["environment"] = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}

    dest = PRETRAINED_DIR / args.name
    dest.mkdir(parents=True, exist_ok=True)
    tmp_model, tmp_manifest = dest / f".{MODEL_FILE}.tmp", dest / ".manifest.json.tmp"
    shutil.copyfile(find_checkpoint(args.run) / MODEL_FILE, tmp_model)   # a run's newest step-N/
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp_model, dest / MODEL_FILE)
    os.replace(tmp_manifest, dest / "manifest.json")
    load_checkpoint(dest)                                # the shipped copy loads and matches its hash
    print(f"shipped {args.run} -> {dest}")


if __name__ == "__main__":
    main()
