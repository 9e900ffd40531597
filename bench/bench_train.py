"""Seconds per training iteration: the engine's step vs a straightforward one, and the tiny preset.

    .venv/bin/python bench/bench_train.py [--iters 3] [--batch 3] [--patch 128]          # CPU
    .venv/bin/python bench/bench_train.py --device cuda --precision fp32,bf16            # GPU

One iteration is docs/METHOD.md §2's three updates, on one fixed batch (``K`` domains, one sample
per domain in turn), from the same initial weights in every variant:

- ``straightforward``: the objective as docs/METHOD.md §2 writes it, per-sample Python loops for
  transport, orthogonality, contrastive and potential terms; step 2 runs the whole network
  again (decoder included) with the map frozen; NCHW activations and the hand-written
  LayerNorm of the reference.
- ``engine``: :func:`utils.train.iteration.train_step` as the trainers run it: vectorised losses
  (``utils/train/losses.py``), step 2 through ``BaryNet.bary_latent`` (encoder and barycenter path,
  no decoder, no graph), fused LayerNorm and channels-last activations, and on the CPU the
  trainer's allocator setting (:func:`utils.runtime.tune_cpu_allocator`); at each ``--precision``.
- ``straightforward_malloc`` (CPU): the straightforward step with that allocator setting, so
  the table shows how much of the speed-up is the allocator and how much the step itself.
- ``compiled``: the engine with ``Training(compile_mode=--compile-mode)``, the trainers' ``--compile``
  fast path (utils/compiled.py); its first iteration, which compiles, is reported in its own column.

Each variant runs in its own subprocess, so the peak memory is its own: peak RSS above the
process's size before the networks were built (CPU), or ``torch.cuda.max_memory_allocated``
(GPU). Times are the median of ``--iters`` iterations after ``--warmup``. The losses of the
first iteration (identical starting weights and batch) are compared across the fp32 variants.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from utils.errors import stopped_while_starting

with stopped_while_starting():  # Ctrl-C while torch loads: one line, not a traceback
    import torch

    from net import set_layernorm_impl
    from net.presets import PRESETS, build_model, build_potentials
    from utils.cli import OneSpellingHelpFormatter, at_least, image_side
    from utils.compiled import COMPILE_MODES
    from utils.data.degradations import DE_IDS, FAMILIES
    from utils.errors import OneLineArgumentParser, add_debug_flag, run_main
    from utils.eval.inference import PRECISIONS, autocast_context
    from utils.memory import resident_bytes
    from utils.processes import run_in_session
    from utils.runtime import machine_info, machine_line, pick_device, stop_signals_as_interrupt, tune_cpu_allocator
    from utils.train.iteration import Training, train_step
    from utils.train.optim import build_optimizer

TAU = 0.07
# Domain k's degradation id in the fixed batch: the first of the k-th family's (denoise_15 0, derain 3, ..., single 7).
FAMILY_DE_IDS = tuple(min(i for de, i in DE_IDS.items() if de.startswith(family)) for family in FAMILIES)


def _train_only(trained: torch.nn.Module, frozen: torch.nn.Module) -> None:
    """Gradients for ``trained``'s parameters only."""
    for p in frozen.parameters():
        p.requires_grad_(False)
    for p in trained.parameters():
        p.requires_grad_(True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the straightforward step

def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def straightforward_step(model, pots, opt_m, opt_p, x, y, de_ids, domains, lambdas, l1_weight, precision):
    """docs/METHOD.md §2 written out sample by sample, with a full second forward for step 2."""
    B, K = x.shape[0], len(lambdas)
    lam = [float(v) for v in lambdas]
    de = [int(v) for v in de_ids]
    dom = [int(v) for v in domains]
    device = x.device
    # 1. map update, potentials frozen
    _train_only(model, frozen=pots)
    opt_m.zero_grad()
    with autocast_context(device, precision):
        restored, z, b, r = model(x)
        restored, z, b, r = restored.float(), z.float(), b.float(), r.float()
        bary_loss = 0.0
        for i in range(B):
            cost = torch.sqrt(torch.mean((z[i] - b[i]) ** 2))
            bi = _unit(b[i].reshape(-1))
            orth = 0.0
            for j in range(B):
                orth = orth + torch.sum(bi * _unit(r[j].reshape(-1))) ** 2
            ri = _unit(r[i].reshape(-1))
            pos, neg = 0.0, 0.0
            for j in range(B):
                s = torch.exp(torch.sum(ri * _unit(r[j].reshape(-1))) / TAU)
                if de[j] == de[i]:
                    pos = pos + s
                else:
                    neg = neg + s
            ctr = -torch.log(pos / (pos + neg))
            pot = pots(b[i:i + 1], dom[i]).squeeze()
            bary_loss = bary_loss + lam[dom[i]] * (cost + 0.05 * (orth + ctr) - pot)
        l1 = torch.mean(torch.abs(restored - y))
        map_total = bary_loss / B + l1_weight * l1
    map_total.backward()
    opt_m.step()
    # 2. potentials update: the whole network again, map frozen
    _train_only(pots, frozen=model)
    opt_p.zero_grad()
    with autocast_context(device, precision):
        _, _, b2, _ = model(x)
        b2 = b2.float()
        pot_total = 0.0
        for i in range(B):
            pot_total = pot_total + lam[dom[i]] * pots(b2[i:i + 1], dom[i]).squeeze()
        pot_total = pot_total / B
    pot_total.backward()
    opt_p.step()
    # 3. congruence on the last sample
    opt_p.zero_grad()
    with autocast_context(device, precision):
        c = 0.0
        for k in range(K):
            c = c + lam[k] * pots(b2[B - 1:B], k).squeeze()
        cong = 10 * c ** 2
    cong.backward()
    opt_p.step()
    return {"map": map_total.item(), "potentials": pot_total.item(), "congruence": cong.item()}


# --------------------------------------------------------------------------- one variant (subprocess)

def domain_count(text: str) -> int:
    """``--K``: 1 to one domain per degradation family (:data:`FAMILY_DE_IDS`); 7 failed in :func:`build_case` with
    an IndexError traceback."""
    k = at_least(1)(text)
    if k > len(FAMILY_DE_IDS):
        raise argparse.ArgumentTypeError(f"must be at most {len(FAMILY_DE_IDS)}, one domain per degradation family "
                                         f"({', '.join(FAMILIES)}), got {k}")
    return k


def add_iteration_shape_flags(parser: argparse.ArgumentParser) -> None:
    """``--preset``, ``--batch``, ``--patch``, ``--K``: the fixed case :func:`build_case` builds, in ``parser`` (this
    benchmark's and bench/profile_train.py's)."""
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="BaryNet's size preset")
    parser.add_argument("--batch", type=at_least(1), default=3, help="images per batch")
    parser.add_argument("--patch", type=image_side(16), default=128, help="patch side (a multiple of 8, at least 16)")
    parser.add_argument("--K", type=domain_count, default=3,
                        help=f"domains, one potential each (at most {len(FAMILIES)}: {', '.join(FAMILIES)})")


