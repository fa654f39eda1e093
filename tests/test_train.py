"""The training loop: L_simple, warm-up, EMA, the random draws, learning, logs and manifests, bad
configurations, divergence, and exact resume (in process, and after SIGKILL in a subprocess)."""
import json
import math
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ddim_lib.training as tr
from ddim_lib import GaussianMixture, NoiseSchedule, OracleEps
from ddim_lib.checkpoint import CheckpointError, find_checkpoint, has_checkpoint, load_checkpoint
from ddim_lib.training import NonFiniteLossError, TrainConfig, l_simple, train

TOY = dict(preset="toy2d", batch_size=32, n_data=320, model_overrides={"hidden": 32, "depth": 2, "temb_dim": 16},
           progress=False, log_every=5, ckpt_every=10)
# A one-level UNet with attention and dropout on digits, with flips switched on to exercise them.
TINY_UNET = dict(preset="digits", batch_size=8, n_data=64, hflip=True, progress=False, log_every=3, ckpt_every=4,
                 model_overrides={"ch": 32, "ch_mult": (1,), "num_res_blocks": 1, "attn_resolutions": (8,)})


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


def tables(schedule):
    return schedule.alpha_bars.sqrt(), (1 - schedule.alpha_bars).sqrt()


# ---- the objective -------------------------------------------------------------------------------
def test_l_simple_is_the_mean_squared_noise_error():
    schedule = NoiseSchedule.linear()
    sqrt_ab, sqrt_1m_ab = tables(schedule)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(16, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(16, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (16,), generator=g)
    assert l_simple(lambda x, t: torch.zeros_like(x), x0, t, noise, sqrt_ab, sqrt_1m_ab).item() == pytest.approx(
        noise.square().mean().item(), rel=1e-6)    # float32 loss of float64 inputs
    abar = schedule.alpha_bars[t].view(-1, 1, 1, 1)

    def knows_x0(x_t, t):                           # eps recovered from x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    assert l_simple(knows_x0, x0, t, noise, sqrt_ab, sqrt_1m_ab).item() < 1e-10


def test_l_simple_of_the_exact_denoiser_on_gaussian_data():
    # x0 ~ N(0, s^2 I): E[eps | x_t] is linear and its error per dimension is abar s^2 / (abar s^2 + 1 - abar).
    # Monte Carlo over 40 independent chunks; the check allows 4 standard errors.
    s, d, T = 0.5, 2, 1000
    schedule = NoiseSchedule.linear(T)
    oracle = OracleEps(GaussianMixture(torch.zeros(1, d), s), schedule)
    sqrt_ab, sqrt_1m_ab = tables(schedule)
    g = torch.Generator().manual_seed(1)
    chunks = []
    for _ in range(40):
        x0 = s * torch.randn(500, d, generator=g, dtype=torch.float64)
        t = torch.randint(0, T, (500,), generator=g)
        chunks.append(l_simple(oracle, x0, t, torch.randn(500, d, generator=g, dtype=torch.float64), sqrt_ab, sqrt_1m_ab).item())
    a = schedule.alpha_bars
    exact = (a * s**2 / (a * s**2 + 1 - a)).mean().item()
    se = np.std(chunks, ddof=1) / math.sqrt(len(chunks))
    assert abs(np.mean(chunks) - exact) < 4 * se


def test_learning_rate_warm_up():
    assert [tr._lr_at(k, 1.0, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert tr._lr_at(0, 2e-4, 0) == 2e-4


def test_ema_update_is_the_convex_combination():
    torch.manual_seed(0)
    ema, model = torch.nn.Linear(3, 2).double(), torch.nn.Linear(3, 2).double()
    before = [p.clone() for p in ema.parameters()]
    tr._ema_update(ema, model, 0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p, rtol=1e-15, atol=1e-15)


def test_sampler_visits_every_sample_once_per_epoch_and_splits_ranks():
    n, b = 50, 4
    for world in (1, 2):
        samplers = [tr._Sampler(n, b, seed=3, rank=r, world=world) for r in range(world)]
        per_epoch = samplers[0].steps_per_epoch
        assert per_epoch == (n // world) // b
        for epoch in range(2):
            seen = torch.cat([s.indices(epoch * per_epoch + i) for s in samplers for i in range(per_epoch)])
            assert len(set(seen.tolist())) == len(seen) == per_epoch * b * world     # disjoint, no repeats
    a, c = tr._Sampler(n, b, 3, 0, 1), tr._Sampler(n, b, 3, 0, 1)
    assert not torch.equal(a.indices(0), a.indices(a.steps_per_epoch))          # a new order each epoch
    assert torch.equal(c.indices(a.steps_per_epoch), a.indices(a.steps_per_epoch))
    with pytest.raises(ValueError, match="exceeds"):
        tr._Sampler(10, 8, 0, 0, 2)


def test_the_loop_draws_uniform_t_standard_noise_and_every_sample(tmp_path, monkeypatch):
    seen = []
    real = tr.l_simple

    def spy(model, x0, t, noise, *tables):
        seen.append((x0.clone(), t.clone(), noise.clone()))
        return real(model, x0, t, noise, *tables)
    monkeypatch.setattr(tr, "l_simple", spy)
    train(TrainConfig(**{**TOY, "steps": 20, "ckpt_every": 20}, out=str(tmp_path / "run")))
    data = tr.load_dataset("swiss_roll", n=320, generator=tr._generator(torch.device("cpu"), 0, 2))
    for epoch in range(2):                       # 10 steps of 32 per epoch: each point exactly once
        rows = torch.cat([x0 for x0, _, _ in seen[10 * epoch:10 * (epoch + 1)]])
        assert torch.equal(rows[torch.argsort(rows[:, 0])], data[torch.argsort(data[:, 0])])
    t = torch.cat([t for _, t, _ in seen])
    noise = torch.cat([z for _, _, z in seen]).flatten()
    assert t.min() >= 0 and t.max() <= 999
    # 640 draws of t in 4 bins of 250: chi-square with 3 degrees of freedom below its 0.999 quantile 16.3.
    counts = torch.bincount(t // 250, minlength=4).double()
    assert ((counts - 160) ** 2 / 160).sum() < 16.3
    # 1280 standard normals: mean within 4 / sqrt(1280), variance within 4 sqrt(2 / 1280).
    assert abs(noise.mean()) < 4 / math.sqrt(1280) and abs(noise.var() - 1) < 4 * math.sqrt(2 / 1280)


# ---- a real run ------------------------------------------------------------------------------------
def eval_loss(model, schedule, data, seed=0):
    """L_simple on fixed data, t and noise (common random numbers for a fair comparison)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, schedule.T, (len(data),), generator=g)
    noise = torch.randn(data.shape, generator=g)
    sqrt_ab, sqrt_1m_ab = (v.float() for v in tables(schedule))
    with torch.no_grad():
        return l_simple(model, data, t, noise, sqrt_ab, sqrt_1m_ab).item()


def test_training_learns_and_records_its_run(tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(**{**TOY, "n_data": None, "batch_size": 128, "log_every": 50, "ckpt_every": 200},
                         steps=400, lr=3e-3, warmup=20, out=str(out), command="ddim train --preset toy2d")
    assert train(config) == out
    model, schedule, manifest = load_checkpoint(out)
    data = tr.load_dataset("swiss_roll", n=4096, generator=torch.Generator().manual_seed(123))
    torch.manual_seed(0)
    untrained = tr.build_model("toy2d", **TOY["model_overrides"]).eval()
    # Predicting eps = 0 scores E||eps||^2 / d = 1; the trained EMA model must be far better than that
    # and than its initialisation (the swiss roll's optimum is about 0.35 on this schedule).
    assert eval_loss(model, schedule, data) < 0.6 < eval_loss(untrained, schedule, data)
    assert manifest["step"] == 400 and manifest["command"] == "ddim train --preset toy2d"
    assert manifest["train_config"]["lr"] == 3e-3 and manifest["train_config"]["batch_size"] == 128
    assert manifest["data"] == "swiss_roll" and manifest["metrics"]["samples_seen"] == 400 * 128
    rows = [json.loads(line) for line in (out / tr.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(50, 401, 50))
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[0]["lr"] == 3e-3   # warm-up ended at step 20
    assert rows[-1]["loss"] == pytest.approx(manifest["metrics"]["loss"])


# ---- bad configurations ------------------------------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    ({"preset": "imagenet"}, "known presets"), ({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"),
    ({"ema_decay": 1.0}, "ema_decay"), ({"batch_size": 0}, "batch_size"), ({"warmup": -1}, "warmup"),
    ({"batch_size": 1000}, "exceeds"), ({"data": "digits"}, "shape"), ({"device": "gpu7"}, "invalid device"),
])
def test_bad_configurations_raise_value_error(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(**{**TOY, "steps": 2, **change}, out=str(tmp_path / "run")))


def test_an_existing_checkpoint_is_never_overwritten_or_resumed_wrongly(tmp_path):
    out = str(tmp_path / "run")
    train(TrainConfig(**TOY, steps=10, out=out))
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(TrainConfig(**TOY, steps=20, out=out))
    with pytest.raises(ValueError, match="seed"):
        train(TrainConfig(**TOY, steps=20, out=out, resume=True, seed=1))
    with pytest.raises(ValueError, match="batch_size"):
        train(TrainConfig(**{**TOY, "batch_size": 16}, steps=20, out=out, resume=True))
    assert load_checkpoint(out)[2]["step"] == 10


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = tr.l_simple, []

    def poisoned(*args):                            # the 13th step's loss is NaN
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 13 else loss
    monkeypatch.setattr(tr, "l_simple", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"between steps 11 and 15; the last checkpoint with finite weights \(step 10\)"):
        train(TrainConfig(**TOY, steps=30, out=str(out)))
    model, _, manifest = load_checkpoint(out)
    assert manifest["step"] == 10 and all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((out / tr.LOG_FILE).read_text().splitlines()[-1])["event"] == "non-finite loss or gradient"


def test_diverging_weights_are_caught_after_the_update_and_never_saved(tmp_path):
    """An absurd learning rate: the loss of the first steps is finite, the weights after them are not."""
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="non-finite weights after the update between steps 1 and 1; "
                                                 "no checkpoint was written"):
        train(TrainConfig(**{**TOY, "log_every": 1, "ckpt_every": 1}, steps=5, lr=1e39, warmup=0,
                          grad_clip=1e30, out=str(out)))
    assert not has_checkpoint(out)


def test_one_writer_per_run_directory(tmp_path):
    out = tmp_path / "run"
    with tr.RunLock(out):                            # another run holds the directory
        with pytest.raises(CheckpointError, match="another training run is writing to"):
            train(TrainConfig(**TOY, steps=10, out=str(out)))
    assert not has_checkpoint(out)
    train(TrainConfig(**TOY, steps=10, out=str(out)))


def test_resume_refuses_changed_hyper_parameters_and_keeps_every_leg(tmp_path, capsys):
    out = str(tmp_path / "run")
    train(TrainConfig(**TOY, steps=10, out=out, command="leg 1"))
    for change, match in [({"lr": 0.1}, "lr = 0.001, not 0.1"), ({"ema_decay": 0.9}, "ema_decay"),
                          ({"warmup": 3}, "warmup"), ({"grad_clip": 5.0}, "grad_clip")]:
        with pytest.raises(ValueError, match=f"{match}.*--allow-config-change"):
            train(TrainConfig(**{**TOY, **change}, steps=20, out=out, resume=True))
    with pytest.raises(ValueError, match="preset 'toy2d', not 'digits'"):        # not a raw.safetensors error
        train(TrainConfig(**{**TINY_UNET, "n_data": 64}, steps=20, out=out, resume=True))
    with pytest.raises(ValueError, match="model_overrides"):
        train(TrainConfig(**{**TOY, "model_overrides": {"hidden": 16}}, steps=20, out=out, resume=True,
                          allow_config_change=True))
    train(TrainConfig(**{**TOY, "lr": 5e-4}, steps=20, out=out, resume=True, allow_config_change=True,
                      command="leg 2"))
    manifest = load_checkpoint(out)[2]
    assert [(leg["from_step"], leg["to_step"], leg["command"], leg["train_config"]["lr"]) for leg in manifest["legs"]] \
        == [(0, 10, "leg 1", 1e-3), (10, 20, "leg 2", 5e-4)]
    with pytest.raises(ValueError, match="at step 20, past the target steps = 15"):
        train(TrainConfig(**{**TOY, "lr": 5e-4}, steps=15, out=out, resume=True))
    capsys.readouterr()
    train(TrainConfig(**{**TOY, "lr": 5e-4}, steps=20, out=out, resume=True))
    assert "already at step 20 = the target steps; nothing to train" in capsys.readouterr().err
    assert load_checkpoint(out)[2]["step"] == 20


def test_the_log_is_never_written_through_a_symlink(tmp_path):
    out, outside = tmp_path / "run", tmp_path / "outside.txt"
    out.mkdir()
    outside.write_text("precious\n")
    (out / tr.LOG_FILE).symlink_to(outside)
    with pytest.raises(CheckpointError, match="symlink"):
        train(TrainConfig(**TOY, steps=10, out=str(out)))
    assert outside.read_text() == "precious\n"


# ---- exact resume -------------------------------------------------------------------------------------
def assert_same_run(a, b):
    a, b = find_checkpoint(a), find_checkpoint(b)
    for name in ("model.safetensors", "raw.safetensors"):
        sa, sb = load_file(a / name), load_file(b / name)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    oa, ob = (torch.load(d / "optimizer.pt", weights_only=True)["optimizer"]["state"] for d in (a, b))
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    steps = [json.loads(r)["step"] for r in (b.parent / tr.LOG_FILE).read_text().splitlines()]
    assert steps == sorted(set(steps))               # no duplicated rows after the resume


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def whole_unet_run(tmp_path_factory):
    """The tiny UNet trained for 12 steps without interruption (shared by the resume tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("unet") / "whole"
    train(TrainConfig(**TINY_UNET, steps=12, out=str(out)))
    torch.set_num_threads(before)
    return out


@pytest.mark.parametrize("stop_at", [3, 6, 9])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, monkeypatch, stop_at, whole_unet_run):
    """The tiny UNet (dropout, flips) stopped after step ``stop_at`` and resumed from step 0, 4 or 8."""
    real, calls = tr.l_simple, []

    def stopping(*args):
        calls.append(1)
        if len(calls) > stop_at:
            raise Interrupt
        return real(*args)
    monkeypatch.setattr(tr, "l_simple", stopping)
    with pytest.raises(Interrupt):
        train(TrainConfig(**TINY_UNET, steps=12, out=str(tmp_path / "split")))
    monkeypatch.setattr(tr, "l_simple", real)
    if stop_at < 4:                                    # killed before any checkpoint: starts afresh
        assert not has_checkpoint(tmp_path / "split")
    train(TrainConfig(**TINY_UNET, steps=12, out=str(tmp_path / "split"), resume=True))
    assert_same_run(whole_unet_run, tmp_path / "split")


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    config = {**TOY, "ckpt_every": 10}
    script = ("import sys, torch; torch.set_num_threads(1); "
              "from ddim_lib.training import train, TrainConfig; "
              f"train(TrainConfig(**{config!r}, steps=int(sys.argv[2]), out=sys.argv[1], resume=True))")
    steps = 150
    train(TrainConfig(**config, steps=steps, out=str(tmp_path / "whole")))
    split = tmp_path / "split"
    proc = subprocess.Popen([sys.executable, "-c", script, str(split), str(steps)])
    try:
        deadline = time.monotonic() + 120
        while not has_checkpoint(split):                    # wait for a first checkpoint ...
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        time.sleep(random.Random(0).uniform(0.0, 0.1))      # ... then kill it at an arbitrary moment
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        proc.kill()
    killed_at = load_checkpoint(split)[2]["step"]
    assert 10 <= killed_at < steps
    train(TrainConfig(**config, steps=steps, out=str(split), resume=True))   # resumed here, from disk only
    assert_same_run(tmp_path / "whole", split)


@pytest.mark.parametrize("hflip", [True, False])
def test_flips_mirror_about_half_the_images_only_when_asked(tmp_path, monkeypatch, hflip):
    seen, real = [], tr.l_simple

    def spy(model, x0, *rest):
        seen.append(x0.clone())
        return real(model, x0, *rest)
    monkeypatch.setattr(tr, "l_simple", spy)
    train(TrainConfig(**{**TINY_UNET, "hflip": hflip, "batch_size": 32}, steps=4, out=str(tmp_path / "run")))
    data = tr.load_dataset("digits", n=64, generator=tr._generator(torch.device("cpu"), 0, 2))
    x0 = torch.cat(seen)                                                # 128 images
    as_is = (x0[:, None] == data[None]).flatten(2).all(-1).any(1)
    mirrored = (x0[:, None] == data.flip(-1)[None]).flatten(2).all(-1).any(1)
    assert (as_is | mirrored).all()                 # every image is a data image, possibly mirrored
    n_mirrored = (mirrored & ~as_is).sum().item()   # (a symmetric digit would count as not mirrored)
    if hflip:   # Binomial(128, 1/2) minus the few symmetric digits: within 40..88 with prob. > 0.9999
        assert 40 <= n_mirrored <= 88
    else:
        assert n_mirrored == 0
