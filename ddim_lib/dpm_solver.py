"""DDIM's second-order successor: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

Coordinates (variance preserving): alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and the half
log-SNR lambda_t = log(alpha_t / sigma_t), which increases as t decreases (lambda = +inf at abar = 1).
The data prediction is eq. 9 of DDIM: x0_theta(x_t, t) = (x_t - sigma_t eps_theta(x_t, t)) / alpha_t.

DDIM's ODE (eq. 14), written for x0_theta and solved by variation of constants, gives exactly, for a
step from t to an earlier s with h = lambda_s - lambda_t > 0,

    x_s = (sigma_s / sigma_t) x_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x0_theta(x_lambda) dlambda.   (1)

Freezing x0_theta at its value at t gives the first-order exponential integrator, which is DDIM:

    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) x0_theta(x_t, t).                           (2)

Extrapolating x0_theta linearly in lambda through the last two evaluations gives DPM-Solver++(2M):

    r = h_prev / h,  D = (1 + 1 / (2 r)) x0_theta(x_t, t) - 1 / (2 r) x0_theta(x_t', t'),
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,                                         (3)

where t' is the grid time before t and h_prev = lambda_t - lambda_t'. Name table (ours -> Lu et al.):
``a_t`` = alpha_t^2 (our abar), ``x0`` = x_theta, ``h`` = h_i, ``r`` = r_i, ``d`` = D_i.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from ._util import as_float, check_alpha_bar, check_batched_float, check_model_output, check_result_finite, expand_to
from .prediction import check_defined, check_prediction, conversion_coefficients
from .sampler import Trajectory, _as_tau, _progress
from .schedule import NoiseSchedule
from .toy import GaussianMixture

__all__ = ["lambda_from_alpha_bar", "dpm_solver_pp_step", "dpm_solver_pp_2m", "logsnr_timesteps",
           "mixture_ode_x0", "COMPARE_FILE"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# What scripts/dpm_compare.py ships (chapter 14): oracle and digits comparisons with DDIM-50.
COMPARE_FILE = Path(__file__).resolve().parents[1] / "results" / "dpm_compare.json"


# ---- the formulas -------------------------------------------------------------------------------
def lambda_from_alpha_bar(alpha_bar) -> torch.Tensor:
    """lambda = log(alpha / sigma) = (1/2) log(abar / (1 - abar)) for abar in (0, 1]; abar = 1 gives +inf."""
    a = check_alpha_bar(as_float(alpha_bar), "alpha_bar")
    return 0.5 * (a.log() - torch.log1p(-a))


def dpm_solver_pp_step(x_t: torch.Tensor, x0: torch.Tensor, a_t, a_s, x0_prev: torch.Tensor | None = None,
                       a_prev=None) -> torch.Tensor:
    """One step from abar_t to abar_s > abar_t: eq. 2 (first order, = DDIM) or, given the previous
    grid point's x0_prev at abar_prev < abar_t, eq. 3 (DPM-Solver++(2M)).

    eq. 2: x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) x0,  h = lambda_s - lambda_t;
    eq. 3: the same with D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = (lambda_t - lambda_prev) / h.
    x_t, x0, x0_prev of shape (B, ...); abar's scalars or (B,). The step to abar_s = 1 (lambda_s =
    +inf, the sampler's last) has r = 0 and no second-order form: it is eq. 2 and returns x0.
    """
    a_t, a_s = as_float(a_t).double(), as_float(a_s).double()
    if (a_s <= a_t).any():
        raise ValueError("a step must go towards less noise: a_s must exceed a_t")
    lam_t, lam_s = lambda_from_alpha_bar(a_t), lambda_from_alpha_bar(a_s)
    alpha_s, sigma_s, sigma_t = a_s.sqrt(), (1 - a_s).sqrt(), (1 - a_t).sqrt()
    h = lam_s - lam_t                                               # 1. the step in lambda
    phi = -torch.expm1(-h)                                          # 2. 1 - e^{-h} (= 1 at h = inf)
    d = x0
    if x0_prev is not None:                                         # 3. eq. 3's linear extrapolation
        if a_prev is None:
            raise ValueError("x0_prev needs a_prev, the alpha_bar at which it was predicted")
        a_prev = as_float(a_prev).double()
        if (a_prev >= a_t).any():
            raise ValueError("a_prev must be below a_t: x0_prev comes from the noisier grid point")
        if torch.isinf(h).any():
            raise ValueError("the step to alpha_bar = 1 has r = 0: it is first order (omit x0_prev)")
        r = (lam_t - lambda_from_alpha_bar(a_prev)) / h
        d = expand_to(1 + 1 / (2 * r), x0) * x0 - expand_to(1 / (2 * r), x0) * x0_prev
    # 4. eq. 2 / 3: x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) D
    return expand_to(sigma_s / sigma_t, x_t) * x_t + expand_to(alpha_s * phi, x_t) * d


# ---- the loop ----------------------------------------------------------------------------------
class _Step(NamedTuple):
    """x_s = c_x * x_t + c_d * (w * x0 + w_prev * x0_prev): eq. 3 (eq. 2 when w_prev = 0), where
    x0 = z_x * x_t + z_o * output (eq. 9 for an eps model; ``prediction.conversion_coefficients``)."""

    t: int
    z_x: float
    z_o: float
    c_x: float
    c_d: float
    w: float
    w_prev: float


def _plan(schedule: NoiseSchedule, tau, order: int, lower_order_final: bool = True,
          prediction: str = "eps") -> list[_Step]:
    """Per-step coefficients of eq. 2 / 3, in float64 on the host (no device syncs in the loop)."""
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order not in (1, 2):
        raise ValueError(f"order must be 1 (DDIM, eq. 2) or 2 (DPM-Solver++(2M), eq. 3), got {order!r}")
    if not isinstance(lower_order_final, bool):
        raise ValueError(f"lower_order_final must be True or False, got {lower_order_final!r}")
    check_prediction(prediction)
    tau = _as_tau(schedule, tau)
    a = schedule.alpha_bars.double().cpu().tolist()
    abar = [a[t] for t in reversed(tau)] + [1.0]                    # tau_S, ..., tau_1, then abar(-1) = 1
    check_defined(prediction, min(abar[:-1]), max(abar[:-1]), " (a visited timestep)")
    lam = [(0.5 * (math.log(v) - math.log1p(-v)) if v > 0 else -math.inf) if v < 1 else math.inf for v in abar]
    steps, last_ode_step = [], len(tau) - 2      # the step tau_2 -> tau_1 (then tau_1 -> alpha_bar = 1)
    for i, t in enumerate(reversed(tau)):
        h = lam[i + 1] - lam[i]                 # inf on the last step, and on the first from abar = 0
        sigma_t, alpha_s, sigma_s = math.sqrt(1 - abar[i]), math.sqrt(abar[i + 1]), math.sqrt(1 - abar[i + 1])
        w, w_prev = 1.0, 0.0
        # eq. 2 on the first step, on the last (h = inf) and, with lower_order_final, on tau_2 -> tau_1
        if (order == 2 and i > 0 and math.isfinite(h) and math.isfinite(lam[i - 1])
                and not (lower_order_final and i == last_ode_step)):
            r = (lam[i] - lam[i - 1]) / h
            w, w_prev = 1 + 1 / (2 * r), -1 / (2 * r)
        _, _, z_x, z_o = conversion_coefficients(abar[i], prediction)
        steps.append(_Step(t, z_x, z_o, sigma_s / sigma_t, alpha_s * -math.expm1(-h), w, w_prev))
    return steps


@torch.no_grad()
def dpm_solver_pp_2m(model: Model, x_T: torch.Tensor, schedule: NoiseSchedule, tau: Sequence[int] | int,
                     order: int = 2, lower_order_final: bool = True, generator: torch.Generator | None = None,
                     clip_x0: bool = False, return_trajectory: bool = False, progress: bool = False,
                     prediction: str = "eps"):
    """DPM-Solver++(2M) over the subsequence tau from x_T of shape (B, ...): one model call per step.

    Same conventions as ``sample``: ``tau`` increasing code indices or an int S (uniform spacing),
    steps [(tau_S, tau_{S-1}), ..., (tau_1, -1)], the last to alpha_bar = 1, where x = x0_theta. The
    first step is eq. 2 (no previous prediction yet), the middle ones eq. 3, and the last one eq. 2:
    at alpha_bar = 1, h = inf and r = 0, so eq. 3 has no limit (diffusers' scheduler does the same
    with ``final_sigmas_type="zero"``). ``lower_order_final`` (default True) also makes the step
    tau_2 -> tau_1 first order: on grids uniform in t it is by far the longest in lambda (r ~ 0.2-0.3),
    and eq. 3's extrapolation over it made the oracle error 2-4x worse than DDIM's at S <= 20 (book,
    chapter 14); one first-order step keeps the global order 2. diffusers' default grids omit t = 0,
    so its first-order last step is this same long step; ``lower_order_final=False`` with tau given
    explicitly is what its scheduler computes. ``order=1`` runs eq. 2
    throughout, which is DDIM (eta = 0). ``generator`` is accepted for ``sample``'s signature and
    unused (deterministic). ``clip_x0`` clamps each x0_theta to [-1, 1]. Returns x_0, or a
    ``Trajectory`` (states x_T, ..., x_0 and the x0_theta's) when ``return_trajectory``.
    ``prediction``: what ``model`` outputs, "eps", "x0" or "v" (as for ``sample``); the solver needs
    only x0_theta, a linear function of (x_t, output) with coefficients computed before the loop. A
    start at alpha_bar = 0 (zero terminal SNR) is lambda = -inf: the first step is eq. 2 with
    h = inf, x = sigma_s x_T + alpha_s x0_theta, defined for "x0" and "v" models ("eps" raises).
    """
    steps = _plan(schedule, tau, order, lower_order_final, prediction)
    check_batched_float(x_T, "x_T", finite=True)
    x, x0_prev = x_T, None
    xs, x0_preds = [x], []
    t_batches = {s.t: torch.full((x.shape[0],), s.t, dtype=torch.long, device=x.device) for s in steps}
    for i, s in enumerate(_progress(steps, progress)):
        out = model(x, t_batches[s.t])
        if i == 0:
            check_model_output(out, x, model)
        x0 = torch.add(x * s.z_x, out, alpha=s.z_o) if s.z_x else out * s.z_o   # x0_theta(x_t, t), eq. 9
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        d = x0 if s.w_prev == 0 else torch.add(x0 * s.w, x0_prev, alpha=s.w_prev)
        x = torch.add(x * s.c_x, d, alpha=s.c_d) if s.c_x else d * s.c_d
        x0_prev = x0
        if return_trajectory:
            xs.append(x)
            x0_preds.append(x0)
    check_result_finite(x, model, "dpm_solver_pp_2m")
    return Trajectory(x, xs, x0_preds) if return_trajectory else x


# ---- grids and the exact reference ------------------------------------------------------------
def logsnr_timesteps(schedule: NoiseSchedule, S: int, t_start: int | None = None) -> list[int]:
    """An increasing grid from 0 to ``t_start`` (default T - 1) with at most S code indices, uniform
    in lambda: the nearest index to each of S equally spaced lambdas, repeats dropped (near t = 0 the
    lambda spacing can be finer than one training step)."""
    T = schedule.T
    t_start = T - 1 if t_start is None else t_start
    for name, v, lo, hi in (("S", S, 2, T), ("t_start", t_start, 1, T - 1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= v <= hi:
            raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
    lam = lambda_from_alpha_bar(schedule.alpha_bars[: t_start + 1].double().cpu())       # decreasing in t
    targets = torch.linspace(lam[t_start].item(), lam[0].item(), S, dtype=torch.float64)
    return sorted({int((lam - v).abs().argmin()) for v in targets.tolist()})


def mixture_ode_x0(mixture: GaussianMixture, schedule: NoiseSchedule, x_T: torch.Tensor, t_start: int,
                   tol: float = 1e-10) -> torch.Tensor:
    """The exact end point of DDIM's ODE for a Gaussian mixture: eq. 14 solved from t_start to t = 0 in
    (x_bar, s = sqrt((1 - abar) / abar)) with eps*(x_bar, s) = s sum_k r_k (x_bar - mu_k) / (s_k^2 + s^2)
    (scipy's DOP853, rtol = atol = ``tol``), then the samplers' common last step to alpha_bar = 1,
    x = x0*(x, 0). x_T of shape (B, d) in float64; returns (B, d). The reference of chapter 14."""
    from scipy.integrate import solve_ivp

    from .sampler import predict_x0
    from .toy import OracleEps

    if not torch.is_tensor(x_T) or x_T.dtype != torch.float64 or x_T.ndim != 2 or x_T.shape[1] != mixture.dim:
        raise ValueError(f"x_T must be a float64 tensor of shape (B, {mixture.dim})")
    if isinstance(t_start, bool) or not isinstance(t_start, numbers.Integral) or not 0 <= t_start < schedule.T:
        raise ValueError(f"t_start must be an integer in 0..{schedule.T - 1}, got {t_start!r}")
    a = schedule.alpha_bars.double().cpu()
    s_from, s_to = (math.sqrt((1 - a[t].item()) / a[t].item()) for t in (t_start, 0))
    var0, means, log_w = mixture.stds**2, mixture.means, mixture.weights.log()
    shape = x_T.shape

    def rhs(s, y):
        x_bar = torch.from_numpy(y).reshape(shape)
        var = var0 + s**2
        diff = x_bar[:, None, :] - means
        r = torch.softmax(log_w - 0.5 * (diff**2 / var + var.log()).sum(-1), dim=1)
        return (s * (r[..., None] * diff / var).sum(1)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (s_from, s_to), (x_T / a[t_start].sqrt()).reshape(-1).numpy(), method="DOP853",
                    rtol=tol, atol=tol)
    if not sol.success:
        raise RuntimeError(f"the reference ODE solver failed: {sol.message}")
    x_0 = torch.from_numpy(sol.y[:, -1]).reshape(shape) * a[0].sqrt()       # x at t = 0
    eps = OracleEps(mixture, schedule)(x_0, torch.zeros(shape[0], dtype=torch.long))
    return predict_x0(x_0, eps, a[0].item())
