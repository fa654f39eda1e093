"""The ``ddim`` command, run in-process through ``main([...])`` and, for a few cases, as a subprocess.

Two tiny checkpoints are trained once per module with ``ddim train`` itself (a 2-D MLP and the
digits UNet, a few steps each: their samples are poor, which does not matter here: the tests check
the wiring, the files and the error handling, and compare the CLI's numbers with direct library calls).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddim_lib import encode, sample, timesteps
from ddim_lib.checkpoint import find_checkpoint, load_checkpoint
from ddim_lib.cli import main
from ddim_lib.evaluate import frechet_distance

VERBS = ["train", "sample", "encode", "reconstruct", "interpolate", "evaluate", "list"]


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    argv = ["train", "--config", "toy2d", "--data", "two_moons", "--steps", "30", "--batch-size", "64",
            "--n-data", "512", "--out", str(out), "--no-progress", "--log-every", "10"]
    assert main(argv) == 0
    return out, argv


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    assert main(["train", "--config", "digits", "--steps", "2", "--batch-size", "8", "--n-data", "64",
                 "--out", str(out), "--no-progress", "--log-every", "1"]) == 0
    return out


def run(argv, capsys):
    """(exit status, stdout, stderr) of main(argv)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- help and errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", [None, *VERBS])
def test_help_for_every_verb(verb, capsys):
    code, out, err = run([verb, "--help"] if verb else ["--help"], capsys)
    assert code == 0 and err == ""
    assert out.startswith(f"usage: ddim {verb}" if verb else "usage: ddim")


def test_help_as_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "ddim_lib.cli", "sample", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--pretrained" in proc.stdout and "--eta" in proc.stdout


def bad_inputs(tmp_path, toy):
    """(argv, a fragment of the expected message) for inputs that must fail with one line."""
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3), np.float32))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    folder = find_checkpoint(toy)
    (corrupt / "manifest.json").write_text((folder / "manifest.json").read_text())
    (corrupt / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    ck = ["--checkpoint", toy]
    return [
        (["sample", "--checkpoint", tmp_path / "nowhere"], "does not exist"),
        (["sample", "--checkpoint", tmp_path], "manifest.json"),
        (["sample", "--checkpoint", corrupt], "model.safetensors"),
        (["sample", "--pretrained", "no-such-model"], "unknown pretrained model"),
        (["sample"], "exactly one of --checkpoint"),
        (["sample", *ck, "--pretrained", "digits"], "exactly one of --checkpoint"),
        (["sample", *ck, "--out", tmp_path / "x.jpg"], ".png"),
        (["sample", *ck, "--n", 0], "--n must be a positive"),
        (["sample", *ck, "--steps", 5000], "1..T"),
        (["sample", *ck, "--eta", -1], "eta"),
        (["sample", *ck, "--eta", 1e300], "--eta"),
        (["sample", *ck, "--seed", 2**64], "--seed"),
        (["sample", *ck, "--device", "meta"], "not supported"),
        (["train", "--config", "toy2d", "--model-overrides", '{"hidden": "x"}', "--out", tmp_path / "m"], "model options"),
        (["sample", *ck, "--device", "tpu9"], "device"),
        (["train", "--config", "imagenet", "--out", tmp_path / "t"], "unknown preset"),
        (["train", "--config", "cifar10", "--steps", 1, "--out", tmp_path / "c"], "data root"),
        (["train", "--config", "toy2d", "--out", toy, "--steps", 1], "already holds a checkpoint"),
        (["encode", *ck, "--input", wrong, "--out", tmp_path / "z.npy"], "shape"),
        (["encode", *ck, "--input", tmp_path / "missing.npy", "--out", tmp_path / "z.npy"], "no input file"),
        (["interpolate", *ck, "--frames", 1, "--out", tmp_path / "i.png"], "frames"),
        (["evaluate", "--samples", tmp_path / "missing.npy", "--data", "two_moons"], "no samples file"),
        (["evaluate", "--samples", wrong, "--data", "two_moons"], "shape"),
        (["evaluate", "--samples", wrong], "--data"),
        (["evaluate", *ck, "--features", "clip", "--n", 10, "--steps", 2], "unknown features"),
        (["evaluate", "--samples", wrong, "--data", "digits", "--n", 1000], "too large"),
    ]


def test_bad_inputs_give_one_line_and_a_nonzero_exit(tmp_path, toy_ckpt, capsys):
    for argv, fragment in bad_inputs(tmp_path, toy_ckpt[0]):
        code, out, err = run(argv, capsys)
        shown = " ".join(map(str, argv))
        assert code == 1, shown
        assert len(err.splitlines()) == 1 and err.startswith("ddim: error: "), (shown, err)
        assert fragment in err, (shown, err)
        assert "Traceback" not in err + out, shown


def test_usage_errors_exit_2_without_traceback(capsys):
    for argv in (["sample", "--steps", "abc"], ["fly"], ["sample", "--spacing", "cubic"],
                 ["train", "--model-overrides", "[1, 2]"]):
        code, _, err = run(argv, capsys)
        assert code == 2 and "Traceback" not in err and "error:" in err


def test_bad_input_as_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ddim_lib.cli", "sample", "--checkpoint", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ddim: error:") and "Traceback" not in proc.stderr


