"""The ``ddim`` command: train, sample, encode, reconstruct, interpolate, evaluate.

    ddim train --config digits --steps 6000 --out runs/digits
    ddim sample --checkpoint runs/digits --steps 50 --eta 0 --n 64 --out samples.png
    ddim sample --pretrained toy2d-swiss_roll --steps 20 --n 2000 --out roll.png
    ddim reconstruct --pretrained digits --steps 50 --n 16 --out recon.png
    ddim interpolate --pretrained digits --steps 50 --frames 9 --out interp.png
    ddim evaluate --pretrained digits --steps 50 --n 500

Every verb's options come from a dataclass of defaults in ``options.py`` (``train``'s from ``TrainConfig``).
Errors in the arguments, the data or a checkpoint print one line ``ddim: error: ...`` and exit 1
(argparse's usage errors exit 2); set DDIM_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..sampler import encode, sample, slerp
from ..timesteps import timesteps
from .files import check_shape, load_npy, out_path, save_npy, save_png, write_text
from .options import (TRAIN_HELP, EncodeOptions, EvaluateOptions, InterpolateOptions, ModelSource,
                      ReconstructOptions, SampleOptions, Sampling, add_options, parse_options)

__all__ = ["main", "build_parser"]


# ---- shared steps -------------------------------------------------------------------------------
@dataclass
class Loaded:
    model: torch.nn.Module
    schedule: object
    manifest: dict
    shape: tuple
    data: str
    device: torch.device


def _load_model(src: ModelSource) -> Loaded:
    from ..checkpoint import load_checkpoint, resolve_device
    from ..models import get_preset
    from ..pretrained import pretrained_path

    if (src.checkpoint is None) == (src.pretrained is None):
        raise ValueError("give exactly one of --checkpoint DIR and --pretrained NAME")
    device = resolve_device(src.device)
    path = pretrained_path(src.pretrained) if src.pretrained else Path(src.checkpoint)
    model, schedule, manifest = load_checkpoint(path, device=device)
    preset = get_preset(manifest["preset"])
    data = manifest.get("data") or (manifest.get("config") or {}).get("data") or preset.data
    shape = tuple(manifest.get("shape") or preset.shape)
    return Loaded(model.eval(), schedule.to(device), manifest, shape, data, device)


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"--{name} must be a positive integer, got {value}")
    return value


def _check_sampling(s: Sampling) -> Sampling:
    """The sampler options every verb shares, checked before any model is loaded."""
    _positive("steps", s.steps)
    _positive("batch-size", s.batch_size)
    if not math.isfinite(s.eta) or not 0 <= s.eta <= 1e6:
        raise ValueError(f"--eta must be a finite number >= 0 (0 = DDIM, 1 = DDPM-like), got {s.eta}")
    _check_seed(s.seed)
    return s


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**63:
        raise ValueError(f"--seed must lie in [0, 2^63), got {seed}")


def _check_memory(what: str, count: int, shape: tuple, copies: int = 3) -> None:
    """Refuse a float32 batch (count, *shape) that would not fit in this machine's memory."""
    need = 4 * copies * count * math.prod(shape)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 2**40
    if need > total:
        raise ValueError(f"{what} = {count} is too large: about {need / 2**30:.3g} GiB for samples of shape "
                         f"{tuple(shape)}, and this machine has {total / 2**30:.3g} GiB; use fewer")


def _finite(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} produced non-finite values (NaN or inf): a diverged model, or inputs far "
                         "outside the data's range?")
    return x


def _run_sampler(m: Loaded, x_T: torch.Tensor, s: Sampling, generator) -> torch.Tensor:
    tau = timesteps(m.schedule.T, s.steps, s.spacing)
    out = [sample(m.model, x, m.schedule, tau, eta=s.eta, variance=s.variance, generator=generator,
                  clip_x0=s.clip) for x in x_T.split(_positive("batch-size", s.batch_size))]
    return torch.cat(out).cpu()


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)



def _reference_points(m: Loaded, n: int):
    """A few data points to draw under 2-D samples (toy sets only: generated, never read)."""
    from ..toy import TOY2D_NAMES, toy2d
    return toy2d(m.data, n, torch.Generator().manual_seed(1)) if m.data in TOY2D_NAMES else None


