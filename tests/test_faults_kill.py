"""A save interrupted at EVERY file operation, by SIGKILL and by Ctrl-C, never loses the checkpoint.

A run is trained to step 10 (one checkpoint); then, for k = 1, 2, ..., a forked child resumes it to
step 20 (one more save, the log, the lock, the clean-up) and is killed at its k-th file operation:
every call of os.open / os.mkdir / os.rename / os.replace / os.fsync / os.unlink / os.rmdir /
open(..., "w"/"x"/"a"), and every weight-file write twice (before it starts, and torn: half written).
k runs until a child completes without meeting its k-th operation. After each kill the run directory
must hold a complete, hash-consistent checkpoint (step 10 or 20), and resuming it must give exactly
the weights, EMA and Adam state of an uninterrupted run (checked for every k), with no leftovers.
"""
from __future__ import annotations

import builtins
import io
import os
import shutil
import signal

import pytest
import safetensors.torch
import torch

import ddim_lib.checkpoint as ckpt
from ddim_lib.training import TrainConfig, train

TOY = dict(preset="toy2d", batch_size=32, n_data=320, model_overrides={"hidden": 16, "depth": 1, "temb_dim": 8},
           progress=False, log_every=5, ckpt_every=10, warmup=0)
OS_CALLS = ("open", "mkdir", "rename", "replace", "fsync", "unlink", "rmdir")

pytestmark = pytest.mark.usefixtures("single_thread")


class Injector:
    """Counts file operations; at the ``k``-th one it kills the process (or raises KeyboardInterrupt)."""

    def __init__(self, k: int, how: str):
        self.k, self.how, self.count, self.log = k, how, 0, []

    def hit(self, what: str) -> None:
        self.count += 1
        self.log.append(what)
        if self.count == self.k:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise KeyboardInterrupt(f"injected at operation {self.k}: {what}")

    def install(self, monkeypatch) -> None:
        for name in OS_CALLS:
            real = getattr(os, name)

            def wrapped(*args, _real=real, _name=name, **kw):
                self.hit(f"os.{_name}")
                return _real(*args, **kw)
            monkeypatch.setattr(os, name, wrapped)
        real_open = builtins.open

        def opened(file, mode="r", *args, **kw):
            if any(c in mode for c in "wxa+"):
                self.hit(f"open({mode})")
            return real_open(file, mode, *args, **kw)
        monkeypatch.setattr(builtins, "open", opened)
        monkeypatch.setattr(io, "open", opened)
        for module, name in ((ckpt, "save_file"), (torch, "save")):
            real = getattr(module, name)

            def writer(obj, path, *args, _real=real, _name=name, **kw):
                self.hit(f"{_name} (before)")
                _real(obj, path, *args, **kw)
                if self.count + 1 == self.k:          # torn: the file is half written when the kill comes
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) // 2)
                self.hit(f"{_name} (torn)")
            monkeypatch.setattr(module, name, writer)


def resume(out, steps=20):
    train(TrainConfig(**TOY, steps=steps, out=str(out), resume=True))


def state(out) -> dict:
    """Every tensor of the newest checkpoint: raw and EMA weights, Adam's moments."""
    folder = ckpt.find_checkpoint(out)
    ckpt.verify_checkpoint(folder)                               # hash-consistent
    tensors = {}
    for name in (ckpt.MODEL_FILE, ckpt.RAW_FILE):
        tensors.update({f"{name}:{k}": v for k, v in safetensors.torch.load_file(folder / name).items()})
    opt = torch.load(folder / ckpt.OPTIMIZER_FILE, weights_only=True)["optimizer"]["state"]
    tensors.update({f"adam:{i}:{k}": v for i in opt for k, v in opt[i].items() if torch.is_tensor(v)})
    return tensors


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a run at step 10, the same run continued without interruption to step 20)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("kill")
    train(TrainConfig(**TOY, steps=10, out=str(base / "ten")))
    shutil.copytree(base / "ten", base / "whole")
    resume(base / "whole")
    torch.set_num_threads(before)
    return base / "ten", state(base / "whole")


