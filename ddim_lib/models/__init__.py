"""Models: the DDPM UNet, a 2-D MLP, and the named presets ``build_model`` instantiates."""
from __future__ import annotations

import inspect

from torch import nn

from .mlp import MLP
from .presets import PRESETS, Preset
from .unet import UNet, timestep_embedding

__all__ = ["build_model", "get_preset", "PRESETS", "Preset", "UNet", "MLP", "timestep_embedding"]

_ARCHS = {"unet": UNet, "mlp": MLP}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError naming the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_model(preset: str, **overrides) -> nn.Module:
    """A freshly initialised eps-network for ``preset``; ``overrides`` replace architecture arguments.

    Example: ``build_model("digits", ch=64)``. Unknown override names, and values the architecture
    cannot be built with (wrong types, negative sizes...), raise ValueError naming the options.
    """
    if not isinstance(preset, str):
        raise ValueError(f"the preset must be a name such as 'digits', got {preset!r}")
    p = get_preset(preset)
    arch = _ARCHS[p.arch]
    kwargs = {**p.model, **overrides}
    unknown = set(overrides) - set(inspect.signature(arch).parameters)
    if unknown:
        raise ValueError(f"unknown model option(s) {sorted(unknown)} for preset {preset!r} "
                         f"({arch.__name__} takes {', '.join(p.model)})")
    try:
        return arch(**kwargs)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError, AttributeError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise ValueError(f"model options {overrides} do not build the {arch.__name__} of preset {preset!r} "
                         f"({type(exc).__name__}: {message})") from None
