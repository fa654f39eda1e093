"""A training run's directory: ``step-N/`` checkpoint folders, the newest complete one, leftovers of
interrupted saves, and one writer at a time.

    out/step-00001000/   a checkpoint folder (see ``ddim_lib.checkpoint``), made visible by one rename
    out/log.jsonl        the training log
    out/.lock            flock'ed by the run writing to ``out``
    out/.tmp-step-*      a save in progress (or interrupted: removed by ``clean_run_dir``)

A folder is "complete" when its manifest is valid and every file it lists matches its SHA-256.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["step_dir_name", "find_checkpoint", "has_checkpoint", "clean_run_dir", "RunLock"]

STEP_PREFIX, TMP_PREFIX, TRASH_PREFIX, LOCK_FILE = "step-", ".tmp-step-", ".trash-", ".lock"
MANIFEST_FILE = "manifest.json"


def step_dir_name(step: int) -> str:
    """The folder name of checkpoint ``step`` inside a run directory: ``step-00000100``."""
    return f"{STEP_PREFIX}{step:08d}"


def _step_dirs(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``step-N`` folder in ``out``, newest first (nothing is verified)."""
    found = []
    try:
        entries = list(out.iterdir())
    except OSError:
        return []
    for p in entries:
        tail = p.name[len(STEP_PREFIX):]
        if p.name.startswith(STEP_PREFIX) and tail.isdigit() and p.is_dir() and not p.is_symlink():
            found.append((int(tail), p))
    return sorted(found, reverse=True)


def _trashed_step_dirs(out: Path) -> list[tuple[int, Path]]:
    """Step folders inside ``.trash-*`` folders: renamed aside by ``_discard`` but not yet deleted."""
    found = []
    for t in out.glob(TRASH_PREFIX + "*"):
        if t.is_dir() and not t.is_symlink():
            found += _step_dirs(t)
    return sorted(found, reverse=True)


def _discard(path: Path) -> None:
    """Rename ``path`` out of the way (one atomic step), then delete it.

    Until it is deleted it lies in ``.trash-*/``, where ``find_checkpoint`` still finds it (last) and
    ``clean_run_dir`` restores it if the run has no complete checkpoint of that name."""
    trash = _set_aside(path)
    if trash is not None:
        _remove_tree(trash)


def _set_aside(path: Path) -> Path | None:
    """Rename ``path`` into a fresh ``.trash-*`` folder and return that folder (a symlink is just removed)."""
    if path.is_symlink():
        path.unlink()
        return None
    trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=TRASH_PREFIX))
    os.rename(path, trash / path.name)
    return trash


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _as_dir(path) -> Path:
    """The checkpoint folder ``path`` names (a file inside it names its folder); CheckpointError if absent."""
    from .checkpoint import CheckpointError

    path = Path(path).expanduser()
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    return path


def _manifest_step(directory: Path) -> int:
    try:
        step = json.loads((directory / MANIFEST_FILE).read_text()).get("step", 0)
    except (OSError, ValueError, AttributeError):
        return -1
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def find_checkpoint(path, files: tuple[str, ...] | None = None) -> Path:
    """The folder of the newest complete checkpoint at ``path``.

    ``path`` is a checkpoint folder (manifest.json and weights: shipped models, single step folders,
    runs written before step folders existed) or a run directory holding ``step-N`` folders: then
    the newest one whose files all match its manifest's hashes (``files``: the files it needs) is
    taken; a damaged newer one is skipped with a note on stderr. CheckpointError when none is usable.
    """
    from .checkpoint import CheckpointError, verify_checkpoint

    directory = _as_dir(path)
    candidates = [d for _, d in _step_dirs(directory)]
    if (directory / MANIFEST_FILE).is_file():
        flat = _manifest_step(directory)
        candidates = [d for d in candidates if _manifest_step(d) > flat] + [directory]
    candidates += [d for _, d in _trashed_step_dirs(directory)]     # a kill between two renames
    if not candidates:
        raise CheckpointError(f"{directory / MANIFEST_FILE} is missing: not a checkpoint directory "
                              "(and no step-N checkpoint folders in it)")
    errors = []
    for candidate in candidates:
        try:
            verify_checkpoint(candidate, files)
        except CheckpointError as exc:
            errors.append(exc)
            continue
        if errors:
            print(f"ddim_lib: note: skipped {len(errors)} damaged checkpoint(s) in {directory} "
                  f"({errors[0]}); using {candidate.name}", file=sys.stderr)
        return candidate
    raise errors[0] if len(errors) == 1 else CheckpointError(
        f"no complete checkpoint in {directory}: {len(errors)} damaged ({errors[0]})")


def has_checkpoint(path) -> bool:
    """Whether the run directory ``path`` holds a checkpoint (complete or not)."""
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST_FILE).is_file() or bool(_step_dirs(path) or _trashed_step_dirs(path)))


def clean_run_dir(out, keep: int = 1) -> list[str]:
    """Remove what interrupted saves left in the run directory ``out``; return the names removed.

    Complete step folders found in ``.trash-*`` under a name the run lacks are first moved back; then
    temporary folders and files (``.tmp-step-*``, ``.trash-*``, ``.*.tmp`` of older versions) go, and
    so do step folders older than the newest ``keep`` complete ones. Damaged step folders newer than
    the newest complete one are left for the user to inspect (a save of the same step replaces them).
    """
    from .checkpoint import CheckpointError, verify_checkpoint

    out = Path(out)
    removed = []
    if not out.is_dir():
        return removed
    for _, d in _trashed_step_dirs(out):            # renamed aside, then the process died: put it back
        if not (out / d.name).exists():
            try:
                verify_checkpoint(d)
            except CheckpointError:
                continue
            os.rename(d, out / d.name)
    for p in out.iterdir():
        if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            if p.is_dir() and not p.is_symlink():
                _remove_tree(p)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    complete = []
    for step, d in _step_dirs(out):
        try:
            verify_checkpoint(d)
        except CheckpointError:
            if complete:                             # older and damaged: a partly deleted old folder
                _discard(d)
                removed.append(d.name)
            continue
        complete.append(d)
        if len(complete) > keep:
            _discard(d)
            removed.append(d.name)
    return removed


# ---- one writer per run directory ------------------------------------------------------------------
class RunLock:
    """An exclusive ``fcntl.flock`` on ``out/.lock`` for as long as a training run writes to ``out``.

    A second run on the same directory gets CheckpointError at once (it never waits). The lock dies
    with the process, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, out):
        self.path = Path(out) / LOCK_FILE
        self._fd = None

    def __enter__(self) -> "RunLock":
        import fcntl

        from .checkpoint import CheckpointError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise CheckpointError(f"cannot open the lock file {self.path} ({exc.strerror or exc}); "
                                  "is it a symlink?") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CheckpointError(f"another training run is writing to {self.path.parent} (it holds "
                                  f"{self.path}); wait for it to finish or choose another --out") from None
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)          # closing releases the flock
            self._fd = None