# ---- the verbs ----------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from ..training import TrainConfig, train
    config = parse_options(args, TrainConfig)
    if config.command is None:
        config.command = shlex.join(["ddim", *args.argv])
    path = train(config)
    print(f"checkpoint: {path}")
    return 0


def cmd_sample(args) -> int:
    src, s, o = parse_options(args, ModelSource), _check_sampling(parse_options(args, Sampling)), parse_options(args, SampleOptions)
    png = out_path(o.out, ".png")
    _positive("n", o.n)
    m = _load_model(src)
    _check_memory("--n", o.n, m.shape)
    g = _generator(m.device, s.seed)
    x_T = torch.randn((o.n, *m.shape), generator=g, device=m.device)
    x0 = _finite(_run_sampler(m, x_T, s, g), "sampling")
    save_npy(png.with_suffix(".npy"), x0)
    title = f"{m.manifest['preset']} ({m.data}): S = {s.steps}, eta = {s.eta}, {s.spacing}"
    save_png(png, x0, title=title, reference=_reference_points(m, 2000) if x0.ndim == 2 else None)
    print(f"wrote {png} and {png.with_suffix('.npy')}: {o.n} samples of shape {m.shape}")
    return 0


def _data_points(m: Loaded, e: EncodeOptions, seed: int) -> torch.Tensor:
    if e.input is not None:
        return check_shape(load_npy(e.input, "input"), m.shape, "--input")[: _positive("n", e.n)]
    from ..data import load_dataset
    _check_memory("--n", _positive("n", e.n), m.shape)
    return load_dataset(m.data, root=e.data_root, n=_positive("n", e.n), generator=torch.Generator().manual_seed(seed))


def cmd_encode(args) -> int:
    src, s, e = parse_options(args, ModelSource), _check_sampling(parse_options(args, Sampling)), parse_options(args, EncodeOptions)
    out = out_path(e.out, ".npy")
    m = _load_model(src)
    x0 = _data_points(m, e, s.seed)
    z = _finite(encode(m.model, x0.to(m.device), m.schedule, timesteps(m.schedule.T, s.steps, s.spacing)).cpu(),
                "encoding")
    save_npy(out, z)
    print(f"wrote {out}: {len(z)} latents; mean {z.mean():.3f}, std {z.std():.3f} (N(0, I) would give 0, 1)")
    return 0


def cmd_reconstruct(args) -> int:
    src, s, e = parse_options(args, ModelSource), _check_sampling(parse_options(args, Sampling)), parse_options(args, ReconstructOptions)
    png = out_path(e.out, ".png")
    m = _load_model(src)
    x0 = _data_points(m, e, s.seed)
    tau = timesteps(m.schedule.T, s.steps, s.spacing)
    z = _finite(encode(m.model, x0.to(m.device), m.schedule, tau), "encoding")
    recon = _finite(sample(m.model, z, m.schedule, tau, eta=0.0).cpu(), "decoding")
    mse = ((recon.double() - x0.double()) ** 2).mean().item()
    save_npy(png.with_suffix(".npy"), recon)
    if x0.ndim == 4:   # originals in the odd rows, reconstructions below them
        ncol = min(len(x0), 8)
        rows = [t for i in range(0, len(x0), ncol) for t in (x0[i:i + ncol], recon[i:i + ncol])]
        save_png(png, torch.cat(rows), ncol=ncol)
    else:
        save_png(png, torch.stack([x0, recon], 1), paths=True,
                  title=f"data -> encode -> decode (S = {s.steps}): per-dim MSE {mse:.2e}")
    print(f"reconstruction error per dimension (S = {s.steps}, eta = 0): MSE {mse:.3e}, RMSE {math.sqrt(mse):.3e}")
    print(f"wrote {png} and {png.with_suffix('.npy')}")
    return 0