# ---- train, then sample ------------------------------------------------------------------------------
def test_train_records_the_command(toy_ckpt):
    out, argv = toy_ckpt
    manifest = json.loads((find_checkpoint(out) / "manifest.json").read_text())
    assert manifest["command"] == shlex.join(["ddim", *argv])
    assert [leg["command"] for leg in manifest["legs"]] == [shlex.join(["ddim", *argv])]
    assert manifest["step"] == 30 and manifest["data"] == "two_moons"


def test_sample_2d_writes_a_scatter_png_and_the_array(toy_ckpt, tmp_path, capsys):
    png = tmp_path / "out" / "moons.png"
    code, out, _ = run(["sample", "--checkpoint", toy_ckpt[0], "--steps", 10, "--n", 100, "--out", png], capsys)
    assert code == 0 and "100 samples" in out
    x = np.load(png.with_suffix(".npy"))
    assert x.shape == (100, 2) and np.isfinite(x).all()
    assert Image.open(png).format == "PNG"
    # eta = 0 is deterministic given the seed, and equals the library's sampler from the same x_T
    model, schedule, _ = load_checkpoint(toy_ckpt[0])
    x_T = torch.randn((100, 2), generator=torch.Generator().manual_seed(0))
    expected = sample(model, x_T, schedule, timesteps(1000, 10))
    np.testing.assert_allclose(x, expected.numpy(), rtol=0, atol=1e-6)


def test_sample_options_reach_the_sampler(toy_ckpt, tmp_path, capsys):
    """A different seed, eta > 0, sigma_hat and quadratic spacing all change the samples."""
    arrays = {}
    for name, extra in {"base": [], "seed": ["--seed", 1], "eta": ["--eta", 1], "hat": ["--variance", "sigma_hat"],
                        "quad": ["--spacing", "quadratic"]}.items():
        png = tmp_path / f"{name}.png"
        assert run(["sample", "--checkpoint", toy_ckpt[0], "--steps", 5, "--n", 20, "--out", png, *extra],
                   capsys)[0] == 0
        arrays[name] = np.load(png.with_suffix(".npy"))
    for name in ("seed", "eta", "hat", "quad"):
        assert np.abs(arrays[name] - arrays["base"]).max() > 1e-3, name


def test_sample_digits_writes_an_image_grid(digits_ckpt, tmp_path, capsys):
    png = tmp_path / "digits.png"
    code, _, _ = run(["sample", "--checkpoint", digits_ckpt, "--steps", 3, "--n", 6, "--out", png], capsys)
    assert code == 0
    x = np.load(png.with_suffix(".npy"))
    assert x.shape == (6, 1, 8, 8) and np.isfinite(x).all()
    image = Image.open(png)
    # 6 samples -> 3 columns x 2 rows of 32-pixel cells (8 px upscaled 4x) with 2-pixel gaps
    assert image.mode == "L" and image.size == (3 * 34 + 2, 2 * 34 + 2)


# ---- inversion, reconstruction, interpolation ----------------------------------------------------------
def test_encode_and_reconstruct_match_the_library(toy_ckpt, tmp_path, capsys):
    points = torch.tensor([[0.5, 0.2], [-1.0, 0.4], [1.2, -0.3], [0.0, 0.0]])
    inp = tmp_path / "points.npy"
    np.save(inp, points.numpy())
    model, schedule, _ = load_checkpoint(toy_ckpt[0])
    tau = timesteps(1000, 20, "quadratic")

    z_file = tmp_path / "z.npy"
    assert run(["encode", "--checkpoint", toy_ckpt[0], "--steps", 20, "--spacing", "quadratic",
                "--input", inp, "--out", z_file], capsys)[0] == 0
    z = encode(model, points, schedule, tau)
    np.testing.assert_allclose(np.load(z_file), z.numpy(), rtol=0, atol=1e-6)

    png = tmp_path / "recon.png"
    code, out, _ = run(["reconstruct", "--checkpoint", toy_ckpt[0], "--steps", 20, "--spacing", "quadratic",
                        "--input", inp, "--out", png], capsys)
    assert code == 0 and Image.open(png).format == "PNG"
    recon = np.load(png.with_suffix(".npy"))
    np.testing.assert_allclose(recon, sample(model, z, schedule, tau).numpy(), rtol=0, atol=1e-5)
    mse = float(((recon.astype(np.float64) - points.numpy()) ** 2).mean())
    assert f"MSE {mse:.3e}" in out


