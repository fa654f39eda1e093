"""Multi-process training: two CPU processes with gloo, launched by torchrun, end with identical weights."""
import json
import os
import subprocess
import sys

from safetensors.torch import load_file

from ddim_lib.checkpoint import find_checkpoint

# Run by each rank: train a tiny toy2d model, then report a hash of this rank's own weights (raw and
# EMA, read from the live modules, not from rank 0's checkpoint) and the sample indices it trained on.
RANK_SCRIPT = r'''
import hashlib, json, os, sys
import torch
torch.set_num_threads(1)
import ddim_lib.training as tr

live, seen = {}, []
real_ema_update, real_indices = tr._ema_update, tr._Sampler.indices

def spy_ema_update(ema, model, decay):
    live["raw"], live["ema"] = model, ema
    real_ema_update(ema, model, decay)

def spy_indices(self, step):
    idx = real_indices(self, step)
    seen.append(idx.tolist())
    return idx

tr._ema_update, tr._Sampler.indices = spy_ema_update, spy_indices
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
tr.train(tr.TrainConfig(preset="toy2d", steps=6, out=sys.argv[1], batch_size=16, n_data=128, progress=False,
                        log_every=2, ckpt_every=3, model_overrides={"hidden": 32, "depth": 2, "temb_dim": 16}))

def digest(module):
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode()); h.update(value.detach().numpy().tobytes())
    return h.hexdigest()

with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump({"world": world, "raw": digest(live["raw"]), "ema": digest(live["ema"]), "indices": seen}, f)
'''


def digest_file(path):
    import hashlib

    h = hashlib.sha256()
    for name, value in sorted(load_file(path).items()):
        h.update(name.encode())
        h.update(value.numpy().tobytes())
    return h.hexdigest()


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(out), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # Same weights on both ranks, and rank 0's checkpoint holds exactly them.
    folder = find_checkpoint(out)                    # the newest step-N/ folder
    assert ranks[0]["raw"] == ranks[1]["raw"] == digest_file(folder / "raw.safetensors")
    assert ranks[0]["ema"] == ranks[1]["ema"] == digest_file(folder / "model.safetensors")
    # Each rank trained on its own shard: 64 samples per rank, 4 batches of 16 per epoch, disjoint.
    for step in range(6):
        a, b = ranks[0]["indices"][step], ranks[1]["indices"][step]
        assert len(a) == len(b) == 16 and not set(a) & set(b)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 6 and manifest["train_config"]["world_size"] == 2
    assert manifest["metrics"]["samples_seen"] == 6 * 16 * 2
