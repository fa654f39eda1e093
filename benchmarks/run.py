"""``make bench``: every figure a ratio of two things timed alternately in one run; a table on stdout
and ``build/bench/results.json``.

    python -m benchmarks.run [--notebooks] [--quick] [--repeats N] [--threads N] [--out PATH]

1. sampler overhead: ddim_lib.sample over S bare forward passes (digits UNet, S = 50, batch 256);
2. ddim_lib.sample over diffusers' DDIMScheduler loop (same model, equivalent configuration), after
   asserting that both give the same x_0 to float32 precision; likewise (parity only) that
   ddim_lib.dpm_solver_pp_2m and diffusers' DPMSolverMultistepScheduler ("dpmsolver++", order 2) agree;
3. one optimiser step of build_model("cifar10") over diffusers' UNet2DModel (batch 8, 32x32);
4. DDIM at the smallest S matching DDPM-1000's Frechet distance (within 10%) over DDPM-1000, for the
   paper's two DDPM samplers: (a) eta = 1 and (b) sigma_hat;
5. (--notebooks) seconds to execute each chapter and to build the whole book.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import notebooks, sampling, training

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchConfig:
    repeats: int = 9                 # timed rounds of ratios 1 and 2 (medians; a round times both sides back to back)
    warmup: int = 1                  # untimed rounds first
    threads: int = 1                 # torch intra-op threads: 1 on the shared 2-core machine (see README)
    S: int = 50                      # sampling steps for ratios 1 and 2
    sample_batch: int = 256          # batch for ratios 1 and 2
    parity_batch: int = 16           # batch of the float32/float64 parity check against diffusers
    dpm_S: int = 20                  # steps of the DPM-Solver++(2M) parity check
    train_batch: int = 8             # batch of ratio 3 (32x32 CIFAR-10 images)
    train_repeats: int = 5           # timed rounds of ratio 3 (a CPU training step takes seconds)
    fd_samples: int = 512            # samples per sampler for ratio 4's Frechet distances
    S_grid: list[int] = field(default_factory=lambda: [10, 20, 50, 100])   # ratio 4's candidates
    notebooks: bool = False          # time every chapter and the whole book (on in `make bench`)
    book: bool = True                # with --notebooks: also build the whole book
    out: str = str(ROOT / "build" / "bench" / "results.json")


QUICK = dict(repeats=2, warmup=1, S=5, dpm_S=5, sample_batch=8, parity_batch=4, train_batch=2, train_repeats=1,
             fd_samples=96, S_grid=[5, 10])
TARGETS = {"sampler_overhead": ("<=", 1.02), "against_diffusers": ("<=", 1.0),
           "training_step": ("<=", 0.9), "ddim_vs_ddpm": ("<=", 0.1)}


def run(cfg: BenchConfig, quick: bool = False) -> dict:
    """Run every part; a part that fails is recorded with its error and the others still run."""
    torch.set_num_threads(cfg.threads)
    results = {"config": asdict(cfg), "quick": quick, "machine": _machine(), "parts": {}}
    model, schedule, trained = sampling.digits_model()
    results["digits_model"] = "shipped (load_pretrained('digits'))" if trained else \
        "stand-in: build_model('digits'), untrained (no shipped digits checkpoint)"
    parts = {
        "sampler_overhead": lambda: sampling.sampler_overhead(model, schedule, cfg.S, cfg.sample_batch,
                                                              cfg.repeats, cfg.warmup),
        "diffusers_parity": lambda: sampling.diffusers_parity(model, schedule, cfg.S, cfg.parity_batch),
        "dpm_parity": lambda: sampling.dpm_parity(model, schedule, cfg.dpm_S, cfg.parity_batch),
        "against_diffusers": lambda: sampling.against_diffusers(model, schedule, cfg.S, cfg.sample_batch,
                                                                cfg.repeats, cfg.warmup),
        "loop_overhead": lambda: sampling.loop_overhead(schedule, cfg.S, cfg.sample_batch, sampling._shape(model),
                                                        5, cfg.warmup),
        "training_step": lambda: _training(cfg, quick),
        "ddim_vs_ddpm": lambda: _ddim_vs_ddpm(cfg, quick, *sampling.digits_model()),   # looked up again
    }
    if cfg.notebooks:   # with the book: one execution pass, chapter times read from the build's log
        if cfg.book:
            parts["book"] = notebooks.build_book
        parts["notebooks"] = lambda: _chapter_times(results["parts"].get("book"))
    for name, part in parts.items():
        start = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            results["parts"][name] = part()
        except Exception as err:
            results["parts"][name] = {"error": f"{type(err).__name__}: {err}",
                                      "traceback": traceback.format_exc()}
        print(f"[bench] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    results["gpu"] = _gpu_note()
    return results


def _chapter_times(book: dict | None) -> list[dict]:
    """Each chapter's execution time: from the book build when it ran and logged them (myst-nb runs
    nbclient), else by executing every chapter here with nbclient."""
    rows = (book or {}).get("notebooks") or []
    if rows:
        return [dict(row, source="book build (myst-nb)") for row in rows]
    return [dict(notebooks.execute_notebook(md), source="nbclient") for md in notebooks.chapters()]


def _training(cfg: BenchConfig, quick: bool) -> dict:
    if not _has_diffusers():
        raise RuntimeError("diffusers is not installed (pip install -e '.[bench]')")
    if quick:   # a tiny UNet on both sides; the parameter counts still agree
        return training.training_step(cfg.train_batch, cfg.train_repeats, cfg.warmup, preset="digits",
                                      resolution=8, diffusers_kwargs=_tiny_diffusers_digits())
    return training.training_step(cfg.train_batch, cfg.train_repeats, cfg.warmup)


def _tiny_diffusers_digits() -> dict:
    """The digits preset (ch 32, mults 1, 2, one ResBlock per level, attention at 4x4) as UNet2DModel."""
    return dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, downsample_padding=0,
                flip_sin_to_cos=False, freq_shift=1, dropout=0.1)


def _ddim_vs_ddpm(cfg: BenchConfig, quick: bool, model, schedule, trained: bool) -> dict:
    if not trained and not quick:
        return {"skipped": "needs the shipped digits checkpoint (ddim_lib/pretrained/digits): "
                           "an untrained model has no sample quality to match"}
    if quick:   # DDPM over a short schedule: the smoke test checks the code path, not the numbers
        from ddim_lib import NoiseSchedule
        schedule = NoiseSchedule.linear(20, beta_start=1e-3, beta_end=0.3)
    out = sampling.ddim_vs_ddpm(model, schedule, cfg.fd_samples, cfg.S_grid)
    out["model"] = "shipped" if trained else "stand-in (untrained)"
    return out


def _ratio4_rows(part: dict) -> list[tuple[str, dict]]:
    """Ratio 4's two rows (one per DDPM-1000 reference), each a dict the table can print."""
    rows = []
    for key, label in (("eta1", "4a DDIM / DDPM eta=1"), ("sigma_hat", "4b DDIM / DDPM s_hat")):
        ref = part.get(key)
        rows.append((label, ref if ref is not None else
                     {k: part[k] for k in ("error", "skipped") if k in part} or {"skipped": "not run"}))
    return rows


