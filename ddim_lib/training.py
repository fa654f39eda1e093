"""The training loop behind ``ddim train``: L_simple, Adam, EMA, checkpoints, exact resume, DDP.

One step (DDPM's Algorithm 1, the gamma = 1 objective of eq. 5 in the DDIM paper):

    x_0 ~ data, t ~ Uniform{0..T-1}, eps ~ N(0, I)
    loss = || eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) - eps ||^2   (mean over elements)
    Adam step with lr warm-up and gradient clipping; EMA of the weights.

Randomness is counter-based: the data order of epoch e comes from a generator seeded with
(seed, e), and t, eps, flips and dropout of step k on rank r from generators seeded with
(seed, r, k). The step counter is thus the whole random state, and a run resumed from a checkpoint
continues bit for bit as if it had never stopped (on the CPU; CUDA kernels may be nondeterministic).

Multi-GPU: launch with ``torchrun --nproc_per_node N``; RANK / WORLD_SIZE in the environment switch
on DistributedDataParallel (nccl on CUDA, gloo on the CPU). Each rank reads its own shard of every
epoch; rank 0 writes checkpoints and the log. The batch size is per rank.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import (CheckpointError, RunLock, clean_run_dir, git_commit, has_checkpoint,
                         load_training_state, resolve_device, save_checkpoint, unwrap)
from .data import load_dataset
from .models import build_model, get_preset
from .schedule import NoiseSchedule

__all__ = ["TrainConfig", "train", "NonFiniteLossError", "l_simple", "LOG_FILE"]

LOG_FILE = "log.jsonl"


@dataclass
class TrainConfig:
    """Options of ``train`` (and of ``ddim train``, one to one). None means "the preset's value"."""

    preset: str = "digits"              # "cifar10", "celeba", "digits", "toy2d"
    steps: int | None = None            # total optimiser steps (a resumed run continues up to it)
    out: str = "runs/digits"            # the checkpoint directory (also holds log.jsonl)
    resume: bool = False                # continue from the checkpoint in `out` (fresh start if none)
    device: str = "auto"                # "auto": CUDA if available, else CPU; or "cpu", "cuda:0", ...
    batch_size: int | None = None       # per process
    lr: float | None = None             # Adam's peak learning rate
    ema_decay: float | None = None      # EMA decay; early steps use min(decay, (1 + k) / (10 + k))
    warmup: int | None = None           # linear learning-rate warm-up steps
    seed: int = 0                       # seeds the model, the data order and every noise draw
    data_root: str | None = None        # folder holding CIFAR-10 batches or images
    data: str | None = None             # override the preset's data set (e.g. "two_moons" for toy2d)
    log_every: int = 100                # steps between log lines (log.jsonl, progress bar)
    ckpt_every: int = 1000              # steps between checkpoints (one is always written at the end)
    progress: bool = True               # show a tqdm progress bar
    bf16: bool = True                   # bfloat16 autocast (CUDA only)
    compile: bool = False               # torch.compile the model
    grad_clip: float | None = None      # maximal global gradient norm
    hflip: bool | None = None           # random horizontal flips (images only)
    n_data: int | None = None           # train on a random subset of n samples
    model_overrides: dict = field(default_factory=dict)   # architecture options, e.g. {"ch": 64}
    command: str | None = None          # recorded in the manifest (default: this process's argv)
    allow_config_change: bool = False   # let --resume change lr, EMA decay, warm-up, clipping, batch, ...


class NonFiniteLossError(ValueError):
    """Training produced a non-finite loss, gradient or weight (learning rate too high, bad data...)."""


# ---- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Resolved:
    batch_size: int
    lr: float
    ema_decay: float
    warmup: int
    steps: int
    grad_clip: float
    hflip: bool
    data: str


def _resolve(config: TrainConfig) -> _Resolved:
    preset = get_preset(config.preset)

    def pick(name):
        value = getattr(config, name)
        return getattr(preset, name) if value is None else value

    r = _Resolved(batch_size=pick("batch_size"), lr=pick("lr"), ema_decay=pick("ema_decay"),
                  warmup=pick("warmup"), steps=pick("steps"), grad_clip=pick("grad_clip"),
                  hflip=pick("hflip"), data=config.data or preset.data)
    checks = [(isinstance(r.steps, int) and r.steps >= 1, f"steps must be a positive integer, got {r.steps!r}"),
              (isinstance(r.batch_size, int) and r.batch_size >= 1, f"batch_size must be a positive integer, got {r.batch_size!r}"),
              (r.lr > 0 and np.isfinite(r.lr), f"lr must be positive, got {r.lr}"),
              (0 <= r.ema_decay < 1, f"ema_decay must lie in [0, 1), got {r.ema_decay}"),
              (isinstance(r.warmup, int) and r.warmup >= 0, f"warmup must be a non-negative integer, got {r.warmup!r}"),
              (r.grad_clip > 0 and np.isfinite(r.grad_clip), f"grad_clip must be positive, got {r.grad_clip}"),
              (_is_int(config.seed) and 0 <= config.seed < 2**63,
               f"seed must be an integer in [0, 2^63), got {config.seed!r}"),
              (isinstance(config.model_overrides, dict), "model_overrides must be a JSON object such as {\"ch\": 64}"),
              (config.log_every >= 1, f"log_every must be positive, got {config.log_every}"),
              (config.ckpt_every >= 1, f"ckpt_every must be positive, got {config.ckpt_every}")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return r


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _expected_shape(preset_name: str, overrides: dict) -> tuple[int, ...]:
    preset = get_preset(preset_name)
    kw = {**preset.model, **overrides}
    if preset.arch == "unet":
        return (kw["in_ch"], kw["resolution"], kw["resolution"])
    return (kw["dim"],)


# ---- randomness: everything is a function of (seed, rank, step) -------------------------------------
def _mix(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def _generator(device: torch.device, *keys: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_mix(*keys))


class _Sampler:
    """Batches without replacement: epoch e is a permutation seeded by (seed, e), split across ranks."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int):
        self.per_rank, self.batch_size, self.seed, self.rank, self.world = n // world, batch_size, seed, rank, world
        self.steps_per_epoch = self.per_rank // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size {batch_size} exceeds the {self.per_rank} samples per process "
                             f"({n} samples, {world} process(es)); lower batch_size")
        self._epoch, self._shard = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            perm = torch.randperm(self.per_rank * self.world, generator=_generator(torch.device("cpu"), self.seed, 1, epoch))
            self._epoch, self._shard = epoch, perm[self.rank::self.world]
        return self._shard[i * self.batch_size:(i + 1) * self.batch_size]


