"""Sampling benchmarks: sampler overhead over bare forward passes, ddim_lib versus diffusers'
DDIMScheduler loop (with an output-parity check), DPM-Solver++(2M) output parity with diffusers'
DPMSolverMultistepScheduler, and DDIM-S versus DDPM-1000 at equal quality."""
from __future__ import annotations

import statistics

import torch

import ddim_lib
from ddim_lib import NoiseSchedule

from .timing import alternate, ratio, summary, time_once


def digits_model(require_trained: bool = False):
    """(model, schedule, trained): the shipped digits UNet, or a freshly initialised stand-in of the
    same architecture (timings do not depend on the weights) when none is shipped."""
    try:
        model, schedule = ddim_lib.load_pretrained("digits")
        return model.eval(), schedule, True
    except ValueError:
        if require_trained:
            raise
        torch.manual_seed(0)
        return ddim_lib.build_model("digits").eval(), NoiseSchedule.linear(1000), False


def _t_batches(schedule: NoiseSchedule, S: int, batch: int) -> list[torch.Tensor]:
    """The model's t arguments along the sampler's path, tau_S down to tau_1, each of shape (batch,)."""
    return [torch.full((batch,), t, dtype=torch.long) for t in reversed(ddim_lib.timesteps(schedule.T, S))]


def sampler_overhead(model, schedule, S: int, batch: int, repeats: int, warmup: int = 1) -> dict:
    """Ratio 1: wall time of ddim_lib.sample (eta = 0) over S bare forward passes at the same t's."""
    x_T = torch.randn(batch, *_shape(model), generator=torch.Generator().manual_seed(0))
    ts = _t_batches(schedule, S, batch)

    @torch.no_grad()
    def bare():
        for t in ts:
            model(x_T, t)

    times = alternate({"sample": lambda: ddim_lib.sample(model, x_T, schedule, S), "bare": bare},
                      repeats, warmup)
    return {"S": S, "batch": batch, "sample": summary(times["sample"]), "bare_forwards": summary(times["bare"]),
            **ratio(times["sample"], times["bare"])}


def _shape(model) -> tuple[int, ...]:
    return (model.in_ch, model.resolution, model.resolution)


