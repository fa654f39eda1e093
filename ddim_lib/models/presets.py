"""Named configurations: the architecture, the data set and the training defaults for each model.

"cifar10" and "celeba" are the paper's models (DDPM's UNet, trained as DDPM: Adam 2e-4, batch 128,
EMA 0.9999, 5000 warm-up steps, gradient clipping 1, random horizontal flips). "digits" and "toy2d"
are classroom models that train on a laptop CPU in minutes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Preset", "PRESETS", "LINEAR_T1000"]

LINEAR_T1000 = {"T": 1000, "beta_start": 1e-4, "beta_end": 0.02}   # DDPM's schedule (NoiseSchedule.linear)


@dataclass(frozen=True)
class Preset:
    """A model preset: ``build_model(name)`` builds ``arch(**model)``; ``train`` reads the rest."""

    name: str
    data: str                        # data set: "cifar10", "celeba", "digits" or a 2-D toy name
    shape: tuple[int, ...]           # one sample's shape, e.g. (3, 32, 32) or (2,)
    arch: str                        # "unet" or "mlp"
    model: dict = field(default_factory=dict)        # keyword arguments of the architecture
    schedule: dict = field(default_factory=lambda: dict(LINEAR_T1000))   # NoiseSchedule.linear kwargs
    batch_size: int = 128
    lr: float = 2e-4                 # Adam's learning rate
    ema_decay: float = 0.9999        # decay of the exponential moving average of the weights
    warmup: int = 5000               # steps of linear learning-rate warm-up (0: none)
    steps: int = 800_000             # training steps by default
    grad_clip: float = 1.0           # maximal global gradient norm
    hflip: bool = True               # random horizontal flips of the training images
    description: str = ""


PRESETS: dict[str, Preset] = {
    "cifar10": Preset(
        "cifar10", data="cifar10", shape=(3, 32, 32), arch="unet",
        model=dict(in_ch=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                   dropout=0.1, resolution=32),
        steps=800_000, description="DDPM's CIFAR-10 UNet (35.7M parameters), 800k steps as in DDPM"),
    "celeba": Preset(
        "celeba", data="celeba", shape=(3, 64, 64), arch="unet",
        model=dict(in_ch=3, ch=128, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                   dropout=0.1, resolution=64),
        steps=500_000, description="DDIM's CelebA 64x64 UNet (78.7M parameters)"),
    "digits": Preset(
        "digits", data="digits", shape=(1, 8, 8), arch="unet",
        model=dict(in_ch=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                   dropout=0.1, resolution=8),
        batch_size=64, lr=1e-3, ema_decay=0.999, warmup=200, steps=20_000, hflip=False,
        description="a 0.7M-parameter UNet for scikit-learn's 8x8 digits (no flips: digits are not mirror-symmetric)"),
    "toy2d": Preset(
        "toy2d", data="swiss_roll", shape=(2,), arch="mlp",
        model=dict(dim=2, hidden=128, depth=3, temb_dim=64),
        batch_size=512, lr=1e-3, ema_decay=0.995, warmup=100, steps=4000, hflip=False,
        description="an MLP eps-network for 2-D toy data (override the data set with data=...)"),
}
