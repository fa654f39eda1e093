"""GPU readiness: the code paths ``ddim train`` takes on CUDA, run where they can run.

On any machine (CPU): bfloat16 autocast of a training step, channels_last convolutions, fused Adam
and torch.compile, each against the plain float32 path. Only where CUDA exists (skipped otherwise):
bf16 training steps on the GPU, CUDA sampling against a float64 CPU reference with a stated tolerance,
torch.compile on CUDA, and nccl DDP when two GPUs exist. ``scripts/gpu_check.sh`` runs this file and
the GPU variants of the training benchmark.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import ddim_lib.training as tr
from ddim_lib import sample, timesteps
from ddim_lib.checkpoint import find_checkpoint, load_checkpoint
from ddim_lib.models import build_model
from ddim_lib.pretrained import load_pretrained

TINY_UNET = dict(preset="digits", batch_size=8, n_data=64, progress=False, log_every=2, ckpt_every=4,
                 model_overrides={"ch": 32, "ch_mult": (1,), "num_res_blocks": 1, "attn_resolutions": (8,), "dropout": 0.0})
TOY = dict(preset="toy2d", batch_size=32, n_data=320, model_overrides={"hidden": 32, "depth": 2, "temb_dim": 16},
           progress=False, log_every=2, ckpt_every=4)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run scripts/gpu_check.sh on a GPU machine)")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")

pytestmark = pytest.mark.usefixtures("single_thread")


def unet_and_batch(seed=0, batch=8):
    torch.manual_seed(seed)
    model = build_model("digits", **TINY_UNET["model_overrides"])
    g = torch.Generator().manual_seed(seed + 1)
    x0 = torch.randn(batch, 1, 8, 8, generator=g).clamp(-1, 1)
    t = torch.randint(0, 1000, (batch,), generator=g)
    noise = torch.randn(batch, 1, 8, 8, generator=g)
    return model, x0, t, noise


def one_step(model, x0, t, noise, bf16=False, fused=True):
    """tr._optimise on a copy of ``model``: (loss, the updated model)."""
    model = copy.deepcopy(model)
    ema = copy.deepcopy(model).requires_grad_(False)
    r = tr._resolve(tr.TrainConfig(**TINY_UNET, steps=1, warmup=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=r.lr, fused=fused)
    ab = torch.linspace(0.999, 0.01, 1000)
    loss, _ = tr._optimise(model, model, ema, optimizer, (x0, t, noise, ab.sqrt(), (1 - ab).sqrt()), 0, r, bf16=bf16)
    return loss.item(), model


def max_diff(a, b):
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def grad_rel_diff(a, b):
    """||grad_a - grad_b|| / ||grad_b|| over all parameters (the gradients _optimise left behind).

    Weights after one Adam step are no fair comparison: Adam's first step moves every weight by
    lr * sign(gradient), so a round-off that flips the sign of a near-zero gradient moves it by 2 lr."""
    ga = torch.cat([p.grad.flatten() for p in a.parameters()])
    gb = torch.cat([p.grad.flatten() for p in b.parameters()])
    return ((ga - gb).norm() / gb.norm()).item()


# ---- CUDA paths that also run on a CPU ----------------------------------------------------------------------
def test_bf16_autocast_training_step_on_cpu():
    """The autocast branch of _optimise: the bf16 loss is within 3% of float32 (bf16 keeps 8 bits of
    mantissa, a relative round-off of 2^-8 = 0.4% per operation), and its gradient is within 10%."""
    model, x0, t, noise = unet_and_batch()
    loss32, after32 = one_step(model, x0, t, noise, bf16=False)
    loss16, after16 = one_step(model, x0, t, noise, bf16=True)
    assert abs(loss16 - loss32) <= 0.03 * loss32
    assert max_diff(after32, model) > 0 and grad_rel_diff(after16, after32) < 0.1   # the same step, up to bf16
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in after16.parameters())


def test_channels_last_gives_the_same_model_and_step():
    model, x0, t, noise = unet_and_batch()
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_nhwc = x0.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(nhwc.eval()(x_nhwc, t), model.eval()(x0, t), atol=1e-5, rtol=1e-5)
    loss_a, a = one_step(model, x0, t, noise)
    loss_b, b = one_step(nhwc, x_nhwc, t, noise.contiguous(memory_format=torch.channels_last))
    assert loss_a == pytest.approx(loss_b, rel=1e-5) and grad_rel_diff(b, a) < 1e-4


def test_fused_adam_matches_the_per_tensor_adam():
    model, x0, t, noise = unet_and_batch()
    _, fused = one_step(model, x0, t, noise, fused=True)
    _, plain = one_step(model, x0, t, noise, fused=False)
    assert max_diff(fused, plain) < 1e-6


@pytest.mark.slow
def test_torch_compile_training_matches_eager_on_cpu(tmp_path):
    """``ddim train --compile`` on the CPU (inductor, gcc): 4 steps, weights within float32 round-off of eager."""
    tr.train(tr.TrainConfig(**TOY, steps=4, out=str(tmp_path / "eager"), device="cpu"))
    tr.train(tr.TrainConfig(**TOY, steps=4, out=str(tmp_path / "compiled"), device="cpu", compile=True))
    a, b = (load_checkpoint(tmp_path / name, ema=False)[0] for name in ("eager", "compiled"))
    assert max_diff(a, b) < 1e-4


# ---- only where CUDA exists -------------------------------------------------------------------------------------
@cuda
def test_bf16_training_steps_on_cuda(tmp_path):
    """bf16 autocast, channels_last and fused Adam on the GPU: 12 steps, finite weights, a checkpoint
    that loads on the CPU, and a loss no worse than the untrained model's on fixed data."""
    out = tmp_path / "run"
    tr.train(tr.TrainConfig(**{**TINY_UNET, "n_data": None, "batch_size": 64}, steps=40, lr=1e-3, warmup=0,
                            out=str(out), device="cuda", bf16=True))
    model, schedule, manifest = load_checkpoint(out)
    assert manifest["step"] == 40 and all(torch.isfinite(p).all() for p in model.parameters())
    rows = [json.loads(line) for line in (out / tr.LOG_FILE).read_text().splitlines()]
    assert all(0 < r["loss"] < 2 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]


