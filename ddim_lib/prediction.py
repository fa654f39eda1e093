"""Prediction types: what a network outputs at (x_t, t), and the exact conversions between them.

With x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps (eq. 4), a model may predict

* ``"eps"``: the noise eps (DDPM, DDIM: eps_theta of eq. 9);
* ``"x0"``: the clean sample x_0 (DDIM's f_theta, eq. 9);
* ``"v"``: the velocity v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022, sec. 4 and
  App. D), for which x_0 = sqrt(abar) x_t - sqrt(1 - abar) v and eps = sqrt(1 - abar) x_t + sqrt(abar) v.

Each is a linear function of (x_t, output); the map is invertible except at the ends of the
schedule: at abar = 0 (zero terminal SNR, Lin et al. 2023) x_t = eps carries no information about
x_0, so an "eps" output cannot give x_0 (eq. 9 divides by sqrt(abar)); at abar = 1, x_t = x_0 and an
"x0" output cannot give eps (divides by sqrt(1 - abar)). "v" is defined on all of [0, 1].
"""
from __future__ import annotations

import math

import torch

from ._util import as_float, expand_to

__all__ = ["PREDICTIONS", "to_eps_x0", "from_eps_x0", "convert_prediction"]

PREDICTIONS = ("eps", "x0", "v")


def check_prediction(prediction) -> str:
    """Return ``prediction`` if it is one of PREDICTIONS, else raise a ValueError naming it."""
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of 'eps', 'x0', 'v'; got {prediction!r}")
    return prediction


def check_defined(prediction: str, a_min: float, a_max: float, where: str = "") -> None:
    """Raise a ValueError when ``prediction`` cannot give both eps and x_0 for abar in [a_min, a_max]."""
    if prediction == "eps" and a_min <= 0:
        raise ValueError(
            f"an 'eps' prediction cannot give x_0 at alpha_bar = 0{where}: eq. 9's "
            "x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) is undefined there (with zero terminal SNR, "
            "Lin et al. 2023, x_T = eps carries no signal); use a 'v' or 'x0' model")
    if prediction == "x0" and a_max >= 1:
        raise ValueError(f"an 'x0' prediction cannot give eps at alpha_bar = 1{where}: "
                         "eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar) is undefined there")


def conversion_coefficients(a: float, prediction: str) -> tuple[float, float, float, float]:
    """(e_x, e_o, z_x, z_o) with eps = e_x x_t + e_o output and x0 = z_x x_t + z_o output at abar = a.

    Plain Python floats, so a sampler computes them once per step before its loop. The caller
    guarantees ``check_defined`` holds for ``a``.
    """
    sa, sb = math.sqrt(a), math.sqrt(1 - a)
    if prediction == "eps":     # eps = out;  x0 = (x - sb out) / sa                      (eq. 9)
        return 0.0, 1.0, 1 / sa, -sb / sa
    if prediction == "x0":      # x0 = out;   eps = (x - sa out) / sb                     (eq. 9 for eps)
        return 1 / sb, -sa / sb, 0.0, 1.0
    return sb, sa, sa, -sb      # v: eps = sb x + sa v;  x0 = sa x - sb v               (Salimans & Ho)


def _checked_alpha_bar(a_t, x: torch.Tensor) -> torch.Tensor:
    a = as_float(a_t)
    if not torch.isfinite(a).all() or (a < 0).any() or (a > 1).any():
        raise ValueError(f"a_t must lie in [0, 1], got {a.tolist() if a.numel() < 8 else a}")
    return expand_to(a, x)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        raise ValueError(f"{name_a} and {name_b} must be tensors")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}")


def to_eps_x0(output: torch.Tensor, x_t: torch.Tensor, a_t, prediction: str = "eps"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (eps, x0) pair implied by a model ``output`` of type ``prediction`` at x_t, abar = a_t.

    "eps": x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (eq. 9); "x0": eps = (x_t - sqrt(a_t) x0) /
    sqrt(1 - a_t); "v": eps = sqrt(1 - a_t) x_t + sqrt(a_t) v, x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v
    (Salimans & Ho 2022). x_t, output of shape (B, ...); a_t a scalar or (B,) in [0, 1]. Raises a
    ValueError where the pair is undefined: "eps" at a_t = 0, "x0" at a_t = 1.
    """
    check_prediction(prediction)
    _check_same_shape(output, x_t, "output", "x_t")
    a = _checked_alpha_bar(a_t, x_t)
    check_defined(prediction, a.min().item(), a.max().item())
    sa, sb = a.sqrt(), (1 - a).sqrt()
    if prediction == "eps":
        return output, (x_t - sb * output) / sa
    if prediction == "x0":
        return (x_t - sa * output) / sb, output
    return sb * x_t + sa * output, sa * x_t - sb * output


def from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, a_t, prediction: str = "eps") -> torch.Tensor:
    """The output of type ``prediction`` for the pair (eps, x0): eps, x0, or v = sqrt(a_t) eps -
    sqrt(1 - a_t) x0 (Salimans & Ho 2022). Defined for every a_t in [0, 1]."""
    check_prediction(prediction)
    _check_same_shape(eps, x0, "eps", "x0")
    a = _checked_alpha_bar(a_t, eps)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def convert_prediction(output: torch.Tensor, x_t: torch.Tensor, a_t, from_: str, to: str) -> torch.Tensor:
    """A model output of type ``from_`` rewritten as type ``to`` at (x_t, a_t): ``from_eps_x0`` of
    ``to_eps_x0`` (so it needs the pair to be defined: not "eps" at a_t = 0, not "x0" at a_t = 1)."""
    check_prediction(to)
    if from_ == to:
        check_prediction(from_)
        _check_same_shape(output, x_t, "output", "x_t")
        _checked_alpha_bar(a_t, x_t)
        return output
    eps, x0 = to_eps_x0(output, x_t, a_t, from_)
    return from_eps_x0(eps, x0, a_t, to)