def _has_diffusers() -> bool:
    try:
        import diffusers  # noqa: F401
        return True
    except ImportError:
        return False


def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "cores": os.cpu_count(), "load_average_at_start": load,
            "cuda": torch.cuda.is_available(), "diffusers": _version("diffusers")}


def _version(name: str):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def _gpu_note() -> str:
    if torch.cuda.is_available():
        return (f"CUDA device present ({torch.cuda.get_device_name()}): the GPU variants (bf16 autocast, "
                "channels_last, fused attention, torch.compile) are not part of this CPU benchmark")
    return ("no GPU on this machine: every figure is CPU; the GPU variants of ratio 3 (bf16 autocast, "
            "channels_last, fused attention, torch.compile) were not run")


# ---- the table ---------------------------------------------------------------------------------
def table(results: dict) -> str:
    """One line per figure: median ratio, per-round spread, target and whether it is met."""
    parts, lines = results["parts"], []
    lines.append(f"{'figure':<22} {'ratio':>7} {'spread (per round)':>20} {'min/min':>7} {'target':>8}  met  details")
    figures = [(name, label, parts.get(name, {})) for name, label in (
        ("sampler_overhead", "1 sampler overhead"), ("against_diffusers", "2 vs diffusers DDIM"),
        ("training_step", "3 training step"))]
    figures += [("ddim_vs_ddpm", label, row) for label, row in _ratio4_rows(parts.get("ddim_vs_ddpm", {}))]
    for name, label, part in figures:
        op, target = TARGETS[name]
        if "ratio" not in part:
            why = part.get("error") or part.get("skipped") or part.get("unmatched") or "not run"
            lines.append(f"{label:<22} {'-':>7} {'-':>20} {'-':>7} {op}{target:<6}  -    {why}")
            continue
        spread = f"[{part['low']:.3f}, {part['high']:.3f}]" if "low" in part else "(one run each)"
        met = "yes" if part["ratio"] <= target else "NO"
        minima = f"{part['ratio_of_minima']:.3f}" if "ratio_of_minima" in part else "-"
        lines.append(f"{label:<22} {part['ratio']:>7.3f} {spread:>20} {minima:>7} {op}{target:<6}  {met:<4} "
                     f"{_details(name, part)}")
    r4 = parts.get("ddim_vs_ddpm", {})
    if "ddim" in r4:
        lines.append(f"ratio 4 Frechet distances (n = {r4['n']}, {r4['features']}): DDIM "
                     + ", ".join(f"S={row['S']} {row['fd']:.2f}" for row in r4["ddim"])
                     + f"; DDPM-1000 eta=1 {r4['eta1']['fd']:.2f}, sigma_hat {r4['sigma_hat']['fd']:.2f}; "
                     f"real digits (floor) {r4['floor']['mean']:.2f} [{r4['floor']['min']:.2f}, {r4['floor']['max']:.2f}]"
                     + (f"; DDIM at S = {r4['ddim_at_T']['S']} (its own limit): {r4['ddim_at_T']['fd']:.2f}"
                        if "ddim_at_T" in r4 else ""))
    dpm = parts.get("dpm_parity", {})
    if "error" in dpm:
        lines.append(f"DPM-Solver++(2M) parity with diffusers: FAILED: {dpm['error']}")
    elif dpm:
        lines.append(f"DPM-Solver++(2M) parity with diffusers' DPMSolverMultistepScheduler (S = {dpm['S']}, batch "
                     f"{dpm['batch']}): max |ours - diffusers| = {dpm['ours_vs_diffusers']:.2e} <= {dpm['tolerance']:.2e} "
                     f"(tolerance); vs a float64 run: ours {dpm['ours_vs_float64']:.2e}, diffusers "
                     f"{dpm['diffusers_vs_float64']:.2e} (max |x0| {dpm['max_abs_x0']:.2f}); with diffusers' own "
                     f"float32 alpha-bars: {dpm['ours_vs_diffusers_own_alpha_bars']:.2e}")
    loop = parts.get("loop_overhead", {})
    if "ratio" in loop:
        lines.append(f"loops alone (free model, S = {loop['S']}, batch {loop['batch']}): ddim_lib "
                     f"{loop['us_per_step']['ddim_lib']:.0f} us/step vs diffusers {loop['us_per_step']['diffusers']:.0f} "
                     f"us/step, ratio {loop['ratio']:.3f} [{loop['low']:.3f}, {loop['high']:.3f}]")
    parity = parts.get("diffusers_parity", {})
    if "error" in parity:
        lines.append(f"parity with diffusers: FAILED: {parity['error']}")
    elif parity:
        lines.append(f"parity with diffusers (S = {parity['S']}, batch {parity['batch']}): max |ours - diffusers| = "
                     f"{parity['ours_vs_diffusers']:.2e}; vs a float64 run: ours {parity['ours_vs_float64']:.2e}, "
                     f"diffusers {parity['diffusers_vs_float64']:.2e} (max |x0| {parity['max_abs_x0']:.2f}); "
                     f"with diffusers' own float32 alpha-bars: {parity['ours_vs_diffusers_own_alpha_bars']:.2e}")
    for row in parts.get("notebooks", []) if isinstance(parts.get("notebooks"), list) else []:
        lines.append(f"notebook {row['notebook']:<45} {row['seconds']:8.1f} s  {row['status']}  "
                     f"({row.get('source', '')})" + (f"  {row['error']}" if row["error"] else ""))
    book = parts.get("book")
    if book:
        lines.append(f"whole book (jupyter-book build -W) {book.get('seconds', float('nan')):8.1f} s  "
                     f"{book.get('status')} {book.get('reason', '')}")
    lines.append(f"digits model: {results['digits_model']}; threads {results['config']['threads']}; "
                 f"load average at start {results['machine']['load_average_at_start']}")
    lines.append(results["gpu"])
    return "\n".join(lines)