def check_after_interruption(out, whole: dict) -> int:
    """The checkpoint left behind is complete; resuming it gives the uninterrupted run; returns its step."""
    step = ckpt.read_manifest(ckpt.find_checkpoint(out))["step"]
    assert step in (10, 20)
    resume(out)
    assert same(state(out), whole), "the resumed run differs from the uninterrupted one"
    left = sorted(p.name for p in out.iterdir())
    assert left == [".lock", "log.jsonl", "step-00000020"], left         # no leftovers after the resume
    return step


@pytest.mark.slow
def test_sigkill_at_every_file_operation_of_a_save(runs, tmp_path, monkeypatch):
    ten, whole = runs
    outcomes = []
    for k in range(1, 500):
        out = tmp_path / f"k{k}"
        shutil.copytree(ten, out)
        pid = os.fork()
        if pid == 0:                                                 # the child: resume, die at op k
            code = 3
            try:
                injector = Injector(k, "kill")
                injector.install(monkeypatch)
                resume(out)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        monkeypatch.undo()
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, f"k = {k}: the child failed instead of being killed"
            assert check_after_interruption(out, whole) == 20
            break
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        outcomes.append(check_after_interruption(out, whole))
        shutil.rmtree(out)
    else:
        pytest.fail("the save never completed")
    # every operation was reached; the kills landed both before and after the commit point
    print(f"{len(outcomes)} kills: {outcomes.count(10)} left step 10, {outcomes.count(20)} step 20")
    assert len(outcomes) >= 20 and 10 in outcomes and 20 in outcomes, outcomes


@pytest.mark.slow
def test_ctrl_c_at_every_file_operation_of_a_save(runs, tmp_path, monkeypatch):
    ten, whole = runs
    for k in range(1, 500):
        out = tmp_path / f"k{k}"
        shutil.copytree(ten, out)
        injector = Injector(k, "interrupt")
        injector.install(monkeypatch)
        try:
            resume(out)
            completed = True
        except KeyboardInterrupt:
            completed = False
        finally:
            monkeypatch.undo()
        check_after_interruption(out, whole)
        shutil.rmtree(out)
        if completed:
            assert k > 20
            break
    else:
        pytest.fail("the save never completed")


def test_sigkill_at_every_file_operation_of_a_same_step_save(runs, tmp_path, monkeypatch):
    """Saving a step that already exists (the library allows it): the old folder is renamed aside
    before the new one moves in; a kill anywhere leaves the old weights or the new ones, whole."""
    ten, _ = runs
    old = state(ten)
    model = ckpt.load_checkpoint(ten, ema=False)[0]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)                                              # new weights, same step
    manifest = ckpt.read_manifest(ckpt.find_checkpoint(ten))
    kills = 0
    for k in range(1, 200):
        out = tmp_path / f"k{k}"
        shutil.copytree(ten, out)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                Injector(k, "kill").install(monkeypatch)
                ckpt.save_checkpoint(out, model=model, step=10, manifest=manifest)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        monkeypatch.undo()
        folder = ckpt.find_checkpoint(out)
        ckpt.verify_checkpoint(folder)
        weights = safetensors.torch.load_file(folder / ckpt.MODEL_FILE)
        is_old = all(torch.equal(weights[k_], old[f"{ckpt.MODEL_FILE}:{k_}"]) for k_ in weights)
        is_new = all(torch.equal(weights[k_], v) for k_, v in model.state_dict().items())
        assert is_old or is_new, f"k = {k}: neither the old nor the new checkpoint"
        ckpt.clean_run_dir(out)
        assert [p.name for p in out.iterdir() if p.name.startswith(".tmp") or p.name.startswith(".trash")] == []
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0 and is_new
            break
        kills += 1
    else:
        pytest.fail("the save never completed")
    assert kills >= 15
