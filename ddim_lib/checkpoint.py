"""Checkpoints: a directory of safetensors weights and a JSON manifest, written atomically.

Layout of a checkpoint directory:

- ``model.safetensors``: the weights used for sampling (the EMA weights when training);
- ``raw.safetensors`` (optional): the raw, non-averaged training weights;
- ``optimizer.pt`` (optional): Adam's state, a dict of tensors and numbers, read back only with
  ``torch.load(weights_only=True)``, which refuses to execute code;
- ``manifest.json``: preset, model overrides, schedule, step, seed, git commit, command, metrics,
  creation time, format version and the SHA-256 of every file above.

Every file is written to a temporary file in the same directory, flushed to disk (fsync) and moved
into place with ``os.replace``; the manifest goes last, so a reader never sees a manifest that
points at files from another step (a mismatch is caught by the hashes).
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .models import build_model
from .schedule import NoiseSchedule

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_training_state",
           "read_manifest", "git_commit", "unwrap", "resolve_device", "FORMAT_VERSION"]

FORMAT_VERSION = 1
MODEL_FILE, RAW_FILE, OPTIMIZER_FILE, MANIFEST_FILE = ("model.safetensors", "raw.safetensors",
                                                       "optimizer.pt", "manifest.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated or does not fit its manifest."""


# ---- helpers -------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA if available, else CPU; anything else as torch.device (ValueError if invalid)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the repository holding this package, or None outside a git checkout.

    Asked once per process (a training run saves many checkpoints of one commit).
    """
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, name: str, write: Callable[[str], None]) -> Path:
    """Write a temporary file next to ``name`` with ``write(path)``, fsync it, return its path."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _fsync(Path(tmp))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


# ---- saving --------------------------------------------------------------------------------------
def save_checkpoint(out_dir, *, model: nn.Module, step: int, manifest: dict,
                    ema_model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    extra_state: dict | None = None) -> Path:
    """Write a checkpoint into ``out_dir`` atomically and return the directory.

    model.safetensors holds ``ema_model``'s weights when given (then raw.safetensors holds
    ``model``'s), else ``model``'s. ``manifest`` needs "preset"; step, created, format_version,
    git_commit and the file hashes are filled in. ``extra_state`` (tensors and numbers) goes into
    optimizer.pt beside the optimizer state.
    """
    if "preset" not in manifest:
        raise ValueError("the manifest needs a 'preset' entry (the name build_model takes)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers = {MODEL_FILE: lambda p: save_file(_cpu_state(ema_model or model), p, {"step": str(step)})}
    if ema_model is not None:
        writers[RAW_FILE] = lambda p: save_file(_cpu_state(model), p, {"step": str(step)})
    if optimizer is not None or extra_state:
        state = {"optimizer": optimizer.state_dict() if optimizer is not None else None,
                 "step": int(step), **(extra_state or {})}
        writers[OPTIMIZER_FILE] = lambda p: torch.save(state, p)
    temps = {}
    try:
        for name, write in writers.items():
            temps[name] = _write_temp(out, name, write)
        files = {name: _sha256(tmp) for name, tmp in temps.items()}
        full = {"model_overrides": {}, "schedule": None, "seed": None, "command": None, "metrics": {},
                **manifest, "step": int(step), "format_version": FORMAT_VERSION, "files": files,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if "git_commit" not in manifest:
            full["git_commit"] = git_commit()
        text = json.dumps(full, indent=2, default=_json_default) + "\n"
        temps[MANIFEST_FILE] = _write_temp(out, MANIFEST_FILE, lambda p: Path(p).write_text(text))
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    for name, tmp in temps.items():          # data files first, the manifest last
        os.replace(tmp, out / name)
    _fsync(out)
    return out


def _json_default(obj):
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} into a manifest")


# ---- loading -------------------------------------------------------------------------------------
def _checkpoint_dir(path) -> Path:
    path = Path(path).expanduser()
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    return path


def read_manifest(path) -> dict:
    """The manifest of the checkpoint at ``path`` (its directory or a file in it), validated."""
    file = _checkpoint_dir(path) / MANIFEST_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: not a checkpoint directory")
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated (invalid JSON: {exc})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{file} must hold a JSON object")
    for key in ("preset", "schedule"):
        if key not in manifest:
            raise CheckpointError(f"{file} has no {key!r} entry")
    version = manifest.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: format_version {version!r} is newer than this ddim_lib reads "
                              f"({FORMAT_VERSION}); upgrade ddim_lib")
    return manifest


def _verified(directory: Path, name: str, manifest: dict) -> Path:
    file = directory / name
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    expected = (manifest.get("files") or {}).get(name)
    if expected is not None and _sha256(file) != expected:
        raise CheckpointError(f"{file} does not match the SHA-256 in its manifest "
                              "(corrupt, truncated, or left from an interrupted save)")
    return file


def _load_weights(module: nn.Module, file: Path) -> None:
    try:
        state = load_file(file, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated ({str(exc).splitlines()[0]})") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"{file} does not fit the model of its manifest: {' '.join(lines)[:300]}") from None


def _build(manifest: dict, where: Path) -> tuple[nn.Module, NoiseSchedule]:
    overrides = manifest.get("model_overrides") or {}
    try:
        model = build_model(manifest["preset"], **overrides)
        schedule = NoiseSchedule.linear(**manifest["schedule"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where / MANIFEST_FILE}: {exc}") from None
    return model, schedule


def load_checkpoint(path, device="cpu", ema: bool = True) -> tuple[nn.Module, NoiseSchedule, dict]:
    """(model in eval mode on ``device``, its NoiseSchedule, the manifest) from a checkpoint.

    ema=True reads model.safetensors (the sampling weights), ema=False raw.safetensors.
    Needs only model.safetensors + manifest.json; raises CheckpointError with one line otherwise.
    """
    directory = _checkpoint_dir(path)
    manifest = read_manifest(directory)
    model, schedule = _build(manifest, directory)
    _load_weights(model, _verified(directory, MODEL_FILE if ema else RAW_FILE, manifest))
    return model.to(resolve_device(device)).eval(), schedule, manifest


def load_training_state(path, *, model: nn.Module, ema_model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Restore raw weights, EMA weights and optimizer state in place; return (manifest, extra state)."""
    directory = _checkpoint_dir(path)
    manifest = read_manifest(directory)
    _load_weights(unwrap(model), _verified(directory, RAW_FILE, manifest))
    _load_weights(unwrap(ema_model), _verified(directory, MODEL_FILE, manifest))
    file = _verified(directory, OPTIMIZER_FILE, manifest)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
    except Exception as exc:  # unpickling errors come in many types; report them as one line
        raise CheckpointError(f"{file} is corrupt or does not fit the optimizer "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return manifest, state