# ---- diffusers ----------------------------------------------------------------------------------
def diffusers_scheduler(schedule: NoiseSchedule, alpha_bars_from_ours: bool):
    """diffusers' DDIMScheduler configured as our uniform sampler: leading spacing, steps_offset 0,
    final alpha-bar 1, no clipping. ``alpha_bars_from_ours``: replace its float32-cumprod alpha-bars
    with ours (computed in float64, then rounded), so that only the sampling arithmetic differs."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=schedule.T, trained_betas=schedule.betas.double().numpy(),
                          clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                          timestep_spacing="leading", prediction_type="epsilon")
    if alpha_bars_from_ours:
        sched.alphas_cumprod = schedule.alpha_bars.double().float().clone()
    return sched


@torch.no_grad()
def diffusers_sample(model, x_T: torch.Tensor, sched, S: int) -> torch.Tensor:
    """The loop a diffusers pipeline runs: set_timesteps, then eps = model(x, t); x = step(eps, t, x)."""
    sched.set_timesteps(S)
    x = x_T
    for t in sched.timesteps:
        eps = model(x, t.expand(x.shape[0]))
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x


def diffusers_parity(model, schedule, S: int, batch: int, factor: float = 4.0) -> dict:
    """Both samplers are float32 roundings of one float64 computation: assert it.

    The float64 reference is our sampler with the model and x_T in float64. Each float32 sampler's
    error against it measures float32 precision on this path. Parity holds when diffusers' error is
    at most ``factor`` times ours (and vice versa): a different formula, timestep or clipping would
    put it orders of magnitude above round-off. With diffusers' own float32 cumprod of the betas, the
    difference is reported too (not asserted: it is a schedule rounding, not a sampler difference).
    """
    import copy

    x_T = torch.randn(batch, *_shape(model), generator=torch.Generator().manual_seed(1))
    reference = ddim_lib.sample(copy.deepcopy(model).double(), x_T.double(), schedule.to(dtype=torch.float64), S)
    ours = ddim_lib.sample(model, x_T, schedule, S)
    theirs = diffusers_sample(model, x_T, diffusers_scheduler(schedule, alpha_bars_from_ours=True), S)
    theirs_own = diffusers_sample(model, x_T, diffusers_scheduler(schedule, alpha_bars_from_ours=False), S)
    err_ours = (ours.double() - reference).abs().max().item()
    err_theirs = (theirs.double() - reference).abs().max().item()
    result = {"S": S, "batch": batch, "max_abs_x0": reference.abs().max().item(),
              "float32_eps": torch.finfo(torch.float32).eps,
              "ours_vs_float64": err_ours, "diffusers_vs_float64": err_theirs,
              "ours_vs_diffusers": (ours - theirs).abs().max().item(),
              "ours_vs_diffusers_own_alpha_bars": (ours - theirs_own).abs().max().item(), "factor": factor}
    if not (err_theirs <= factor * err_ours and err_ours <= factor * err_theirs):
        raise AssertionError(f"diffusers and ddim_lib disagree beyond float32 round-off: {result}")
    return result


def against_diffusers(model, schedule, S: int, batch: int, repeats: int, warmup: int = 1) -> dict:
    """Ratio 2: ddim_lib.sample over diffusers' DDIMScheduler loop, same model, same x_T."""
    x_T = torch.randn(batch, *_shape(model), generator=torch.Generator().manual_seed(0))
    sched = diffusers_scheduler(schedule, alpha_bars_from_ours=False)
    times = alternate({"ddim_lib": lambda: ddim_lib.sample(model, x_T, schedule, S),
                       "diffusers": lambda: diffusers_sample(model, x_T, sched, S)}, repeats, warmup)
    return {"S": S, "batch": batch, "ddim_lib": summary(times["ddim_lib"]),
            "diffusers": summary(times["diffusers"]), **ratio(times["ddim_lib"], times["diffusers"])}



# ---- DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler ---------------------------
DPM_TOLERANCE = 2e-4     # max |ours - diffusers| allowed, relative to max |x_0| (float32 runs)


def dpm_scheduler(schedule: NoiseSchedule, alpha_bars_from_ours: bool, **overrides):
    """diffusers' DPMSolverMultistepScheduler configured as ``ddim_lib.dpm_solver_pp_2m``: the data-
    prediction solver ("dpmsolver++") of order 2 in its multistep midpoint form (Lu et al.'s
    Algorithm 2), epsilon-prediction, no thresholding, last sigma zero (so its last step is first
    order and returns x_0, as ours), no Karras/Lu/exponential sigmas. Timesteps are given explicitly
    to ``set_timesteps`` (see ``dpm_diffusers_sample``), so no spacing rule is involved."""
    from diffusers import DPMSolverMultistepScheduler

    config = dict(num_train_timesteps=schedule.T, trained_betas=schedule.betas.double().numpy(),
                  solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                  prediction_type="epsilon", thresholding=False, lower_order_final=True, euler_at_final=False,
                  final_sigmas_type="zero", use_karras_sigmas=False, use_lu_lambdas=False)
    sched = DPMSolverMultistepScheduler(**(config | overrides))
    if alpha_bars_from_ours:
        sched.alphas_cumprod = schedule.alpha_bars.double().float().clone()
    return sched


@torch.no_grad()
def dpm_diffusers_sample(model, x_T: torch.Tensor, sched, tau: list[int]) -> torch.Tensor:
    """A diffusers pipeline's loop with explicit timesteps: tau walked backwards, one step per t."""
    sched.set_timesteps(timesteps=list(reversed(tau)))
    x = x_T
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


