"""The DDPM / DDIM UNet (Ho et al. 2020, App. B; the model the DDIM paper samples from).

Structure (written from the description in DDPM and the layout of the official DDIM code's
``models/diffusion.py``, so that the CIFAR-10 configuration has the reference 35,746,307 parameters):

    x (B, C, H, W) -> conv_in -> [levels: num_res_blocks ResBlocks (+ attention at chosen
    resolutions), then a stride-2 conv] -> middle (ResBlock, attention, ResBlock) -> [levels in
    reverse: num_res_blocks + 1 ResBlocks on the concatenated skip (+ attention), then nearest
    up-sampling + conv] -> GroupNorm, SiLU, conv_out -> eps (B, C, H, W).

The time t enters every ResBlock through a projection of the sinusoidal embedding (4 * ch wide).
Weights use PyTorch's default initialisation (as the official DDIM PyTorch code does).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "timestep_embedding", "check_timesteps", "subpixel_kernels"]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DDPM's sinusoidal embedding: [sin(t w_0..w_{h-1}), cos(t w_0..w_{h-1})], w_i = 10000^(-i/(h-1)).

    t: (B,) integers; returns (B, dim) float32, h = dim // 2, zero-padded when dim is odd.
    """
    half = dim // 2
    if half < 2:
        raise ValueError(f"the embedding dimension must be at least 4, got {dim}")
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    angles = t.float()[:, None] * freqs[None, :]                            # (B, half)
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)                    # (B, 2 * half)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def check_timesteps(x: torch.Tensor, t: torch.Tensor) -> None:
    """A model's t must be a LongTensor (integer dtype) of shape (B,) matching x's batch."""
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"t must be a LongTensor of shape (B,), got {type(t).__name__}"
                         + (f" of dtype {t.dtype}" if isinstance(t, torch.Tensor) else ""))
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with 32 groups (eps 1e-6, as in DDPM)."""
    if channels % groups:
        raise ValueError(f"GroupNorm({groups}) needs channels divisible by {groups}, got {channels}")
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """h = conv(drop(SiLU(norm(conv(SiLU(norm(x))) + proj(SiLU(temb)))))); returns shortcut(x) + h."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2, self.dropout = group_norm(out_ch), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, q, k, v and output as 1x1 convs; residual.

    The 1x1 convs are applied as matrix products on the (B, HW, C) view of the normalised input
    (q, k and v as one product), which is where attention wants them.
    """

    def __init__(self, ch: int):
        super().__init__()
        self.norm = group_norm(ch)
        self.q, self.k, self.v = (nn.Conv2d(ch, ch, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)                             # (B, HW, C)
        w_qkv = torch.cat([self.q.weight, self.k.weight, self.v.weight]).view(3 * C, C)
        qkv = F.linear(h, w_qkv, torch.cat([self.q.bias, self.k.bias, self.v.bias]))   # (B, HW, 3C)
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)                             # (B, 1, HW, C) each
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)                 # softmax(q k^T / sqrt(C)) v
        h = F.linear(h, self.proj_out.weight.view(C, C), self.proj_out.bias)    # (B, HW, C)
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Halve H and W with a 3x3 stride-2 conv after padding one pixel right and bottom (as DDPM)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# Nearest x2 then a 3x3 conv, per output row parity: row 2i + 0 sees input rows (i - 1, i, i) through
# taps (w0, w1, w2), i.e. rows (i - 1, i) with (w0, w1 + w2); row 2i + 1 sees (i, i + 1) with (w0 + w1, w2).
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))   # [parity][tap][3x3 row]


def subpixel_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The four 2x2 kernels equal to a 3x3 conv after nearest x2 up-sampling (one per output parity).

    weight: (Co, C, 3, 3) -> (4 Co, C, 2, 2), blocks ordered by (row parity, column parity):
    k[py, px, o, c, a, b] = sum_ij A[py, a, i] A[px, b, j] weight[o, c, i, j], A = ``_PHASE_TAPS``.
    """
    taps = weight.new_tensor(_PHASE_TAPS)                                     # (2, 2, 3)
    k = torch.einsum("pai,qbj,ocij->pqocab", taps, taps, weight)
    return k.reshape(4 * weight.shape[0], weight.shape[1], 2, 2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour up-sampling, then a 3x3 conv (``self.conv``).

    Computed in sub-pixel form: the same output from four 2x2 convs at the input resolution, one per
    output parity, so 16 instead of 36 multiply-adds per input pixel and channel pair; the parameters
    are the 3x3 conv's, and ``reference`` is the literal interpolate-then-conv.
    """

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        co = self.conv.out_channels
        # y[:, (py, px, o), r, c] = output (o, 2 (r - py) + py, 2 (c - px) + px): (B, 4 Co, H + 1, W + 1)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), subpixel_kernels(self.conv.weight), self.conv.bias.repeat(4))
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = x.new_empty(B, H, 2, W, 2, co).permute(0, 5, 1, 2, 3, 4)       # channels_last result
        else:
            out = x.new_empty(B, co, H, 2, W, 2)
        for py in (0, 1):
            for px in (0, 1):
                block = 2 * py + px
                out[:, :, :, py, :, px] = y[:, block * co:(block + 1) * co, py:py + H, px:px + W]
        return out.reshape(B, co, 2 * H, 2 * W)


class Level(nn.Module):
    """One resolution of the UNet: ResBlocks, each optionally followed by attention, then a resampler."""

    def __init__(self, blocks: list[ResBlock], attn: bool, resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(AttnBlock(b.conv2.out_channels) for b in blocks) if attn else None
        self.resample = resample


class UNet(nn.Module):
    """The DDPM UNet: ``model(x, t)`` with x (B, in_ch, res, res) float and t (B,) long -> eps, x's shape.

    ch: base width; ch_mult: width multipliers per level; attn_resolutions: the spatial sizes at
    which self-attention follows each ResBlock; dropout inside every ResBlock.
    """

    def __init__(self, in_ch: int = 3, out_ch: int | None = None, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resolution: int = 32):
        super().__init__()
        if resolution % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"resolution {resolution} must be divisible by 2^(levels - 1) = {2 ** (len(ch_mult) - 1)}")
        self.ch, self.resolution, self.in_ch = ch, resolution, in_ch
        temb_ch = 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)

        widths, res, skips = [ch], resolution, [ch]          # skips: channels of every saved activation
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(widths[-1], ch * mult, temb_ch, dropout))
                widths.append(ch * mult)
                skips.append(ch * mult)
            last = level == len(ch_mult) - 1
            self.down.append(Level(blocks, res in attn_resolutions, None if last else Downsample(ch * mult)))
            if not last:
                skips.append(ch * mult)
                res //= 2
        mid = widths[-1]
        self.mid1, self.mid_attn = ResBlock(mid, mid, temb_ch, dropout), AttnBlock(mid)
        self.mid2 = ResBlock(mid, mid, temb_ch, dropout)

        self.up, width = nn.ModuleList(), mid
        for level, mult in reversed(list(enumerate(ch_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(width + skips.pop(), ch * mult, temb_ch, dropout))
                width = ch * mult
            self.up.append(Level(blocks, res in attn_resolutions, Upsample(width) if level else None))
            res *= 2
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_ch or in_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_timesteps(x, t)
        temb = self.temb(timestep_embedding(t, self.ch).to(x.dtype))     # (B, 4 ch)
        hs = [self.conv_in(x)]
        for level in self.down:                                         # (B, ch*mult, res, res)
            for i, block in enumerate(level.blocks):
                h = block(hs[-1], temb)
                hs.append(level.attns[i](h) if level.attns is not None else h)
            if level.resample is not None:
                hs.append(level.resample(hs[-1]))                       # res -> res / 2
        h = self.mid2(self.mid_attn(self.mid1(hs[-1], temb)), temb)
        for level in self.up:
            for i, block in enumerate(level.blocks):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                h = level.attns[i](h) if level.attns is not None else h
            if level.resample is not None:
                h = level.resample(h)                                   # res -> 2 res
        return self.conv_out(F.silu(self.norm_out(h)))
