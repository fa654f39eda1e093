"""A small eps-network for 2-D toy data: an MLP on x with the sinusoidal time embedding added."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unet import check_timesteps, timestep_embedding

__all__ = ["MLP"]


class MLP(nn.Module):
    """eps_theta(x, t) for x of shape (B, dim): ``depth`` hidden layers of ``hidden`` units, SiLU.

    h_0 = W_in x + e(t), h_{i+1} = SiLU(W_i h_i + e_i(t)), eps = W_out h; e(t), e_i(t) are linear
    maps of the 2-layer time MLP applied to DDPM's sinusoidal embedding (``temb_dim`` wide).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, temb_dim: int = 64):
        super().__init__()
        if depth < 1 or hidden < 1 or dim < 1:
            raise ValueError(f"dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}")
        self.dim, self.temb_dim = dim, temb_dim
        self.temb = nn.Sequential(nn.Linear(temb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.temb_projs = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_timesteps(x, t)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        temb = self.temb(timestep_embedding(t, self.temb_dim).to(x.dtype))   # (B, hidden)
        h = self.inp(x) + temb
        for layer, proj in zip(self.layers, self.temb_projs):
            h = F.silu(layer(h) + proj(F.silu(temb)))
        return self.out(h)
