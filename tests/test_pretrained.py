"""The shipped checkpoints: they load, sample finite values of the right shape, record how they were
made, and are good: DDIM samples sit close to the data in Frechet distance, measured against the
distance between two disjoint random halves of real data of the same size (the floor at that n).
"""
from __future__ import annotations

import json

import pytest
import torch

import ddim_lib
from ddim_lib import sample, timesteps
from ddim_lib.cli import main
from ddim_lib.data import load_dataset
from ddim_lib.evaluate import DigitsFeatures, frechet_distance, pixel_features
from ddim_lib.pretrained import PRETRAINED_DIR, list_pretrained, load_pretrained

SHIPPED = list_pretrained()
TOYS = [name for name in SHIPPED if name.startswith("toy2d-")]


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


def manifest(name: str) -> dict:
    return json.loads((PRETRAINED_DIR / name / "manifest.json").read_text())


def test_the_promised_models_are_shipped():
    assert "digits" in SHIPPED and len(TOYS) >= 2
    assert "digits_classifier" not in SHIPPED          # not a diffusion model


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_folder_is_small_and_self_describing(name):
    folder = PRETRAINED_DIR / name
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size < 5 * 2**20
    m = manifest(name)
    assert m["command"].startswith("ddim train --config ")
    assert isinstance(m["seed"], int) and len(m["git_commit"]) == 40
    assert m["metrics"]["fd"], "the manifest records its quality metrics"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_samples(name):
    model, schedule = ddim_lib.load_pretrained(name)
    assert not model.training and schedule.T == 1000
    shape = (1, 8, 8) if name == "digits" else (2,)
    x_T = torch.randn((8, *shape), generator=torch.Generator().manual_seed(0))
    x0 = sample(model, x_T, schedule, 10)
    assert x0.shape == (8, *shape) and torch.isfinite(x0).all()


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="digits"):
        load_pretrained("cifar10")


def test_ddim_list_shows_them(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHIPPED)


def fd_and_reference(samples, data, features, n, seed):
    """FD(samples, real half a) and FD(real half b, real half a) for disjoint halves of size n."""
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    real_a, real_b = data[perm[:n]], data[perm[n:2 * n]]
    return frechet_distance(features(samples), features(real_a)), frechet_distance(features(real_b), features(real_a))


def test_digits_model_is_close_to_the_data():
    """500 DDIM samples (S = 20, eta = 0, clamped to [-1, 1] as saved images are) vs 500 real digits.

    Seeds differ from the manifest's, so this is a fresh measurement. The manifest's numbers
    (seed 0, n = 500) are the justification of the bounds: see MAX_RATIO below.
    """
    model, schedule = load_pretrained("digits")
    x_T = torch.randn((500, 1, 8, 8), generator=torch.Generator().manual_seed(123))
    samples = sample(model, x_T, schedule, timesteps(1000, 20)).clamp(-1, 1)
    data = load_dataset("digits")
    for name, features in (("pixel", pixel_features), ("digits", DigitsFeatures())):
        fd, reference = fd_and_reference(samples, data, features, 500, seed=7)
        recorded = manifest("digits")["metrics"]["fd"]["ddim_S20"]["fd"][name]["ratio"]
        assert fd / reference < MAX_RATIO[name], (name, fd, reference, recorded)


@pytest.mark.parametrize("name", TOYS)
def test_toy_models_are_close_to_the_data(name):
    """2000 DDIM samples (S = 20) vs 2000 fresh points of the toy set, in the plane itself."""
    model, schedule = load_pretrained(name)
    x_T = torch.randn((2000, 2), generator=torch.Generator().manual_seed(123))
    samples = sample(model, x_T, schedule, timesteps(1000, 20))
    data = load_dataset(manifest(name)["data"], n=4000, generator=torch.Generator().manual_seed(11))
    fd, reference = fd_and_reference(samples, data, pixel_features, 2000, seed=7)
    assert fd / reference < MAX_RATIO["toy"], (name, fd, reference)


# Bounds on FD(samples) / FD(real halves), from measurements at S = 20, n = 500 (digits), 2000 (toys).
# Shipped manifests (seed 0): digits pixel 1.06, digits features 1.11; toy2d-swiss_roll 1.93,
# toy2d-two_moons 7.51. This file's seeds: digits pixel 1.10, digits features 0.79. The digits bounds
# leave a margin of about 1.6x for seed-to-seed noise, yet fail the same run's step-2000 checkpoint
# (the model shipped before the 20000-step one: pixel 2.36, features 1.99 with this file's seeds) and
# its step-1000 one (pixel 4.3 to 4.7). For the toys' scale: the latents themselves (N(0, I), no
# denoising) score ~60, the data shrunk by 10 % ~5; two_moons' 7.5 reflects a tiny reference (FD
# 0.0016) more than poor samples.
MAX_RATIO = {"pixel": 1.8, "digits": 1.8, "toy": 15.0}