# ---- the objective and one step --------------------------------------------------------------------
def l_simple(model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             sqrt_ab: torch.Tensor, sqrt_1m_ab: torch.Tensor) -> torch.Tensor:
    """Mean of (eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps)^2; sqrt tables of shape (T,)."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    x_t = sqrt_ab[t].view(shape) * x0 + sqrt_1m_ab[t].view(shape) * noise
    return F.mse_loss(model(x_t, t).float(), noise.float())


def _draw_batch(step: int, data: torch.Tensor, sampler: "_Sampler", seed: int, rank: int, T: int, hflip: bool,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step ``step``'s x_0 (B, ...), t (B,) uniform in 0..T-1 and eps ~ N(0, I); seeds dropout too."""
    x0 = data[sampler.indices(step).to(data.device)].to(device, non_blocking=True)
    g = _generator(device, seed, 3, rank, step)
    t = torch.randint(0, T, (x0.shape[0],), device=device, generator=g)
    noise = torch.randn(x0.shape, device=device, generator=g)
    if hflip and x0.ndim == 4:                                           # mirror half the images
        flip = torch.rand(x0.shape[0], device=device, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    if device.type == "cuda" and x0.ndim == 4:
        x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
    torch.manual_seed(_mix(seed, 4, rank, step))                          # this step's dropout masks
    return x0, t, noise


def _optimise(net: nn.Module, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
              batch: tuple, step: int, r: "_Resolved", bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on L_simple (warm-up, clipping), then the EMA; returns (loss, gradient norm)."""
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = _lr_at(step, r.lr, r.warmup)
    with torch.autocast(batch[0].device.type, dtype=torch.bfloat16, enabled=bf16):   # the forward pass only
        loss = l_simple(net, *batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
    optimizer.step()
    _ema_update(ema, model, min(r.ema_decay, (1 + step) / (10 + step)))
    return loss.detach(), grad_norm


def _lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warm-up: lr * min(1, (step + 1) / warmup)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter at once (buffers copied)."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


# ---- distributed set-up ------------------------------------------------------------------------------
def _init_distributed(device: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we initialised the process group) from RANK/WORLD_SIZE."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return 0, 1, dev, False
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev, started


def _all_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(x)
        x = x / world
    return x


# ---- the loop ------------------------------------------------------------------------------------------
_FIXED_KEYS = ("preset", "model_overrides")                 # the weights would not fit another model
_CHANGEABLE_KEYS = ("seed", "data", "n_data", "batch_size", "world_size", "lr", "ema_decay", "warmup",
                    "grad_clip", "hflip")                    # only with allow_config_change


def train(config: TrainConfig) -> Path:
    """Train ``config.preset`` and return the run directory ``config.out`` (checkpoints in step-N/).

    One writer per run directory: rank 0 holds an OS lock on ``out/.lock`` for the whole run.
    """
    r = _resolve(config)
    expected = _expected_shape(config.preset, config.model_overrides)
    rank, world, device, started_group = _init_distributed(config.device)
    try:
        with RunLock(config.out) if rank == 0 else contextlib.nullcontext():
            return _train(config, r, expected, rank, world, device)
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, r: _Resolved, expected: tuple, rank: int, world: int,
           device: torch.device) -> Path:
    out = Path(config.out)
    preset = get_preset(config.preset)
    found = has_checkpoint(out)
    if found and not config.resume:
        raise ValueError(f"{out} already holds a checkpoint; pass resume to continue it or choose another out")
    if rank == 0:
        clean_run_dir(out)                               # leftovers of an interrupted save
    data = load_dataset(r.data, config.data_root, n=config.n_data, generator=_generator(torch.device("cpu"), config.seed, 2))
    if tuple(data.shape[1:]) != expected:
        raise ValueError(f"data set {r.data!r} has samples of shape {tuple(data.shape[1:])}, but preset "
                         f"{config.preset!r} expects {expected}")
    data = data.to(device) if data.numel() * 4 < 2**30 else data.pin_memory() if device.type == "cuda" else data
    sampler = _Sampler(len(data), r.batch_size, config.seed, rank, world)
    schedule = NoiseSchedule.linear(**preset.schedule)
    sqrt_ab = schedule.alpha_bars.sqrt().to(device, torch.float32)
    sqrt_1m_ab = (1 - schedule.alpha_bars).sqrt().to(device, torch.float32)

    torch.manual_seed(config.seed)
    model = build_model(config.preset, **config.model_overrides).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    # fused: one kernel over all parameters (on a CPU 5x faster than the per-tensor loop for 35.7M)
    optimizer = torch.optim.Adam(model.parameters(), lr=r.lr, fused=device.type in ("cpu", "cuda"))
    train_config = json.loads(json.dumps({**asdict(config), **asdict(r), "world_size": world}, default=list))
    command = config.command or shlex.join(sys.argv)
    start, seconds_before, legs = 0, 0.0, []
    if found:
        def check(saved: dict, directory: Path) -> None:
            _check_resumable(saved, train_config, out, config.allow_config_change)
            if saved.get("step", 0) > r.steps:
                raise ValueError(f"cannot resume {out}: its checkpoint is at step {saved['step']}, past the "
                                 f"target steps = {r.steps}; ask for more steps to continue it")
        saved, _ = load_training_state(out, model=model, ema_model=ema, optimizer=optimizer, check=check)
        start, seconds_before = saved["step"], (saved.get("metrics") or {}).get("train_seconds", 0.0)
        legs = _legs(saved)
        if start == r.steps:
            print(f"ddim: {out} is already at step {start} = the target steps; nothing to train "
                  "(ask for more steps to continue it)", file=sys.stderr)
            return out
    legs.append({"from_step": start, "to_step": start, "command": command, "train_config": train_config,
                 "git_commit": git_commit(),
                 "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    use_cuda = device.type == "cuda"
    if use_cuda and data.ndim == 4:                 # NHWC convolutions are faster on CUDA
        model, ema = model.to(memory_format=torch.channels_last), ema.to(memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None) if world > 1 else model
    net = torch.compile(net) if config.compile else net

    manifest = {"preset": config.preset, "model_overrides": config.model_overrides, "schedule": preset.schedule,
                "seed": config.seed, "data": r.data, "train_config": train_config, "command": command, "legs": legs}
    log = _Log(out / LOG_FILE, start) if rank == 0 else None
    bar = tqdm(total=r.steps, initial=start, disable=not config.progress or rank != 0, dynamic_ncols=True,
               desc=f"train {config.preset}")
    window_loss, window_steps, window_bad = torch.zeros((), device=device), 0, torch.zeros((), device=device)
    last_saved, last_loss, clock = start, None, time.perf_counter()
    t_start = clock

    for step in range(start, r.steps):
        x0, t, noise = _draw_batch(step, data, sampler, config.seed, rank, schedule.T, r.hflip, device)
        loss, grad_norm = _optimise(net, model, ema, optimizer, (x0, t, noise, sqrt_ab, sqrt_1m_ab), step, r,
                                    bf16=device.type == "cuda" and config.bf16)

        window_loss += loss
        window_bad += (~torch.isfinite(loss)) | (~torch.isfinite(grad_norm))
        window_steps += 1
        done = step + 1
        is_log, is_ckpt = done % config.log_every == 0 or done == r.steps, done % config.ckpt_every == 0 or done == r.steps
        if not (is_log or is_ckpt):
            continue
        weights_bad = (~_all_finite(model, ema)).float()             # the weights after the update
        stats = _all_mean(torch.stack([window_loss / window_steps, window_bad.float(), weights_bad]), world).tolist()
        if not np.isfinite(stats[0]) or stats[1] > 0 or stats[2] > 0:
            loss_ok = np.isfinite(stats[0]) and stats[1] == 0
            _diverged(out, log, bar, done - window_steps, done, last_saved, weights=loss_ok)
        now = time.perf_counter()
        last_loss, rate = stats[0], window_steps * r.batch_size * world / max(now - clock, 1e-9)
        if log is not None:
            log.write({"step": done, "loss": last_loss, "lr": optimizer.param_groups[0]["lr"],
                       "samples_per_s": rate, "seconds": seconds_before + now - t_start})
        bar.set_postfix(loss=f"{last_loss:.4f}", samples_s=f"{rate:.0f}")
        bar.update(window_steps)
        window_loss, window_steps, window_bad, clock = torch.zeros_like(window_loss), 0, torch.zeros_like(window_bad), now
        if is_ckpt and rank == 0:
            manifest["metrics"] = {"loss": last_loss, "train_seconds": seconds_before + now - t_start,
                                   "samples_seen": done * r.batch_size * world}
            legs[-1]["to_step"] = done
            save_checkpoint(out, model=model, ema_model=ema, optimizer=optimizer, step=done, manifest=manifest)
            last_saved = done
    bar.close()
    if world > 1:
        dist.barrier()
    return out


def _all_finite(*modules: nn.Module) -> torch.Tensor:
    """One boolean tensor: every floating-point parameter and buffer of ``modules`` is finite."""
    tensors = [v for m in modules for v in unwrap(m).state_dict().values() if v.is_floating_point()]
    return torch.stack([v.isfinite().all() for v in tensors]).all()


def _legs(saved: dict) -> list[dict]:
    """The legs recorded in a checkpoint's manifest; older manifests had one config and command."""
    legs = saved.get("legs")
    if isinstance(legs, list) and all(isinstance(leg, dict) for leg in legs):
        return [dict(leg) for leg in legs]
    return [{"from_step": None, "to_step": saved.get("step"), "command": saved.get("command"),
             "train_config": saved.get("train_config"), "git_commit": saved.get("git_commit"),
             "note": "recorded before legs were kept: the start of this leg is unknown"}]


def _check_resumable(saved: dict, current: dict, out: Path, allow_change: bool) -> None:
    """Refuse to resume another model always, and changed hyper-parameters unless ``allow_change``."""
    where = f"cannot resume {out} (checkpoint at step {saved.get('step')})"
    if saved.get("preset") != current["preset"]:
        raise ValueError(f"{where}: it was trained with preset {saved.get('preset')!r}, not "
                         f"{current['preset']!r}; a run cannot change its model")
    old = saved.get("train_config") or {}
    if "model_overrides" in old and old["model_overrides"] != current["model_overrides"]:
        raise ValueError(f"{where}: it was trained with model_overrides {old['model_overrides']!r}, not "
                         f"{current['model_overrides']!r}; a run cannot change its model")
    changed = [f"{k} = {old[k]!r}, not {current[k]!r}" for k in _CHANGEABLE_KEYS if k in old and old[k] != current[k]]
    if changed and not allow_change:
        raise ValueError(f"{where}: it was trained with {'; '.join(changed)}; pass allow_config_change "
                         "(--allow-config-change) to change this on purpose (the manifest keeps every leg)")


def _diverged(out: Path, log, bar, first: int, last: int, last_saved: int, weights: bool = False):
    bar.close()
    what = "non-finite weights after the update" if weights else "non-finite loss or gradient"
    if log is not None:
        log.write({"step": last, "event": what})
    kept = (f"the last checkpoint with finite weights (step {last_saved}) is kept in {out}" if last_saved
            else "no checkpoint was written")
    raise NonFiniteLossError(f"training stopped: {what} between steps {first + 1} and {last}; {kept}; "
                             "try a lower learning rate")


class _Log:
    """JSON lines, one per log step; on resume, rows after the checkpoint's step are dropped.

    Never writes through a symlink: the rewrite goes to a ``mkstemp`` file replaced atomically, and
    appends open the file with O_NOFOLLOW.
    """

    def __init__(self, path: Path, start: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            raise CheckpointError(f"{path} is a symlink; refusing to write the log through it")
        rows = path.read_text().splitlines() if path.is_file() and start > 0 else []
        kept = [row for row in rows if _row_step(row) <= start]
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write("".join(row + "\n" for row in kept))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write(self, row: dict) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise CheckpointError(f"cannot append to {self.path} ({exc.strerror}; a symlink is refused)") from None
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(row) + "\n")


def _row_step(row: str) -> float:
    try:
        return json.loads(row).get("step", float("inf"))
    except (json.JSONDecodeError, AttributeError):
        return float("inf")
