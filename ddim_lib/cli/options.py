"""The ``ddim`` command's options: a dataclass of defaults per group, turned into typed argparse options."""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

def opt(default, help: str, choices=None):
    """A dataclass field whose metadata carries the option's help and choices."""
    return field(default=default, metadata={"help": help, "choices": choices})


# ---- the verbs' defaults ------------------------------------------------------------------------
@dataclass
class ModelSource:
    checkpoint: str | None = opt(None, "checkpoint directory written by `ddim train`")
    pretrained: str | None = opt(None, "a shipped model instead: digits, toy2d-<data> (see `ddim list`)")
    device: str = opt("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...")


@dataclass
class Sampling:
    steps: int = opt(50, "S, the number of sampling steps (the length of tau)")
    eta: float = opt(0.0, "eq. 16: 0 = DDIM (deterministic), 1 = DDPM's posterior variance")
    spacing: str = opt("uniform", "timestep subsequence tau (App. D.2)", ("uniform", "quadratic"))
    variance: str = opt("eta", "eta: sigma of eq. 16; sigma_hat: App. D.3's larger variance",
                        ("eta", "sigma_hat"))
    clip: bool = opt(False, "clip each predicted x_0 to [-1, 1] (images only; the paper does not)")
    seed: int = opt(0, "random seed of the latents x_T and of the sampling noise")
    batch_size: int = opt(500, "samples per model call batch")


@dataclass
class SampleOptions:
    out: str = opt("samples.png", "PNG to write (image grid, or scatter plot for 2-D data); "
                   "the raw samples go next to it as .npy")
    n: int = opt(64, "number of samples")


@dataclass
class EncodeOptions:
    out: str = opt("latents.npy", "where to write the latents x_T (.npy), or the PNG for reconstruct")
    n: int = opt(16, "number of data points to encode (a seeded random subset of the data set)")
    input: str | None = opt(None, ".npy file of data points (N, ...) to encode instead of the data set")
    data_root: str | None = opt(None, "folder of the data set (cifar10, celeba)")


@dataclass
class ReconstructOptions(EncodeOptions):
    out: str = opt("reconstruction.png", "PNG to write (data above reconstructions); the "
                   "reconstructions go next to it as .npy")


@dataclass
class InterpolateOptions:
    out: str = opt("interpolation.png", "PNG strip to write; the decoded frames go next to it as .npy")
    frames: int = opt(9, "frames per row, from lam = 0 to lam = 1")
    rows: int = opt(4, "independent pairs of latents, one per row")
    latents: str | None = opt(None, ".npy of latents (e.g. from `ddim encode`); rows pair 0-1, 2-3, ...")


@dataclass
class EvaluateOptions:
    n: int = opt(500, "samples, and real points in each half of the reference")
    samples: str | None = opt(None, ".npy of samples (N, ...) to score instead of sampling a model")
    data: str | None = opt(None, "data set to compare with (default: the model's)")
    data_root: str | None = opt(None, "folder of the data set (cifar10, celeba)")
    features: str = opt("auto", "comma-separated: pixel, digits, inception (auto: pixel, plus digits "
                        "for the digits data)")
    inception: str | None = opt(None, "local TorchScript Inception file (e.g. inception-2015-12-05.pt). "
                                "TRUST: loading a TorchScript file runs code from it; use only files you trust")
    json: str | None = opt(None, "also write the results to this JSON file")


TRAIN_HELP = {
    "preset": "model preset: cifar10, celeba, digits, toy2d", "steps": "training steps (default: the preset's)",
    "out": "checkpoint directory", "resume": "continue from the checkpoint in --out",
    "device": "auto, cpu, cuda, ...", "batch_size": "batch size (default: the preset's)",
    "lr": "Adam learning rate (default: the preset's)", "ema_decay": "EMA decay (default: the preset's)",
    "warmup": "learning-rate warm-up steps (default: the preset's)", "seed": "random seed",
    "data_root": "folder of the data set (cifar10, celeba). CIFAR-10 batches are Python pickles, which "
                 "can carry code: they are read with a restricted unpickler that accepts only the official "
                 "format (dicts, lists, bytes, numpy arrays) and refuses anything else",
    "data": "override the preset's data set (e.g. two_moons for toy2d)",
    "log_every": "log every this many steps", "ckpt_every": "save a checkpoint every this many steps",
    "progress": "show a progress bar", "bf16": "bfloat16 autocast (CUDA only)",
    "compile": "torch.compile the model", "grad_clip": "maximal gradient norm (default: the preset's)",
    "hflip": "random horizontal flips of images (default: the preset's)",
    "n_data": "train on a random subset of this many samples (default: all)",
    "model_overrides": "architecture options as JSON, e.g. '{\"ch\": 64}'",
    "command": "command line recorded in the manifest (default: this one)",
    "allow_config_change": "with --resume: accept a changed learning rate, EMA decay, warm-up, clipping, batch "
                           "size, seed or data (refused otherwise); every leg is kept in the manifest",
}


# ---- argparse from dataclasses --------------------------------------------------------------------
def _base_type(hint):
    """int | None -> int; Literal choices are left to the field's metadata."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _json_object(text: str) -> dict:
    """argparse type for a JSON object such as '{"ch": 64}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"ch\": 64}'")
    return value


def add_options(parser, cls, help_table: dict | None = None, rename: dict | None = None) -> None:
    """One --option per field of the dataclass ``cls``, typed by its annotation, with its default.

    int/float/str/Path fields take a value; bool fields are flags (--x, or --x/--no-x when the
    default is True or None); dict fields take a JSON object; Literal types become choices.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        kind = _base_type(hint)
        flag = "--" + f.name.replace("_", "-")
        alias = (rename or {}).get(f.name)
        names = [flag] if alias is None else ["--" + alias, flag]
        help_text = f.metadata.get("help") or (help_table or {}).get(f.name, f.name.replace("_", " "))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (None if required else f.default if f.default is not dataclasses.MISSING
                   else f.default_factory())
        if default is not None and default != {} and "default" not in help_text:
            help_text += " (default: %(default)s)"
        kw = dict(dest=f.name, default=default, help=help_text)
        if kind is bool:
            kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        elif kind is dict or typing.get_origin(kind) is dict:
            kw.update(type=_json_object, metavar="JSON")
        else:
            choices = f.metadata.get("choices")
            if typing.get_origin(kind) is typing.Literal:
                choices, kind = typing.get_args(kind), str
            kw.update(type=kind if kind in (int, float, Path) else str, required=required, choices=choices)
        parser.add_argument(*names, **kw)


def parse_options(args, cls):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
