"""Noise schedules: betas, alphas = 1 - betas and alpha_bars = cumprod(alphas).

Notation: the DDIM paper's alpha_t is our ``alpha_bar[t]``. Code indices t = 0..T-1 stand for
the paper's t = 1..T, and ``alpha_bar(-1) == 1`` (the "t = 0" of the paper: no noise at all).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["NoiseSchedule"]


def _check_betas(betas: torch.Tensor) -> None:
    if betas.ndim != 1:
        raise ValueError(f"betas must be a 1-D tensor of length T, got shape {tuple(betas.shape)}")
    if betas.numel() == 0:
        raise ValueError("betas must have at least one element (T >= 1)")
    if not torch.isfinite(betas).all():
        raise ValueError("betas must be finite")
    # beta_T = 1 is zero terminal SNR (alpha_bar_T = 0, Lin et al. 2023); anywhere else a beta of 1
    # would zero every later alpha_bar and leave later steps undefined.
    inner, last = betas[:-1], betas[-1]
    if not ((inner > 0) & (inner < 1)).all() or not (0 < last <= 1):
        lo, hi = betas.min().item(), betas.max().item()
        raise ValueError("every beta must lie in the open interval (0, 1), except the last, which may be 1 "
                         f"(zero terminal SNR); got min {lo}, max {hi}")


def _check_dtype(dtype) -> None:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch dtype (e.g. torch.float64), got {dtype!r}")


def _check_T(T: int) -> int:
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:   # numpy ints welcome
        raise ValueError(f"T must be a positive integer, got {T!r}")
    return int(T)


class NoiseSchedule:
    """A variance schedule beta_1..beta_T with its derived quantities (shapes (T,)).

    ``alphas = 1 - betas``, ``alpha_bars = cumprod(alphas)`` (computed in float64, then cast).
    Every beta lies in (0, 1), except beta_T, which may be 1: alpha_bar_T = 0, zero terminal SNR
    (Lin et al. 2023; see ``rescale_zero_terminal_snr``). ``dtype`` must be a floating dtype.
    """

    def __init__(self, betas, dtype: torch.dtype | None = None):
        _check_dtype(dtype)
        # Python numbers and numpy arrays keep float64 (torch's float32 default would round them)
        if not torch.is_tensor(betas):
            try:
                betas = torch.as_tensor(np.asarray(betas, dtype=np.float64))
            except (TypeError, ValueError):
                raise ValueError(f"betas must be a 1-D sequence of real numbers, got {betas!r:.80}") from None
        if betas.is_complex():
            raise ValueError("betas must be real")
        if not betas.is_floating_point():
            betas = betas.to(torch.float64)
        dtype = dtype or betas.dtype
        b64 = betas.detach().to(torch.float64)
        _check_betas(b64)
        self.betas = b64.to(dtype)
        self.alphas = (1.0 - b64).to(dtype)
        self.alpha_bars = torch.cumprod(1.0 - b64, dim=0).to(dtype)
        # alpha_bar with the boundary value alpha_bar(-1) = 1 prepended: index t + 1.
        self._alpha_bars_ext = torch.cat([torch.ones_like(self.alpha_bars[:1]), self.alpha_bars])

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               dtype: torch.dtype = torch.float64) -> "NoiseSchedule":
        """DDPM's schedule: beta_t linear from ``beta_start`` to ``beta_end`` over T steps."""
        T = _check_T(T)
        _check_dtype(dtype)
        if not (0 < beta_start < 1 and 0 < beta_end < 1):   # also false for NaN
            raise ValueError(f"beta_start and beta_end must lie in (0, 1), got {beta_start}, {beta_end}")
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), dtype=dtype)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999,
               dtype: torch.dtype = torch.float64) -> "NoiseSchedule":
        """Nichol & Dhariwal (2021): alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2).

        beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at ``max_beta``.
        """
        T = _check_T(T)
        _check_dtype(dtype)
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"s must be non-negative, got {s}")
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas, dtype=dtype)

    def rescale_zero_terminal_snr(self) -> "NoiseSchedule":
        """The schedule rescaled to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise
        Schedules and Sample Steps are Flawed", Algorithm 1), as a new NoiseSchedule.

        With s_t = sqrt(abar_t): s'_t = (s_t - s_T) s_1 / (s_1 - s_T), so s'_T = 0 (abar_T = 0
        exactly: beta_T = 1) and s'_1 = s_1 (the first step unchanged); then abar'_t = s'_t^2 and
        beta'_t = 1 - abar'_t / abar'_{t-1}. Computed in float64; same dtype and device. Needs T >= 2.
        diffusers' ``rescale_zero_terminal_snr`` (scheduling_ddim.py) implements the same formula.
        """
        if self.T < 2:
            raise ValueError("rescaling to zero terminal SNR needs T >= 2 (with T = 1 the first step is the last)")
        s = self.alpha_bars.detach().to("cpu", torch.float64).sqrt()
        s_first, s_last = s[0].item(), s[-1].item()
        s = (s - s_last) * (s_first / (s_first - s_last))
        abar = s**2
        abar[-1] = 0.0                      # exactly, not round-off away from it
        alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
        new = NoiseSchedule(1 - alphas, dtype=self.dtype)
        for name in ("betas", "alphas", "alpha_bars", "_alpha_bars_ext"):   # move without recomputing
            setattr(new, name, getattr(new, name).to(self.device))
        return new

    # ---- accessors ----------------------------------------------------------------------------
    @property
    def T(self) -> int:
        """The number of diffusion steps."""
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def dtype(self) -> torch.dtype:
        return self.betas.dtype

    def alpha_bar(self, t) -> torch.Tensor:
        """alpha_bar at code index t (int or LongTensor, any shape), with alpha_bar(-1) = 1."""
        t_tensor = torch.as_tensor(t, device=self.device)
        if t_tensor.is_floating_point():
            raise ValueError("timesteps must be integers")
        if t_tensor.numel() and (t_tensor.min() < -1 or t_tensor.max() >= self.T):
            raise ValueError(f"timesteps must lie in -1..{self.T - 1}, got {t}")
        return self._alpha_bars_ext[t_tensor.long() + 1]

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t)."""
        a = self.alpha_bar(t)
        return a / (1 - a)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "NoiseSchedule":
        """A copy on ``device`` with ``dtype`` (alpha_bars recomputed in float64 first)."""
        new = NoiseSchedule(self.betas.to(torch.float64), dtype=dtype or self.dtype)
        if device is not None:
            for name in ("betas", "alphas", "alpha_bars", "_alpha_bars_ext"):
                setattr(new, name, getattr(new, name).to(device))
        return new

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return (f"NoiseSchedule(T={self.T}, beta_1={self.betas[0].item():.3g}, "
                f"beta_T={self.betas[-1].item():.3g}, alpha_bar_T={self.alpha_bars[-1].item():.3g}, "
                f"dtype={self.dtype}, device={self.device})")
