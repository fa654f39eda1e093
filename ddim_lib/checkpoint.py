"""Checkpoints: a folder of safetensors weights and a JSON manifest; a run keeps them as atomic units.

Layout of one checkpoint folder (also what ``ddim_lib/pretrained/<name>/`` ships):

- ``model.safetensors``: the weights used for sampling (the EMA weights when training);
- ``raw.safetensors`` (optional): the raw, non-averaged training weights;
- ``optimizer.pt`` (optional): Adam's state, a dict of tensors and numbers, read back only with
  ``torch.load(weights_only=True)``, which refuses to execute code;
- ``manifest.json``: preset, model overrides, schedule, step, seed, git commit, command, metrics,
  the legs of the run, creation time, format version and the SHA-256 of every file above.

A training run directory ``out/`` holds ``step-<N>/`` checkpoint folders, ``log.jsonl`` and a
``.lock``. A save writes a complete folder under a temporary name (``tempfile.mkdtemp``), fsyncs
every file and the folder, and makes it visible with ONE ``os.rename`` to ``step-<N>``; the previous
folder is removed only afterwards. A kill at any point therefore leaves the old checkpoint or the new
one, whole. Readers take the newest folder whose files match the hashes of its manifest
(``find_checkpoint``); ``clean_run_dir`` removes what an interrupted save left behind (both live in
``ddim_lib.rundir``, with the ``RunLock`` that admits one writer per run directory).
"""
from __future__ import annotations

import datetime
import errno
import functools
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .models import build_model
from .rundir import (TMP_PREFIX, RunLock, _as_dir, _discard, _remove_tree, _set_aside, _step_dirs, clean_run_dir,
                     find_checkpoint, has_checkpoint, step_dir_name)     # the run directory's side, re-exported here
from .schedule import NoiseSchedule

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_training_state",
           "read_manifest", "verify_checkpoint", "find_checkpoint", "has_checkpoint", "clean_run_dir",
           "step_dir_name", "RunLock", "git_commit", "unwrap", "resolve_device", "FORMAT_VERSION"]

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
    if dev.type not in ("cpu", "cuda"):
        hint = " (and MPS is not available here)" if dev.type == "mps" and not _mps_available() else ""
        raise ValueError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N{hint}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


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


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


# ---- saving --------------------------------------------------------------------------------------
def save_checkpoint(out_dir, *, model: nn.Module, step: int, manifest: dict,
                    ema_model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    extra_state: dict | None = None, keep: int = 1) -> Path:
    """Write checkpoint ``step`` into the run directory ``out_dir`` as one atomic unit; return its folder.

    The files go into a fresh temporary folder ``out_dir/.tmp-step-*`` (``tempfile.mkdtemp``), each
    fsynced, the manifest with their SHA-256 last; the folder is then fsynced and renamed to
    ``out_dir/step-<step>`` in one ``os.rename``, the commit point: before it a reader sees the
    previous checkpoint only, after it the new one whole. Only then are older step folders beyond
    the newest ``keep`` removed. Non-finite weights are refused (CheckpointError), so a checkpoint
    on disk always holds finite weights.

    model.safetensors holds ``ema_model``'s weights when given (then raw.safetensors holds
    ``model``'s), else ``model``'s. ``manifest`` needs "preset"; step, created, format_version,
    git_commit and the file hashes are filled in. ``extra_state`` (tensors and numbers) goes into
    optimizer.pt beside the optimizer state.
    """
    if "preset" not in manifest:
        raise ValueError("the manifest needs a 'preset' entry (the name build_model takes)")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive integer, got {keep!r}")
    states = {MODEL_FILE: _cpu_state(ema_model or model)}
    if ema_model is not None:
        states[RAW_FILE] = _cpu_state(model)
    for name, state in states.items():
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(f"refusing to save step {step}: {name} would hold non-finite weights "
                                  f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers = {name: functools.partial(_save_safetensors, state, step=step) for name, state in states.items()}
    if optimizer is not None or extra_state:
        state = {"optimizer": optimizer.state_dict() if optimizer is not None else None,
                 "step": int(step), **(extra_state or {})}
        writers[OPTIMIZER_FILE] = functools.partial(_torch_save, state)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=TMP_PREFIX))
    final, aside = out / step_dir_name(step), None
    try:
        files = {}
        for name, write in writers.items():
            write(tmp / name)
            _fsync(tmp / name)
            files[name] = _sha256(tmp / name)
        full = {"model_overrides": {}, "schedule": None, "seed": None, "command": None, "metrics": {},
                **manifest, "step": int(step), "format_version": FORMAT_VERSION, "files": files,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if "git_commit" not in manifest:
            full["git_commit"] = git_commit()
        text = json.dumps(full, indent=2, default=_json_default) + "\n"
        with open(tmp / MANIFEST_FILE, "x") as f:
            f.write(text)
        _fsync(tmp / MANIFEST_FILE)
        _fsync(tmp)
        if final.is_symlink() or final.exists():   # the same step again: set the old one aside first
            aside = _set_aside(final)
        os.rename(tmp, final)                       # the commit point
    except BaseException as exc:
        _remove_tree(tmp)
        if aside is not None and not final.exists():      # put the old folder back
            os.rename(aside / final.name, final)
            _remove_tree(aside)
        if isinstance(exc, OSError):
            raise OSError(f"could not write checkpoint step {step} into {out} ({exc.strerror or exc}); "
                          "nothing of it was kept, and the previous checkpoint is untouched") from None
        raise
    _fsync(out)
    if aside is not None:
        _remove_tree(aside)
    for old in _step_dirs(out)[keep:]:               # superseded: the new one is whole
        if old[0] < step:
            _discard(old[1])
    return final


def _save_safetensors(state: dict, path: Path, *, step: int) -> None:
    try:
        save_file(state, str(path), {"step": str(step)})
    except SafetensorError as exc:     # safetensors reports a failed write (e.g. disk full) this way
        raise OSError(errno.EIO, f"writing {path.name} failed: {' '.join(str(exc).split())}") from None


def _torch_save(state: dict, path: Path) -> None:
    try:
        torch.save(state, str(path))
    except RuntimeError as exc:        # torch reports a failed write (e.g. disk full) as RuntimeError
        raise OSError(errno.EIO, f"writing {path.name} failed: {str(exc).splitlines()[0]}") from None


def _json_default(obj):
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} into a manifest")


