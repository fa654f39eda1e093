"""The public names of ddim_lib exist, are documented, and keep their meaning."""
from __future__ import annotations

import importlib
import inspect

import ddim_lib

ISSUE_NAMES = ["NoiseSchedule", "q_sample", "q_mean_var", "ddpm_posterior", "q_sigma_reverse",
               "q_sigma_forward", "sigma_eta", "sigma_hat", "predict_x0", "ddim_step", "timesteps",
               "sample", "ddpm_sample", "encode", "slerp", "theorem1_gamma", "GaussianMixture",
               "OracleEps", "build_model", "load_pretrained", "train", "frechet_distance"]


def test_every_public_name_resolves_and_is_documented():
    for name in ddim_lib.__all__:
        obj = getattr(ddim_lib, name)
        if callable(obj) and not isinstance(obj, dict):
            assert inspect.getdoc(obj), f"ddim_lib.{name} has no docstring"
    assert set(ISSUE_NAMES) <= set(ddim_lib.__all__)


def test_train_is_the_function_even_after_its_module_is_imported():
    importlib.import_module("ddim_lib.training")
    assert inspect.isfunction(ddim_lib.train)
    assert ddim_lib.TrainConfig.__name__ == "TrainConfig"


def test_unknown_attribute_raises_attribute_error():
    try:
        ddim_lib.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("expected AttributeError")