def build_case(preset: str, batch: int, patch: int, k: int, device: torch.device):
    """The benchmark's fixed case: BaryNet ``preset`` and ``k`` potentials from seed 0, RMSprop at 1e-4, and
    one batch ``x, y`` of shape ``(batch, 3, patch, patch)`` (one sample per domain in turn), on ``device``.

    Returns ``model, pots, opt_m, opt_p, x, y, de_ids, domains, lambdas`` (``de_ids``/``domains`` on the CPU).
    """
    torch.manual_seed(0)
    model = build_model("BaryNet", preset)
    pots = build_potentials("BaryNet", model, k, patch)
    g = torch.Generator().manual_seed(1)
    y = torch.rand(batch, 3, patch, patch, generator=g)
    x = (y + 0.1 * torch.randn(batch, 3, patch, patch, generator=g)).clamp(0, 1)
    domains = torch.arange(batch) % k
    de_ids = torch.tensor([FAMILY_DE_IDS[int(d)] for d in domains])
    lambdas = torch.full((k,), 1.0 / k)
    model.to(device)
    pots.to(device)
    x, y, lambdas = x.to(device), y.to(device), lambdas.to(device)
    opt_m = build_optimizer("RMSprop", model.parameters(), 1e-4)
    opt_p = build_optimizer("RMSprop", pots.parameters(), 1e-4)
    return model, pots, opt_m, opt_p, x, y, de_ids, domains, lambdas