def cmd_interpolate(args) -> int:
    src, s, o = parse_options(args, ModelSource), _check_sampling(parse_options(args, Sampling)), parse_options(args, InterpolateOptions)
    png = out_path(o.out, ".png")
    rows, frames = _positive("rows", o.rows), _positive("frames", o.frames)
    if frames < 2:
        raise ValueError("--frames must be at least 2")
    m = _load_model(src)
    _check_memory("--rows x --frames", rows * frames, m.shape)
    if o.latents is not None:
        z = check_shape(load_npy(o.latents, "latents"), m.shape, "--latents")
        if len(z) < 2:
            raise ValueError(f"--latents needs at least 2 latents, got {len(z)}")
        rows = min(rows, len(z) // 2)
        z = z[: 2 * rows].to(m.device)
    else:
        z = torch.randn((2 * rows, *m.shape), generator=_generator(m.device, s.seed), device=m.device)
    z0, z1 = z[0::2], z[1::2]
    lams = torch.linspace(0, 1, frames).tolist()
    path = torch.stack([slerp(z0, z1, lam) for lam in lams], 1)            # (rows, frames, ...)
    decoded = _finite(_run_sampler(m, path.reshape(rows * frames, *m.shape), s, None), "decoding the interpolation")
    decoded = decoded.reshape(rows, frames, *m.shape)
    save_npy(png.with_suffix(".npy"), decoded)
    if decoded.ndim == 5:
        save_png(png, decoded.reshape(rows * frames, *m.shape), ncol=frames)
    else:
        save_png(png, decoded, paths=True, reference=_reference_points(m, 2000),
                  title=f"slerp between latents, decoded with DDIM (S = {s.steps})")
    print(f"wrote {png} and {png.with_suffix('.npy')}: {rows} rows x {frames} frames")
    return 0


def cmd_evaluate(args) -> int:
    from ..data import load_dataset
    from ..evaluate import frechet_distance, get_features
    from ..toy import TOY2D_NAMES

    src, s, o = parse_options(args, ModelSource), _check_sampling(parse_options(args, Sampling)), parse_options(args, EvaluateOptions)
    n = _positive("n", o.n)
    _check_memory("--n", 4 * n, (1,))                 # samples, two real halves, features: at least 4n values
    if o.samples is not None and (src.checkpoint or src.pretrained):
        raise ValueError("give either --samples FILE.npy or a model (--checkpoint/--pretrained), not both")
    m = None if o.samples is not None else _load_model(src)
    data_name = o.data or (m.data if m else None)
    if data_name is None:
        raise ValueError("--samples needs --data NAME (the data set to compare with)")
    g = torch.Generator().manual_seed(s.seed + 1)
    toy = data_name in TOY2D_NAMES        # toys are generated: 2n fresh points from a seeded generator
    data = load_dataset(data_name, root=o.data_root, n=2 * n if toy else None,
                        generator=torch.Generator().manual_seed(s.seed + 3) if toy else None)
    if 2 * n > len(data):
        raise ValueError(f"--n {n} is too large: the reference needs 2n = {2 * n} of the {len(data)} "
                         f"points of {data_name}")
    perm = torch.randperm(len(data), generator=g)
    real_a, real_b = data[perm[:n]], data[perm[n:2 * n]]
    if m is not None:
        x_T = torch.randn((n, *m.shape), generator=_generator(m.device, s.seed), device=m.device)
        samples = _run_sampler(m, x_T, s, _generator(m.device, s.seed + 2))
    else:
        samples = check_shape(load_npy(o.samples, "samples"), tuple(data.shape[1:]), "--samples")
        if len(samples) < n:
            raise ValueError(f"--samples holds {len(samples)} samples, fewer than --n {n}")
        samples = samples[:n]
    if samples.ndim == 4:   # images: clamped to [-1, 1] as saving them as pictures does (and FID code)
        samples = samples.clamp(-1, 1)
    names = o.features.split(",") if o.features != "auto" else ["pixel"] + (["digits"] if data_name == "digits" else [])
    results = {"n": n, "data": data_name, "steps": s.steps if m else None, "eta": s.eta if m else None,
               "spacing": s.spacing if m else None, "fd": {}}
    print(f"Frechet distance, {n} samples vs {n} real points of {data_name}; reference: two disjoint real halves")
    for name in names:
        features = get_features(name.strip(), o.inception)
        fd = frechet_distance(features(samples), features(real_a))
        ref = frechet_distance(features(real_b), features(real_a))
        results["fd"][name] = {"samples": fd, "reference": ref, "ratio": fd / ref if ref > 0 else None}
        print(f"  {name:>9}: samples {fd:.4g}   real halves {ref:.4g}   ratio {fd / ref:.3g}")
    if o.json:
        write_text(Path(o.json), json.dumps(results, indent=2) + "\n")
    return 0


def cmd_list(args) -> int:
    from ..pretrained import PRETRAINED_DIR, list_pretrained
    for name in list_pretrained():
        manifest = json.loads((PRETRAINED_DIR / name / "manifest.json").read_text())
        scores = [f"S={r['steps']} {feat} {v['ratio']:.2f}x" for r in (manifest.get("metrics") or {}).get("fd", {}).values()
                  for feat, v in r["fd"].items()]
        print(f"{name:18s} preset {manifest['preset']:7s} data {manifest.get('data')}, step {manifest.get('step')}; "
              f"FD / real-halves FD: {', '.join(scores) or 'not measured'}")
    return 0


# ---- the parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddim", description="Denoising Diffusion Implicit Models: "
                                     "train, sample, invert, interpolate and evaluate.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    titles = {ModelSource: "model", Sampling: "sampler"}

    def verb(name, func, help_text, *classes):
        p = sub.add_parser(name, help=help_text, description=help_text)
        for cls in classes:
            add_options(p.add_argument_group(titles.get(cls, name)), cls)
        p.set_defaults(func=func)
        return p

    train_p = sub.add_parser("train", help="train a model (options map onto ddim_lib.TrainConfig)",
                             description="Train an eps-network on a preset; writes checkpoints to --out "
                             "(--out/step-N/, each saved whole or not at all; one run per --out at a time). "
                             "--resume continues the newest complete checkpoint with the same hyper-parameters "
                             "(--allow-config-change to change them), exits 1 if it is already past --steps, "
                             "and only says so if it is exactly at --steps.")
    train_p.set_defaults(func=cmd_train, train_parser=True)
    _add_train_options(train_p)
    verb("sample", cmd_sample, "sample with the generalised DDIM sampler (eq. 12); PNG + .npy",
         ModelSource, Sampling, SampleOptions)
    verb("encode", cmd_encode, "DDIM inversion (eq. 13 run forward): data -> latents x_T (.npy)",
         ModelSource, Sampling, EncodeOptions)
    verb("reconstruct", cmd_reconstruct, "encode data, decode it again, report the per-dimension error",
         ModelSource, Sampling, ReconstructOptions)
    verb("interpolate", cmd_interpolate, "slerp between latents and decode each frame (PNG strip)",
         ModelSource, Sampling, InterpolateOptions)
    verb("evaluate", cmd_evaluate, "Frechet distance of n samples to n data points, beside that of two "
         "disjoint real halves of n (image samples are clamped to [-1, 1] first, as saved pictures are)",
         ModelSource, Sampling, EvaluateOptions)
    verb("list", cmd_list, "list the shipped pretrained models")
    return parser


def _add_train_options(parser) -> None:
    try:
        from ..training import TrainConfig
    except ImportError as err:    # keep every other verb usable
        parser.set_defaults(train_unavailable=str(err))
        return
    add_options(parser, TrainConfig, help_table=TRAIN_HELP, rename={"preset": "config"})


def main(argv: list[str] | None = None) -> int:
    """Run ``ddim`` with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    from .._cli_interrupt import interrupted
    parser = build_parser()
    if interrupted():                    # a Ctrl-C during the imports that some library swallowed
        print("ddim: interrupted", file=sys.stderr)
        return 130
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = parser.parse_args(argv)
        args.argv = argv
        if getattr(args, "train_unavailable", None):
            raise ValueError(f"training is unavailable: {args.train_unavailable}")
        return args.func(args)
    except SystemExit as exit_:          # --help (0) and argparse's usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        print("ddim: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # CheckpointError is a ValueError; FileNotFoundError an OSError
        if os.environ.get("DDIM_DEBUG"):
            raise
        if interrupted():                # an error that a Ctrl-C caused (e.g. inside an import)
            print("ddim: interrupted", file=sys.stderr)
            return 130
        message = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
                isinstance(err, RuntimeError) and "memory" in message.lower()):
            message = f"out of memory ({message[:200]}); ask for fewer samples or a smaller --batch-size"
        elif not isinstance(err, (ValueError, OSError)):
            message = (f"unexpected {type(err).__name__}: {message[:300]} (a bug: please report it; "
                       "DDIM_DEBUG=1 shows the traceback)")
        print(f"ddim: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