def test_reconstruct_digits_from_the_data_set(digits_ckpt, tmp_path, capsys):
    png = tmp_path / "recon.png"
    code, out, _ = run(["reconstruct", "--checkpoint", digits_ckpt, "--steps", 3, "--n", 4, "--out", png], capsys)
    assert code == 0 and "per dimension" in out
    assert np.load(png.with_suffix(".npy")).shape == (4, 1, 8, 8)
    assert Image.open(png).size == (4 * 34 + 2, 2 * 34 + 2)     # originals above reconstructions


def test_interpolate_endpoints_decode_the_given_latents(toy_ckpt, tmp_path, capsys):
    latents = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    z_file = tmp_path / "z.npy"
    np.save(z_file, latents.numpy())
    png = tmp_path / "interp.png"
    code, _, _ = run(["interpolate", "--checkpoint", toy_ckpt[0], "--steps", 10, "--frames", 5,
                      "--latents", z_file, "--out", png], capsys)
    assert code == 0 and Image.open(png).format == "PNG"
    frames = np.load(png.with_suffix(".npy"))
    assert frames.shape == (2, 5, 2)                                   # 4 latents -> 2 pairs (rows)
    model, schedule, _ = load_checkpoint(toy_ckpt[0])
    tau = timesteps(1000, 10)
    np.testing.assert_allclose(frames[:, 0], sample(model, latents[0::2], schedule, tau).numpy(), atol=1e-5)
    np.testing.assert_allclose(frames[:, -1], sample(model, latents[1::2], schedule, tau).numpy(), atol=1e-5)


def test_interpolate_digits_strip(digits_ckpt, tmp_path, capsys):
    png = tmp_path / "strip.png"
    assert run(["interpolate", "--checkpoint", digits_ckpt, "--steps", 2, "--frames", 4, "--rows", 2,
                "--out", png], capsys)[0] == 0
    assert np.load(png.with_suffix(".npy")).shape == (2, 4, 1, 8, 8)
    assert Image.open(png).size == (4 * 34 + 2, 2 * 34 + 2)


# ---- evaluation ----------------------------------------------------------------------------------------------
def test_evaluate_a_model_end_to_end(toy_ckpt, tmp_path, capsys):
    report = tmp_path / "fd.json"
    code, out, _ = run(["evaluate", "--checkpoint", toy_ckpt[0], "--steps", 5, "--n", 100, "--json", report], capsys)
    assert code == 0 and "pixel" in out
    result = json.loads(report.read_text())
    assert result["n"] == 100 and result["data"] == "two_moons" and result["steps"] == 5
    fd = result["fd"]["pixel"]
    assert fd["samples"] > 0 and fd["reference"] > 0
    assert fd["ratio"] == pytest.approx(fd["samples"] / fd["reference"])


def test_evaluate_saved_samples_with_digits_features(tmp_path, capsys):
    """Uniform noise scored against the digits: far worse than two real halves, in both feature spaces;
    and the reported number is the Frechet distance of the file's first n rows to n real digits."""
    noise = np.random.default_rng(0).uniform(-1, 1, (300, 1, 8, 8)).astype(np.float32)
    path = tmp_path / "noise.npy"
    np.save(path, noise)
    report = tmp_path / "fd.json"
    code, out, _ = run(["evaluate", "--samples", path, "--data", "digits", "--n", 200, "--json", report], capsys)
    assert code == 0
    fd = json.loads(report.read_text())["fd"]
    assert set(fd) == {"pixel", "digits"}
    assert fd["pixel"]["ratio"] > 5 and fd["digits"]["ratio"] > 5
    # the same number by hand: n real digits drawn by the documented seeded permutation (seed + 1)
    from ddim_lib.data import load_dataset
    data = load_dataset("digits")
    real = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[:200]]
    expected = frechet_distance(noise[:200].reshape(200, -1), real.reshape(200, -1).numpy())
    assert fd["pixel"]["samples"] == pytest.approx(expected, rel=1e-9)
