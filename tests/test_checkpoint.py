"""Checkpoints: round trips, shipped (weights + manifest only) checkpoints, atomic writes, and one
clear CheckpointError for every kind of damage; loading never executes code."""
import json
import re

import pytest
import torch

import ddim_lib.checkpoint as ckpt
from ddim_lib import NoiseSchedule
from ddim_lib.checkpoint import CheckpointError, load_checkpoint, load_training_state, save_checkpoint
from ddim_lib.models import build_model

OVERRIDES = {"hidden": 16, "depth": 1, "temb_dim": 8}


def make_run(seed=0):
    """A tiny toy2d model, an EMA copy that differs from it, and an Adam optimizer with state."""
    torch.manual_seed(seed)
    model, ema = build_model("toy2d", **OVERRIDES), build_model("toy2d", **OVERRIDES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 2), torch.randint(0, 1000, (4,))).square().mean().backward()
    optimizer.step()
    return model, ema, optimizer


def save(directory, model, ema=None, optimizer=None, step=7, keep=1, **manifest):
    return save_checkpoint(directory, model=model, ema_model=ema, optimizer=optimizer, step=step, keep=keep,
                           manifest={"preset": "toy2d", "model_overrides": OVERRIDES,
                                     "schedule": {"T": 1000, "beta_start": 1e-4, "beta_end": 0.02},
                                     "seed": 0, **manifest})


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def saved(tmp_path):
    """(the step folder of a saved checkpoint, model, EMA model, optimizer)."""
    model, ema, optimizer = make_run()
    directory = save(tmp_path / "run", model, ema, optimizer, metrics={"loss": 0.5})
    return directory, model, ema, optimizer


def test_round_trip(saved):
    directory, model, ema, optimizer = saved
    assert directory.name == "step-00000007" and sorted(p.name for p in directory.parent.iterdir()) == [directory.name]
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "model.safetensors",
                                                           "optimizer.pt", "raw.safetensors"]
    assert same_weights(load_checkpoint(directory.parent)[0], ema)    # the run directory works too
    loaded, schedule, manifest = load_checkpoint(directory)
    assert same_weights(loaded, ema) and not loaded.training          # EMA weights, eval mode
    assert same_weights(load_checkpoint(directory, ema=False)[0], model)
    assert torch.equal(schedule.alpha_bars, NoiseSchedule.linear().alpha_bars)
    assert manifest["step"] == 7 and manifest["preset"] == "toy2d" and manifest["metrics"] == {"loss": 0.5}
    assert manifest["format_version"] == ckpt.FORMAT_VERSION and manifest["created"].endswith("+00:00")
    assert set(manifest["files"]) == {"model.safetensors", "raw.safetensors", "optimizer.pt"}
    assert manifest["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", manifest["git_commit"])
    assert load_checkpoint(directory / "manifest.json")[2] == manifest   # a file inside works too


def test_training_state_round_trip(saved):
    directory, model, ema, optimizer = saved
    model2, ema2, optimizer2 = make_run(seed=1)
    manifest, extra = load_training_state(directory, model=model2, ema_model=ema2, optimizer=optimizer2)
    assert same_weights(model2, model) and same_weights(ema2, ema) and extra["step"] == manifest["step"] == 7
    s1, s2 = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])


def test_shipped_checkpoint_needs_only_weights_and_manifest(saved):
    directory, _, ema, _ = saved
    (directory / "raw.safetensors").unlink()
    (directory / "optimizer.pt").unlink()
    assert same_weights(load_checkpoint(directory)[0], ema)
    with pytest.raises(CheckpointError, match="raw.safetensors is missing"):
        load_checkpoint(directory, ema=False)


def test_without_ema_model_the_weights_are_the_models(tmp_path):
    model, _, _ = make_run()
    directory = save(tmp_path, model)
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "model.safetensors"]
    assert same_weights(load_checkpoint(tmp_path)[0], model)


def one_line_error(directory, match, **kw):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(directory, **kw)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)