def _details(name: str, part: dict) -> str:
    if name == "sampler_overhead":
        return (f"sample {part['sample']['median_s']:.2f} s vs {part['S']} forwards {part['bare_forwards']['median_s']:.2f} s "
                f"(batch {part['batch']})")
    if name == "against_diffusers":
        return f"ddim_lib {part['ddim_lib']['median_s']:.2f} s vs diffusers {part['diffusers']['median_s']:.2f} s"
    if name == "training_step":
        default = part.get("default_adam", {})
        return (f"ddim_lib {part['ddim_lib']['median_s']:.2f} s vs diffusers {part['diffusers']['median_s']:.2f} s "
                f"per step (batch {part['batch']}, {part['parameters']['ddim_lib']:,} parameters, fused Adam)"
                + (f"; with PyTorch's default Adam on both: {default['ratio']:.3f}" if "ratio" in default else ""))
    if name == "ddim_vs_ddpm":
        return (f"S = {part['matched_S']}: FD {part['ddim_fd']:.3g} vs DDPM-{part['steps']} "
                f"{part['fd']:.3g}, {part['speedup']:.1f}x faster (paper: 10-50x)")
    return ""


def write_json(results: dict, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, bool]:
    cfg = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--notebooks", action="store_true", help="also time every chapter and the whole book")
    p.add_argument("--no-book", action="store_true", help="with --notebooks: skip the whole-book build")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the code paths, not the targets")
    p.add_argument("--repeats", type=int, default=None, help=f"timed rounds (default {cfg.repeats})")
    p.add_argument("--threads", type=int, default=cfg.threads, help=f"torch threads (default {cfg.threads})")
    p.add_argument("--fd-samples", type=int, default=cfg.fd_samples, help="samples per Frechet distance")
    p.add_argument("--out", default=cfg.out, help=f"JSON file (default {cfg.out})")
    args = p.parse_args(argv)
    if args.quick:
        cfg = BenchConfig(**QUICK)
    for name, value in (("threads", args.threads), ("fd_samples", args.fd_samples if not args.quick else cfg.fd_samples)):
        if value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        setattr(cfg, name, value)
    if args.repeats is not None:
        if args.repeats < 1:
            p.error(f"--repeats must be at least 1, got {args.repeats}")
        cfg.repeats = args.repeats
    cfg.notebooks, cfg.book, cfg.out = args.notebooks, not args.no_book, args.out
    return cfg, args.quick


def main(argv: list[str] | None = None) -> int:
    cfg, quick = parse_args(argv)
    results = run(cfg, quick)
    write_json(results, Path(cfg.out))
    print(table(results))
    print(f"results: {cfg.out}")
    failed = [name for name, part in results["parts"].items() if isinstance(part, dict) and "error" in part]
    failed += [row["notebook"] for row in results["parts"].get("notebooks", []) if row["status"] != "ok"]
    if failed:
        print(f"bench: failed parts: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