def run_variant(variant: str, precision: str, preset: str, batch: int, patch: int, k: int, iters: int,
                warmup: int, device: torch.device, compile_mode: str = "default") -> dict:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer sets it
    elif variant != "straightforward":
        tune_cpu_allocator()  # as trainer_bary.py does on the CPU
    # load the kernels' libraries first, so the baseline excludes them
    warm = torch.nn.Conv2d(3, 8, 3).to(device)
    warm(torch.rand(1, 3, 16, 16, device=device)).sum().backward()
    del warm
    base_rss = resident_bytes() / 2**20
    model, pots, opt_m, opt_p, x, y, de_ids, domains, lambdas = build_case(preset, batch, patch, k, device)
    if variant.startswith("straightforward"):
        set_layernorm_impl(model, "reference")

        def step():
            return straightforward_step(model, pots, opt_m, opt_p, x, y, de_ids, domains, lambdas, 10000.0,
                                        precision)
    else:
        channels_last = variant in ("engine", "compiled")
        if channels_last:
            model.to(memory_format=torch.channels_last)
        from utils.train.distributed import DistInfo
        training = Training(model, model, pots, opt_m, opt_p, lambdas, l1_weight=10000.0, precision=precision,
                            info=DistInfo(device=device), channels_last=channels_last,
                            compile_mode=compile_mode if variant == "compiled" else "off")
        batch_cpu = (x, y, de_ids, domains)

        def step():
            losses = train_step(training, batch_cpu)
            return {key: losses[key] for key in ("map", "potentials", "congruence")}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = None
    times, first_seconds, first_peak = [], 0.0, None
    for i in range(warmup + iters):
        if i == warmup and device.type == "cuda":  # the steady state's peak: not cuDNN's trials, compiling
            _sync(device)                           # or recording CUDA graphs in the warm-up
            first_peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        losses = step()
        _sync(device)
        if i == 0:
            first, first_seconds = losses, time.perf_counter() - t0
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    label = f"compiled ({compile_mode})" if variant == "compiled" else variant
    row = {"variant": label, "precision": precision, "seconds": statistics.median(times), "all": times,
           "first_seconds": first_seconds, "peak_mib": peak, "first_losses": first,
           "threads": torch.get_num_threads()}
    if first_peak is not None:
        row["warmup_peak_mib"] = first_peak
    if variant == "compiled":  # whether the graphs really replay as compiled: skips, breaks, recompiles
        from torch._dynamo.utils import counters
        row["compile_counters"] = {"cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0)),
                                   "graph_breaks": int(sum(counters["graph_break"].values())),
                                   "unique_graphs": int(counters["stats"].get("unique_graphs", 0))}
    return row


