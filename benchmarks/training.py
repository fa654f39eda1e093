"""Training benchmark: one optimiser step of ddim_lib's CIFAR-10 UNet versus diffusers' UNet2DModel
at the same configuration (35,746,307 parameters each), same batch, same loss, same optimiser.

The headline pair uses the optimiser ``ddim train`` uses (Adam, ``fused=True``) on both sides; a second
pair uses PyTorch's default Adam (one update per tensor) on both, so the model's share shows apart
from the optimiser's."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import ddim_lib

from .timing import alternate, ratio, summary

CIFAR10_PARAMETERS = 35_746_307   # DDPM's and the official DDIM code's count for this configuration


def diffusers_cifar10_unet(dropout: float = 0.1) -> nn.Module:
    """DDPM's CIFAR-10 UNet written as a diffusers UNet2DModel (dropout 0.1 as the paper's model)."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, downsample_padding=0,
                       flip_sin_to_cos=False, freq_shift=1, dropout=dropout)


class _EpsOnly(nn.Module):
    """diffusers' models return a dataclass: unwrap ``.sample`` so both sides are ``model(x, t) -> eps``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_step(model: nn.Module, batch: int, resolution: int, channels: int = 3, seed: int = 0,
              fused: bool = True, device: str = "cpu", bf16: bool = False, channels_last: bool = False):
    """One optimiser step on L_simple's regression (eps_theta(x_t, t) - eps)^2 with Adam (lr 2e-4;
    ``fused``: one kernel for all parameters, else PyTorch's default), on a fixed random batch (timing
    does not depend on the values). ``device``, ``bf16`` (autocast of the forward pass) and
    ``channels_last`` give the GPU variants ``ddim train`` uses on CUDA; a CUDA step ends with a
    synchronisation so that the timer sees the kernels, not their launch."""
    g = torch.Generator().manual_seed(seed)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    x_t = torch.randn(batch, channels, resolution, resolution, generator=g).to(device, memory_format=memory)
    eps = torch.randn(batch, channels, resolution, resolution, generator=g).to(device, memory_format=memory)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    model.to(device, memory_format=memory).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, fused=fused)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(model(x_t, t).float(), eps.float())
        loss.backward()
        optimizer.step()
        sync()

    return step


def training_step(batch: int, repeats: int, warmup: int = 1, preset: str = "cifar10",
                  resolution: int = 32, diffusers_kwargs: dict | None = None, device: str = "cpu",
                  bf16: bool = False, channels_last: bool = False) -> dict:
    """Ratio 3: seconds per optimiser step, ddim_lib's ``build_model(preset)`` over diffusers'.

    ``diffusers_kwargs`` replace UNet2DModel's arguments (the smoke test uses a tiny configuration of
    both); by default both are the 35,746,307-parameter CIFAR-10 model, and the counts are asserted.
    """
    torch.manual_seed(0)
    ours = ddim_lib.build_model(preset)
    theirs = _EpsOnly(diffusers_cifar10_unet() if diffusers_kwargs is None else _diffusers_unet(**diffusers_kwargs))
    if preset == "cifar10" and diffusers_kwargs is None:
        for name, model in (("ddim_lib", ours), ("diffusers", theirs)):
            if _count(model) != CIFAR10_PARAMETERS:
                raise AssertionError(f"{name}'s CIFAR-10 UNet has {_count(model)} parameters, not {CIFAR10_PARAMETERS}")
    channels = ours.in_ch
    kw = dict(device=device, bf16=bf16, channels_last=channels_last)
    times = alternate({"ddim_lib": make_step(ours, batch, resolution, channels, **kw),
                       "diffusers": make_step(theirs, batch, resolution, channels, **kw),
                       "ddim_lib_default_adam": make_step(ours, batch, resolution, channels, fused=False, **kw),
                       "diffusers_default_adam": make_step(theirs, batch, resolution, channels, fused=False, **kw)},
                      repeats, warmup)
    default = {"ddim_lib": summary(times["ddim_lib_default_adam"]),
               "diffusers": summary(times["diffusers_default_adam"]),
               **ratio(times["ddim_lib_default_adam"], times["diffusers_default_adam"])}
    return {"preset": preset, "batch": batch, "resolution": resolution, "optimizer": "Adam(fused=True) on both",
            "device": device, "bf16": bf16, "channels_last": channels_last,
            "parameters": {"ddim_lib": _count(ours), "diffusers": _count(theirs)},
            "ddim_lib": summary(times["ddim_lib"]), "diffusers": summary(times["diffusers"]),
            **ratio(times["ddim_lib"], times["diffusers"]), "default_adam": default}


def _diffusers_unet(**kwargs) -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(**kwargs)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.training --device cuda --bf16 --channels-last``: ratio 3 on one device, as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--preset", default="cifar10", help="cifar10 (the paper's UNet) or digits (tiny)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the forward pass")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    args = parser.parse_args(argv)
    from .run import _tiny_diffusers_digits
    tiny = None if args.preset == "cifar10" else _tiny_diffusers_digits()
    result = training_step(args.batch, args.repeats, args.warmup, preset=args.preset,
                           resolution=32 if args.preset == "cifar10" else 8, diffusers_kwargs=tiny,
                           device=args.device, bf16=args.bf16, channels_last=args.channels_last)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