# ---- loading -------------------------------------------------------------------------------------
def verify_checkpoint(path, files: tuple[str, ...] | None = None) -> dict:
    """The validated manifest of the checkpoint folder ``path`` after checking the SHA-256 of its files.

    ``files``: the files that must be present (default: every file the manifest lists).
    CheckpointError (one line) when one is missing or differs from its hash.
    """
    directory = _as_dir(path)
    manifest = read_manifest(directory)
    for name in (files if files is not None else tuple(manifest.get("files") or ())):
        _verified(directory, name, manifest)
    return manifest


_FIELD_TYPES = {"preset": (str,), "schedule": (dict,), "model_overrides": (dict, type(None)),
                "step": (int,), "files": (dict, type(None)), "metrics": (dict, type(None)),
                "train_config": (dict, type(None)), "legs": (list, type(None)), "seed": (int, type(None)),
                "data": (str, type(None)), "command": (str, type(None))}


def read_manifest(path) -> dict:
    """The manifest of the checkpoint at ``path`` (its directory or a file in it), validated.

    Every known field must have its type (preset a string, schedule an object, step an integer...);
    a wrong one raises CheckpointError naming the file and the field.
    """
    file = _as_dir(path) / MANIFEST_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: not a checkpoint directory")
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated (invalid JSON: {exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{file} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{file} must hold a JSON object")
    for key in ("preset", "schedule"):
        if key not in manifest:
            raise CheckpointError(f"{file} has no {key!r} entry")
    version = manifest.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{file}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: format_version {version!r} is newer than this ddim_lib reads "
                              f"({FORMAT_VERSION}); upgrade ddim_lib")
    for key, types in _FIELD_TYPES.items():
        value = manifest.get(key)
        if key in manifest and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            names = " or ".join("null" if t is type(None) else {"str": "a string", "dict": "an object",
                                "int": "an integer", "list": "a list"}[t.__name__] for t in types)
            raise CheckpointError(f"{file}: field {key!r} must be {names}, got {value!r:.80}")
    if isinstance(manifest.get("step"), int) and manifest["step"] < 0:
        raise CheckpointError(f"{file}: field 'step' must be non-negative, got {manifest['step']}")
    for name, digest in (manifest.get("files") or {}).items():
        if name not in (MODEL_FILE, RAW_FILE, OPTIMIZER_FILE) or not isinstance(digest, str):
            raise CheckpointError(f"{file}: field 'files' may only map {MODEL_FILE}, {RAW_FILE} and "
                                  f"{OPTIMIZER_FILE} to SHA-256 strings, got {name!r:.60}")
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
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{file} holds non-finite weights ({', '.join(bad[:3])}); "
                              "it comes from a diverged run")
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
        raise CheckpointError(f"{where / MANIFEST_FILE}: {' '.join(str(exc).split())}") from None
    return model, schedule


def load_checkpoint(path, device="cpu", ema: bool = True) -> tuple[nn.Module, NoiseSchedule, dict]:
    """(model in eval mode on ``device``, its NoiseSchedule, the manifest) from a checkpoint.

    ``path``: a checkpoint folder or a run directory (its newest complete checkpoint, see
    ``find_checkpoint``). ema=True reads model.safetensors (the sampling weights), ema=False
    raw.safetensors. Needs only that file + manifest.json; raises CheckpointError with one line otherwise.
    """
    name = MODEL_FILE if ema else RAW_FILE
    directory = find_checkpoint(path, files=(name,))
    manifest = read_manifest(directory)
    model, schedule = _build(manifest, directory)
    _load_weights(model, _verified(directory, name, manifest))
    return model.to(resolve_device(device)).eval(), schedule, manifest


def load_training_state(path, *, model: nn.Module, ema_model: nn.Module,
                        optimizer: torch.optim.Optimizer, check=None) -> tuple[dict, dict]:
    """Restore raw weights, EMA weights and optimizer state in place; return (manifest, extra state).

    ``path``: a checkpoint folder or a run directory (its newest complete checkpoint).
    ``check(manifest, directory)``, if given, runs on the manifest before any weight is read (so a
    run of another preset is refused for its configuration, not for a weight file that does not fit).
    """
    directory = find_checkpoint(path, files=(MODEL_FILE, RAW_FILE, OPTIMIZER_FILE))
    manifest = read_manifest(directory)
    if check is not None:
        check(manifest, directory)
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
