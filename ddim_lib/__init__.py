"""ddim_lib: Denoising Diffusion Implicit Models (Song, Meng & Ermon, ICLR 2021), derived and verified.

Notation (paper -> code): the paper's alpha_t is DDPM's alpha-bar_t, ``alpha_bars[t]`` here;
``betas``, ``alphas = 1 - betas`` are DDPM's per-step quantities. Code indices t = 0..T-1 stand for
the paper's t = 1..T, and alpha-bar at t = -1 is 1. Models predict eps: ``model(x, t)`` with x of
shape (B, ...) and t a LongTensor of shape (B,).
"""
from ._cli_interrupt import install as _install_cli_interrupt

_install_cli_interrupt()          # the `ddim` command only: Ctrl-C during the torch import -> one line, 130
from .forward import LinearGaussian, ddpm_posterior, q_mean_var, q_sample, q_sigma_forward, q_sigma_reverse
from .guidance import GuidedEps, class_mixture, conditional_oracles, guided_oracle, sample_tilted, tilted_log_prob
from .sampler import (Trajectory, ddim_step, ddpm_sample, encode, predict_eps, predict_x0, sample,
                      sigma_eta, sigma_hat, slerp)
from .ode import (alpha_bar_from_sigma, euler_step_sigma, euler_step_sigma_sq, from_ve, heun_sample,
                  ode_nfe, ode_sample, sigma_from_alpha_bar, to_ve)
from .prediction import PREDICTIONS, convert_prediction, from_eps_x0, to_eps_x0
from .dpm_solver import dpm_solver_pp_2m, dpm_solver_pp_step, lambda_from_alpha_bar, logsnr_timesteps
from .schedule import NoiseSchedule
from .theory import (appendix_b_gamma, ddpm_gamma, ddpm_sigmas, eta_sigmas, kl_to_standard_normal,
                     theorem1_constant, theorem1_gamma)
from .timesteps import SPACINGS, official_quadratic_timesteps, timesteps
from .toy import TOY2D_NAMES, GaussianMixture, OracleEps, toy2d

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule", "q_sample", "q_mean_var", "ddpm_posterior", "q_sigma_reverse", "q_sigma_forward",
    "LinearGaussian", "sigma_eta", "sigma_hat", "predict_x0", "predict_eps", "ddim_step", "timesteps",
    "official_quadratic_timesteps", "sample", "ddpm_sample", "encode", "slerp", "Trajectory",
    "theorem1_gamma", "ddpm_gamma", "appendix_b_gamma", "ddpm_sigmas", "eta_sigmas",
    "theorem1_constant", "kl_to_standard_normal", "GaussianMixture", "OracleEps", "toy2d", "TOY2D_NAMES",
    "sigma_from_alpha_bar", "alpha_bar_from_sigma", "to_ve", "from_ve", "euler_step_sigma",
    "euler_step_sigma_sq", "ode_sample", "heun_sample", "ode_nfe",
    "to_eps_x0", "from_eps_x0", "convert_prediction", "PREDICTIONS", "SPACINGS",
    "GuidedEps", "guided_oracle", "conditional_oracles", "class_mixture", "sample_tilted", "tilted_log_prob",
    "dpm_solver_pp_2m", "dpm_solver_pp_step", "lambda_from_alpha_bar", "logsnr_timesteps",
]

# Training, models and evaluation pull in heavier modules: import them on first use.
_LAZY = {
    "build_model": "ddim_lib.models",
    "PRESETS": "ddim_lib.models",
    "load_checkpoint": "ddim_lib.checkpoint",
    "save_checkpoint": "ddim_lib.checkpoint",
    "load_dataset": "ddim_lib.data",
    "frechet_distance": "ddim_lib.evaluate",
    "load_pretrained": "ddim_lib.pretrained",
    "list_pretrained": "ddim_lib.pretrained",
}
__all__ += list(_LAZY) + ["train", "TrainConfig"]

# The training loop lives in ``ddim_lib.training`` (a module name distinct from the function
# ``train``, so ``ddim_lib.train`` is always the function).
from .training import TrainConfig, train  # noqa: E402


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ddim_lib' has no attribute {name!r}")