def dpm_parity(model, schedule, S: int, batch: int, tolerance: float = DPM_TOLERANCE) -> dict:
    """Assert that ddim_lib.dpm_solver_pp_2m and diffusers' DPMSolverMultistepScheduler give the same x_0.

    Both run in float32 from the same x_T over tau = ddim_lib.timesteps(T, S). Required:
    max |ours - diffusers| <= ``tolerance`` * max |x_0|. Reported beside it: each one's distance to
    our sampler run in float64 (model and x_T in float64). diffusers keeps its sigmas, and so its
    step coefficients, in float32 while ours are float64, so its float32 run is the further of the two
    (about 10x on the digits UNet): that is why the criterion is an absolute tolerance rather than the
    DDIM check's factor. A different method is orders of magnitude off: the first-order solver or
    the "heun" form of the second-order term (``tests/test_bench.py``)."""
    import copy

    from ddim_lib.dpm_solver import dpm_solver_pp_2m

    tau = ddim_lib.timesteps(schedule.T, S)
    x_T = torch.randn(batch, *_shape(model), generator=torch.Generator().manual_seed(1))
    # diffusers' last step, tau_1 -> sigma = 0, is its only first-order one besides the first: ours
    # with lower_order_final=False (ours also lowers tau_2 -> tau_1 by default; see its docstring)
    reference = dpm_solver_pp_2m(copy.deepcopy(model).double(), x_T.double(), schedule.to(dtype=torch.float64), tau,
                                 lower_order_final=False)
    ours = dpm_solver_pp_2m(model, x_T, schedule, tau, lower_order_final=False)
    theirs = dpm_diffusers_sample(model, x_T, dpm_scheduler(schedule, alpha_bars_from_ours=True), tau)
    theirs_own = dpm_diffusers_sample(model, x_T, dpm_scheduler(schedule, alpha_bars_from_ours=False), tau)
    max_x0 = reference.abs().max().item()
    result = {"S": S, "batch": batch, "tau_first_last": [tau[0], tau[-1]], "max_abs_x0": max_x0,
              "ours_vs_diffusers": (ours - theirs).abs().max().item(),
              "ours_vs_float64": (ours.double() - reference).abs().max().item(),
              "diffusers_vs_float64": (theirs.double() - reference).abs().max().item(),
              "ours_vs_diffusers_own_alpha_bars": (ours - theirs_own).abs().max().item(),
              "tolerance": tolerance * max_x0}
    if not result["ours_vs_diffusers"] <= result["tolerance"]:
        raise AssertionError(f"diffusers' DPM-Solver++(2M) and ddim_lib's disagree beyond float32 tolerance: {result}")
    return result


# ---- DDIM versus DDPM at equal quality ---------------------------------------------------------
# The two 1000-step DDPM samplers the paper reports (Table 1): eta = 1 (sigma_t^2 the posterior's
# variance beta_tilde_t, the DDPM of the paper's family, eq. 16) and sigma_hat (sigma_t^2 = beta_t,
# Ho et al.'s CIFAR-10 sampler). Both are ``ddpm_sample`` at T = 1000.
DDPM_REFERENCES = {"eta1": "beta_tilde", "sigma_hat": "beta"}