@cuda
def test_cuda_sampling_matches_a_float64_cpu_reference():
    """DDIM (S = 50, eta = 0) with the shipped digits UNet: the CUDA float32 result (TF32 off) may differ
    from the float64 CPU reference by at most 10x the CPU float32 result's own difference (and 1e-4)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model, schedule = load_pretrained("digits")
        x_T = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        tau = timesteps(schedule.T, 50)
        ref = sample(copy.deepcopy(model).double(), x_T, schedule, tau)
        cpu32 = sample(model, x_T.float(), schedule, tau).double()
        gpu32 = sample(copy.deepcopy(model).cuda(), x_T.float().cuda(), schedule.to("cuda"), tau).cpu().double()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    cpu_err, gpu_err = (cpu32 - ref).abs().max().item(), (gpu32 - ref).abs().max().item()
    print(f"max |x_0 - float64 reference|: CPU float32 {cpu_err:.2e}, CUDA float32 {gpu_err:.2e}")
    assert gpu_err <= max(10 * cpu_err, 1e-4)


@cuda
@pytest.mark.slow
def test_torch_compile_training_on_cuda(tmp_path):
    tr.train(tr.TrainConfig(**TINY_UNET, steps=8, out=str(tmp_path / "run"), device="cuda", compile=True))
    model, _, manifest = load_checkpoint(tmp_path / "run")
    assert manifest["step"] == 8 and all(torch.isfinite(p).all() for p in model.parameters())


RANK_SCRIPT = r'''
import hashlib, json, os, sys
import torch
import ddim_lib.training as tr
live = {}
real = tr._ema_update
def spy(ema, model, decay):
    live["raw"], live["ema"] = model, ema
    real(ema, model, decay)
tr._ema_update = spy
tr.train(tr.TrainConfig(preset="digits", steps=6, out=sys.argv[1], batch_size=16, n_data=128, progress=False,
                        log_every=2, ckpt_every=3, device="cuda", model_overrides={"ch": 32, "ch_mult": [1]}))
def digest(module):
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode()); h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()
rank = int(os.environ["RANK"])
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump({"raw": digest(live["raw"]), "ema": digest(live["ema"]), "backend": torch.distributed.get_backend()
               if torch.distributed.is_initialized() else "nccl"}, f)
'''


@two_gpus
def test_nccl_ddp_on_two_gpus_ends_with_identical_weights(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(out), str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["raw"] == ranks[1]["raw"] and ranks[0]["ema"] == ranks[1]["ema"]
    manifest = json.loads((find_checkpoint(out) / "manifest.json").read_text())
    assert manifest["step"] == 6 and manifest["train_config"]["world_size"] == 2