def test_truncated_weights(saved):
    directory = saved[0]
    file = directory / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    one_line_error(directory, "does not match the SHA-256")
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["files"]                                   # a hand-written manifest without hashes
    (directory / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(directory, "corrupt or truncated")
    file.write_bytes(b"")
    one_line_error(directory, "corrupt or truncated")


def test_flipped_byte_is_caught_by_the_hash(saved):
    directory = saved[0]
    file = directory / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF                                        # inside a tensor: safetensors alone would not notice
    file.write_bytes(bytes(data))
    one_line_error(directory, "does not match the SHA-256")


def test_damaged_or_missing_manifest(saved, tmp_path):
    directory = saved[0]
    one_line_error(tmp_path / "nowhere", "does not exist")
    one_line_error(tmp_path, "manifest.json is missing")
    text = (directory / "manifest.json").read_text()
    (directory / "manifest.json").write_text(text[: len(text) // 2])
    one_line_error(directory, "corrupt or truncated")
    (directory / "manifest.json").write_text("[1, 2]")
    one_line_error(directory, "JSON object")
    for change, match in [({"preset": "imagenet"}, "unknown preset"), ({"model_overrides": {"hidden": 32}}, "does not fit"),
                          ({"format_version": 99}, "newer"), ({"schedule": {"T": 0}}, "T must be")]:
        manifest = {**json.loads(text), **change}
        (directory / "manifest.json").write_text(json.dumps(manifest))
        one_line_error(directory, match)


def tree(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_saving_is_atomic_and_leaves_no_temporary_files(saved, monkeypatch):
    directory, model, ema, optimizer = saved
    run = directory.parent
    before = tree(run)
    calls = []

    def failing_save_file(tensors, path, metadata=None):    # the second file fails mid-save
        calls.append(path)
        if len(calls) == 2:
            open(path, "wb").write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save_file(tensors, path, metadata)

    real_save_file = ckpt.save_file
    monkeypatch.setattr(ckpt, "save_file", failing_save_file)
    with pytest.raises(OSError, match="could not write checkpoint step 8 .*No space left.*previous checkpoint is untouched"):
        save(run, model, ema, optimizer, step=8)
    assert tree(run) == before and sorted(p.name for p in run.iterdir()) == [directory.name]  # no leftovers
    assert load_checkpoint(run)[2]["step"] == 7


def test_a_new_checkpoint_replaces_the_old_one_only_when_whole(saved):
    directory, model, ema, optimizer = saved
    run = directory.parent
    new = save(run, model, ema, optimizer, step=9)
    assert sorted(p.name for p in run.iterdir()) == ["step-00000009"] and new == run / "step-00000009"
    save(run, model, ema, optimizer, step=10, keep=2)
    assert sorted(p.name for p in run.iterdir()) == ["step-00000009", "step-00000010"]
    (run / "step-00000010" / "model.safetensors").write_bytes(b"damaged")        # the newest is damaged:
    assert load_checkpoint(run)[2]["step"] == 9                                   # the newest complete one
    assert ckpt.find_checkpoint(run) == run / "step-00000009"


def test_leftovers_of_interrupted_saves_are_removed(saved):
    directory, model, ema, optimizer = saved
    run = directory.parent
    (run / ".tmp-step-abc").mkdir()
    (run / ".tmp-step-abc" / "model.safetensors").write_bytes(b"x" * 1000)
    (run / ".model.safetensors.x1.tmp").write_bytes(b"x")                       # the layout of older versions
    (run / ".trash-1").mkdir()
    older = run / "step-00000003"
    older.mkdir()
    (older / "manifest.json").write_text("{")                                    # a half-deleted old folder
    removed = ckpt.clean_run_dir(run)
    assert sorted(removed) == [".model.safetensors.x1.tmp", ".tmp-step-abc", ".trash-1", "step-00000003"]
    assert sorted(p.name for p in run.iterdir()) == [directory.name]


def test_a_checkpoint_renamed_aside_is_still_found_and_restored(saved):
    """Saving a step that exists renames the old folder into .trash-*/ before the new one moves in: a
    kill between the two renames must not lose it."""
    directory, model, ema, optimizer = saved
    run = directory.parent
    aside = run / ".trash-x1"
    aside.mkdir()
    directory.rename(aside / directory.name)                 # the state after the first rename
    assert ckpt.has_checkpoint(run) and load_checkpoint(run)[2]["step"] == 7
    ckpt.clean_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == [directory.name] and load_checkpoint(run)[2]["step"] == 7
    new = save(run, model, ema, optimizer, step=7)           # the same step again: replaced whole
    assert sorted(p.name for p in run.iterdir()) == [new.name]


def test_non_finite_weights_are_never_saved_nor_loaded(saved, tmp_path):
    directory, model, ema, optimizer = saved
    with torch.no_grad():
        next(ema.parameters())[0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to save step 8: model.safetensors would hold non-finite"):
        save(directory.parent, model, ema, optimizer, step=8)
    assert load_checkpoint(directory.parent)[2]["step"] == 7
    from safetensors.torch import save_file
    state = {k: v.clone() for k, v in ema.state_dict().items()}
    file = directory / "model.safetensors"
    save_file(state, str(file))                                                  # written behind our back
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = ckpt._sha256(file)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(directory, "non-finite weights")


@pytest.mark.parametrize("change, match", [
    ({"format_version": "1"}, "format_version must be an integer, got '1'"),
    ({"step": "ten"}, "field 'step' must be an integer"), ({"step": -3}, "non-negative"),
    ({"preset": 5}, "field 'preset' must be a string"), ({"schedule": "linear"}, "field 'schedule' must be an object"),
    ({"model_overrides": [1]}, "field 'model_overrides' must be an object or null"),
    ({"files": ["model.safetensors"]}, "field 'files'"), ({"files": {"../x": "ab"}}, "field 'files' may only"),
    ({"metrics": 3}, "field 'metrics'"), ({"train_config": "x"}, "field 'train_config'"),
    ({"legs": {}}, "field 'legs'"), ({"seed": 1.5}, "field 'seed'"),
    ({"schedule": {"T": "many"}}, "manifest.json"), ({"model_overrides": {"hidden": "wide"}}, "manifest.json"),
])
def test_malformed_manifest_fields_give_one_line(saved, change, match):
    directory = saved[0]
    manifest = {**json.loads((directory / "manifest.json").read_text()), **change}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(directory, match)


def test_run_lock_admits_one_writer(tmp_path):
    with ckpt.RunLock(tmp_path):
        with pytest.raises(CheckpointError, match="another training run is writing to"):
            with ckpt.RunLock(tmp_path):
                pass
    with ckpt.RunLock(tmp_path):                     # released on exit
        pass
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="symlink"):
        with ckpt.RunLock(tmp_path / "sub"):
            pass


def test_manifest_needs_a_preset(tmp_path):
    model, _, _ = make_run()
    with pytest.raises(ValueError, match="preset"):
        save_checkpoint(tmp_path, model=model, step=1, manifest={})


class _Trap:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_optimizer_state_never_executes_code(saved):
    directory, model, ema, optimizer = saved
    trap = directory / "pwned"
    torch.save({"optimizer": _Trap(trap), "step": 7}, directory / "optimizer.pt")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"].pop("optimizer.pt")                   # skip the hash: reach the unpickler itself
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="optimizer.pt is corrupt"):
        load_training_state(directory, model=model, ema_model=ema, optimizer=optimizer)
    assert not trap.exists()


def test_resolve_device():
    assert ckpt.resolve_device("cpu") == torch.device("cpu")
    for bad in ("meta", "mps", "xla", "cpu:x"):
        with pytest.raises(ValueError, match="not supported|invalid device"):
            ckpt.resolve_device(bad)
    assert ckpt.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="invalid device"):
        ckpt.resolve_device("gpu7")
    if torch.cuda.is_available():
        assert ckpt.resolve_device("cuda:0") == torch.device("cuda", 0)
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            ckpt.resolve_device("cuda")