def _relative_gap(losses: dict[str, float], ref: dict[str, float]) -> float:
    """The largest relative difference between two runs' first-iteration losses."""
    return max(abs(losses[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in ref)


def _spawn(variant: str, precision: str, a: argparse.Namespace, preset: str, iters: int, warmup: int) -> dict:
    """One variant in its own process: its row, or ``{"variant", "precision", "failed": why}`` when it fails or
    runs past ``--variant-timeout`` (the other variants' rows are kept either way)."""
    cmd = [sys.executable, __file__, "--_worker", variant, "--precision", precision, "--preset", preset,
           "--batch", str(a.batch), "--patch", str(a.patch), "--K", str(a.K), "--iters", str(iters),
           "--warmup", str(warmup), "--device", a.device, "--compile-mode", a.compile_mode,
           *(["--debug"] if a.debug else [])]
    label = f"compiled ({a.compile_mode})" if variant == "compiled" else variant
    try:
        # stopped (Ctrl-C, SIGTERM) or past its time, the variant's process and what it started are stopped too
        res = run_in_session(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             timeout=a.variant_timeout or None)
    except subprocess.TimeoutExpired:
        return {"variant": label, "precision": precision, "failed": f"ran past {a.variant_timeout} s"}
    if res.returncode != 0:
        tail = [line for line in (res.stderr or res.stdout).strip().splitlines() if line.strip()][-1:]
        print(res.stderr[-4000:], file=sys.stderr, flush=True)
        return {"variant": label, "precision": precision,
                "failed": f"exit {res.returncode}: {tail[0][:200] if tail else 'no output'}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


VARIANTS = ("straightforward", "straightforward_malloc", "engine", "engine_nchw", "compiled")


def variant_list(text: str) -> str:
    """``--variants``: comma-separated names from :data:`VARIANTS` (a misspelt one would run as another)."""
    unknown = [v for v in text.split(",") if v and v not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not text.strip(","):  # '' or ',': a table head and no row
        raise argparse.ArgumentTypeError(f"name at least one variant, from {', '.join(VARIANTS)}")
    return text


def precision_list(text: str) -> str:
    """``--precision``: comma-separated names from :data:`PRECISIONS` (a misspelt one failed in every variant)."""
    unknown = [v for v in text.split(",") if v and v not in PRECISIONS]
    if unknown or not text.strip(","):
        raise argparse.ArgumentTypeError(f"unknown precision(s) {', '.join(unknown) or repr(text)}; choose from "
                                         f"{', '.join(PRECISIONS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=__doc__.split("\n")[0], formatter_class=OneSpellingHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the iterations run")
    p.add_argument("--precision", default="fp32", type=precision_list,
                   help="comma-separated engine precisions, e.g. fp32,bf16")
    add_iteration_shape_flags(p)
    p.add_argument("--iters", type=at_least(1), default=3, help="timed iterations per variant (their median)")
    p.add_argument("--warmup", type=at_least(0), default=1, help="untimed iterations before them")
    p.add_argument("--tiny-iters", dest="tiny_iters", type=at_least(0), default=10,
                   help="iterations of the tiny preset's engine, reported last (0: skip it)")
    p.add_argument("--variant-timeout", dest="variant_timeout", type=at_least(0), default=0,
                   help="seconds one variant may take (its process is killed past them and its row says so; "
                        "0: no limit)")
    p.add_argument("--variants", default=None, type=variant_list,
                   help="comma-separated: straightforward, straightforward_malloc (with the trainer's CPU "
                        "allocator setting, to show that share of the speed-up), engine, engine_nchw (engine "
                        "without channels-last), compiled (the engine with --compile-mode: the trainers' fast "
                        "path; its first iteration, compile included, is reported apart); default: the first "
                        "three on the CPU, and straightforward, engine, engine_nchw on a GPU")
    p.add_argument("--compile-mode", dest="compile_mode", default="default", choices=COMPILE_MODES[1:],
                   help="torch.compile mode of the 'compiled' variant (the trainers' --compile): default, "
                        "reduce-overhead (CUDA graphs), max-autotune")
    add_debug_flag(p)
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """The benchmark; a failure the user can fix (or Ctrl-C) is one ``error:`` line (:func:`utils.errors.run_main`)."""
    a = build_parser().parse_args(argv)
    return run_main(bench, a, debug=a.debug)


def bench(a: argparse.Namespace) -> None:
    device = pick_device(a.device)  # no GPU visible for --device cuda: one error: line, exit status 2
    if a._worker:
        print(json.dumps(run_variant(a._worker, a.precision, a.preset, a.batch, a.patch, a.K, a.iters, a.warmup,
                                     device, a.compile_mode)))
        return

    stop_signals_as_interrupt()  # SIGTERM stops it as Ctrl-C does: one line, the running variant with it
    precisions = [s for s in a.precision.split(",") if s]
    if a.variants is None:
        a.variants = ("straightforward,engine,engine_nchw" if device.type == "cuda"
                      else "straightforward,straightforward_malloc,engine")
    mem = "peak GPU memory (MiB)" if device.type == "cuda" else "peak RSS above start (MiB)"
    # The table's head first and each row as soon as its variant ends: a run cut short keeps its rows.
    where = "GPU" if device.type == "cuda" else "CPU"
    print(f"\n### Training iteration, BaryNet {a.preset}, batch {a.batch}, patch {a.patch}, K={a.K} — {where}\n")
    print(f"median of {a.iters} iterations after {a.warmup} warm-up; {machine_line(machine_info(device))}\n")
    print(f"| variant | precision | s / iteration | speed-up | first iteration (s) | {mem} | map loss (iter 1) | "
          f"potentials | congruence |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    rows, base = [], None
    for variant in [v for v in a.variants.split(",") if v]:
        for prec in (["fp32"] if variant.startswith("straightforward") else precisions):
            print(f"... {variant} {prec}", file=sys.stderr, flush=True)
            r = _spawn(variant, prec, a, a.preset, a.iters, a.warmup)
            print(f"    {json.dumps(r)}", file=sys.stderr, flush=True)
            if "failed" in r:
                print(f"| {r['variant']} | {r['precision']} | failed: {r['failed']} | | | | | | |", flush=True)
                continue
            rows.append(r)
            base = base or (r if r["variant"] == "straightforward" else None)
            sp = f"{base['seconds'] / r['seconds']:.2f}x" if base else "-"
            fl = r["first_losses"]
            print(f"| {r['variant']} | {r['precision']} | {r['seconds']:.3f} | {sp} | {r['first_seconds']:.1f} | "
                  f"{r['peak_mib']:.0f} | {fl['map']:.6g} | {fl['potentials']:.6g} | {fl['congruence']:.6g} |",
                  flush=True)
    for prec in precisions:  # the fast path against the eager engine, same precision, same first batch
        eager = next((r for r in rows if r["variant"] == "engine" and r["precision"] == prec), None)
        for r in (r for r in rows if r["variant"].startswith("compiled") and r["precision"] == prec and eager):
            gap = _relative_gap(r["first_losses"], eager["first_losses"])
            print(f"\n{r['variant']} {prec}: {eager['seconds'] / r['seconds']:.2f}x the eager engine; first-iteration "
                  f"losses within a relative {gap:.1e} of the engine's (target 1e-3); {r.get('compile_counters')}")
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    if len(fp32) > 1:
        ref = fp32[0]["first_losses"]
        worst = max(_relative_gap(r["first_losses"], ref) for r in fp32[1:])
        print(f"\nfp32 losses of iteration 1 agree across variants to a relative {worst:.1e} "
              f"(fused vs hand-written LayerNorm and summation order).")
    if device.type == "cuda" and rows:
        print("\npeak GPU memory: after the warm-up (steady state); during the warm-up (cuDNN's trials, compiling, "
              "recording CUDA graphs): " + ", ".join(f"{r['variant']} {r['precision']} {r['warmup_peak_mib']:.0f} MiB"
                                                      for r in rows if "warmup_peak_mib" in r))
    if a.tiny_iters > 0:
        print("... tiny preset", file=sys.stderr, flush=True)
        tiny = _spawn("engine", precisions[0], a, "tiny", a.tiny_iters, 2)
        if "failed" in tiny:
            print(f"\ntiny preset (engine, {precisions[0]}): failed: {tiny['failed']}")
        else:
            print(f"\ntiny preset (engine, {precisions[0]}): {1.0 / tiny['seconds']:.2f} it/s "
                  f"({tiny['seconds']:.3f} s / iteration, median of {a.tiny_iters})")

if __name__ == "__main__":
    sys.exit(main())
