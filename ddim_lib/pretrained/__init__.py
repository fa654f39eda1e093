"""Small checkpoints shipped with the package, trained with the project's own ``ddim train``.

Each ``ddim_lib/pretrained/<name>/`` holds ``model.safetensors`` (EMA weights) and ``manifest.json``
(the exact command, seed, git commit and metrics); ``scripts/train_pretrained.sh`` re-creates them.
``digits_classifier/`` is not a diffusion model: it backs ``ddim_lib.evaluate.DigitsFeatures``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["load_pretrained", "list_pretrained", "pretrained_path", "PRETRAINED_DIR"]

PRETRAINED_DIR = Path(__file__).resolve().parent


def list_pretrained() -> list[str]:
    """Names of the shipped diffusion checkpoints, e.g. ["digits", "toy2d-swiss_roll", ...]."""
    names = []
    for d in sorted(PRETRAINED_DIR.iterdir()):
        manifest = d / "manifest.json"
        if d.is_dir() and manifest.is_file() and (d / "model.safetensors").is_file():
            if "preset" in json.loads(manifest.read_text()):
                names.append(d.name)
    return names


def pretrained_path(name: str) -> Path:
    """The folder of a shipped checkpoint; an unknown name raises ``ValueError`` listing the known ones."""
    known = list_pretrained()
    if name not in known:
        raise ValueError(f"unknown pretrained model {name!r}; shipped: {', '.join(known) or 'none'}")
    return PRETRAINED_DIR / name


def load_pretrained(name: str, device: str | torch.device = "cpu", with_manifest: bool = False):
    """``(model, schedule)`` of a shipped checkpoint, the model in eval mode on ``device``.

    ``with_manifest=True`` returns ``(model, schedule, manifest)``. Example::

        model, schedule = load_pretrained("digits")
        x0 = ddim_lib.sample(model, torch.randn(16, 1, 8, 8), schedule, tau=50)
    """
    from ..checkpoint import load_checkpoint

    model, schedule, manifest = load_checkpoint(pretrained_path(name), device=device)
    model.eval()
    return (model, schedule, manifest) if with_manifest else (model, schedule)
