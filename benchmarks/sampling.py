"""Sampling benchmarks: sampler overhead over bare forward passes, ddim_lib versus diffusers'
DDIMScheduler loop (with an output-parity check), and DDIM-S versus DDPM-1000 at equal quality."""
from __future__ import annotations

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


# ---- DDIM versus DDPM at equal quality ---------------------------------------------------------
def ddim_vs_ddpm(model, schedule, n: int, S_grid: list[int], tolerance: float = 0.10) -> dict:
    """Ratio 4: time of DDIM (eta = 0) at the smallest S in ``S_grid`` whose Frechet distance to the
    digits data is within ``tolerance`` of DDPM-1000's, over the time of DDPM-1000.

    Features: the shipped digits classifier's (64-d); both samplers start from the same n latents
    and are compared with the same data. Each sampler runs once (a DDPM-1000 run is long, and the
    ratio is far from 1, so the load's few-percent noise does not change its order).
    """
    from ddim_lib.evaluate import DigitsFeatures, frechet_distance, digits_split

    features = DigitsFeatures()
    x_train, x_test, _, _ = digits_split()
    data_features = features(torch.cat([x_train, x_test]))
    x_T = torch.randn(n, *_shape(model), generator=torch.Generator().manual_seed(2))
    out = {"n": n, "tolerance": tolerance, "features": "digits classifier (64-d)", "ddim": []}
    box = {}
    t_ddpm = time_once(lambda: box.update(x=ddim_lib.ddpm_sample(model, x_T, schedule,
                                                                  generator=torch.Generator().manual_seed(3))))
    fd_ddpm = frechet_distance(features(box["x"].clamp(-1, 1)), data_features)
    out["ddpm"] = {"steps": schedule.T, "seconds": t_ddpm, "fd": fd_ddpm}
    out["matched_S"] = None
    for S in sorted(S_grid):
        seconds = time_once(lambda: box.update(x=ddim_lib.sample(model, x_T, schedule, S)))
        fd = frechet_distance(features(box["x"].clamp(-1, 1)), data_features)
        out["ddim"].append({"S": S, "seconds": seconds, "fd": fd, "speedup": t_ddpm / seconds})
        if fd <= (1 + tolerance) * fd_ddpm:
            out["matched_S"] = S
            out.update(ratio=seconds / t_ddpm, speedup=t_ddpm / seconds)
            break
    else:
        out["unmatched"] = (f"no S in {sorted(S_grid)} came within {tolerance:.0%} of DDPM-{schedule.T}'s FD "
                            f"{fd_ddpm:.3g} (FDs: {[round(row['fd'], 3) for row in out['ddim']]})")
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