def ddim_vs_ddpm(model, schedule, n: int, S_grid: list[int], tolerance: float = 0.10) -> dict:
    """Ratio 4: time of DDIM (eta = 0) at the smallest S in ``S_grid`` whose Frechet distance to the
    digits data is within ``tolerance`` of a 1000-step DDPM's, over that DDPM's time; once for each
    DDPM of ``DDPM_REFERENCES``.

    Features: the shipped digits classifier's (64-d); every sampler starts from the same n latents
    and is compared with the same data (all 1797 digits). ``floor``: the Frechet distance of n real
    digits drawn from that data, over 5 draws (what a perfect sampler would score at this n). Each
    sampler runs once (a DDPM-1000 run is long, and the ratios are far from 1). When a reference is
    not matched, DDIM also runs at S = T (``ddim_at_T``): if even that is not within the tolerance, no
    S can be, and the gap is the network's, not the discretisation's.
    """
    from ddim_lib.evaluate import DigitsFeatures, frechet_distance, digits_split

    features = DigitsFeatures()
    x_train, x_test, _, _ = digits_split()
    data = torch.cat([x_train, x_test])
    data_features = features(data)
    g = torch.Generator().manual_seed(1)
    floor = [frechet_distance(features(data[torch.randperm(len(data), generator=g)[:n]]), data_features)
             for _ in range(5)]
    x_T = torch.randn(n, *_shape(model), generator=torch.Generator().manual_seed(2))
    out = {"n": n, "tolerance": tolerance, "features": "digits classifier (64-d)", "ddim": [],
           "floor": {"mean": statistics.mean(floor), "min": min(floor), "max": max(floor)}}
    box = {}

    def run(sampler) -> tuple[float, float]:
        seconds = time_once(lambda: box.update(x=sampler()))
        return seconds, frechet_distance(features(box["x"].clamp(-1, 1)), data_features)

    for S in sorted(S_grid):
        seconds, fd = run(lambda: ddim_lib.sample(model, x_T, schedule, S))
        out["ddim"].append({"S": S, "seconds": seconds, "fd": fd})
    for name, variance in DDPM_REFERENCES.items():
        seconds, fd = run(lambda: ddim_lib.ddpm_sample(model, x_T, schedule, variance=variance,
                                                       generator=torch.Generator().manual_seed(3)))
        ref = {"variance": variance, "steps": schedule.T, "seconds": seconds, "fd": fd, "matched_S": None}
        match = next((row for row in out["ddim"] if row["fd"] <= (1 + tolerance) * fd), None)
        if match is None:
            ref["unmatched"] = (f"no S in {sorted(S_grid)} came within {tolerance:.0%} of DDPM-{schedule.T}'s FD "
                                f"{fd:.3g} (DDIM: {[round(row['fd'], 2) for row in out['ddim']]})")
        else:
            ref.update(matched_S=match["S"], ddim_fd=match["fd"], ratio=match["seconds"] / seconds,
                       speedup=seconds / match["seconds"])
        out[name] = ref
    if any(out[name]["matched_S"] is None for name in DDPM_REFERENCES):
        # What bounds it: DDIM's own limit, S = T (no discretisation left to remove).
        seconds, fd = run(lambda: ddim_lib.sample(model, x_T, schedule, schedule.T))
        out["ddim_at_T"] = {"S": schedule.T, "seconds": seconds, "fd": fd}
    return out


def loop_overhead(schedule, S: int, batch: int, shape: tuple[int, ...], repeats: int, warmup: int = 1) -> dict:
    """What each sampler adds around the network: both loops driven by a free model (eps returned
    from a table), so only the per-step arithmetic and Python work are timed; microseconds per step."""
    g = torch.Generator().manual_seed(4)
    x_T = torch.randn(batch, *shape, generator=g)
    eps = torch.randn(batch, *shape, generator=g)

    def free_model(x, t):
        return eps

    sched = diffusers_scheduler(schedule, alpha_bars_from_ours=False)
    times = alternate({"ddim_lib": lambda: ddim_lib.sample(free_model, x_T, schedule, S),
                       "diffusers": lambda: diffusers_sample(free_model, x_T, sched, S)}, repeats, warmup)
    per_step = {name: 1e6 * summary(v)["median_s"] / S for name, v in times.items()}
    return {"S": S, "batch": batch, "us_per_step": per_step, "ddim_lib": summary(times["ddim_lib"]),
            "diffusers": summary(times["diffusers"]), **ratio(times["ddim_lib"], times["diffusers"])}
