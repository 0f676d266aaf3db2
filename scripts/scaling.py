"""`birth scaling NAME`: scaling-law figures of associative memories (Cabannes et al., 2024a, b).

NAME is one of FIGURES (or `all`). Each figure writes NAME.json, NAME.png and NAME.pdf into --out
(default results/scaling/NAME), prints where, and prints fitted exponents with bootstrap 95%
confidence intervals next to the theory. Defaults are CPU-sized; --full gives the papers' sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from birth.memory import fit_power_law, memory_errors, q_frequency, q_seen, q_threshold, sgd_scheme_table
from tasks.zipf import ZipfAssociations

FIGURES = ("d-and-T", "heatmap", "schemes", "sgd", "optimizers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=(*FIGURES, "all"), help="which figure to make")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default results/scaling/NAME; with `all`, one subfolder per figure)")
    parser.add_argument("--overwrite", action="store_true", help="replace files of an earlier run")
    parser.add_argument("--full", action="store_true", help="the papers' sizes (100 trials, full grids)")
    parser.add_argument("--trials", type=int, default=None, help="override the number of trials / seeds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--float32", action="store_true", help="compute scores in float32 (faster)")
    parser.add_argument("--top-fraction", type=float, default=1 / 8,
                        help="thresholded scheme keeps P = d * this many tokens (paper text: 1/8; its code used 1/12)")
    parser.add_argument("--steps", type=int, default=None, help="sgd figure: SGD steps (default 2000, --full 10000)")
    parser.add_argument("--samples", type=int, default=None, help="optimizers figure: training samples T (default 10240)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is fastest for the small SGD steps of sgd/optimizers on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def log_grid(low: float, high: float, count: int) -> list[int]:
    """count log-spaced integers in [low, high], duplicates removed."""
    return sorted(set(np.round(np.logspace(math.log10(low), math.log10(high), count)).astype(int).tolist()))


class Context:
    """Options shared by the figure functions."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.full = bool(args.full)
        self.seed = int(args.seed)
        self.device = args.device
        self.dtype = torch.float32 if args.float32 else torch.float64
        self.progress = not args.no_progress
        self.top_fraction = float(args.top_fraction)

    def trials(self, default: int, full: int) -> int:
        if self.args.trials is not None:
            return int(self.args.trials)
        return full if self.full else default

    def errors(self, weights, task: ZipfAssociations, dims: list[int], trials: int, **kw) -> dict:
        return memory_errors(
            weights, task.targets(), task.probs(), dims, num_trials=trials, seed=self.seed,
            num_outputs=task.num_outputs, device=self.device, dtype=self.dtype,
            progress=self.progress, **kw,
        )

    def tops(self, dims: list[int]) -> list[int]:
        return [max(1, int(d * self.top_fraction)) for d in dims]


def report_fit(label: str, xs, errors: torch.Tensor, theory: float | None, seed: int, mask=None) -> dict:
    """Fit, print one line, return the JSON record."""
    try:
        fit = fit_power_law(xs, errors, seed=seed, mask=mask)
    except ValueError as err:
        print(f"  {label}: no fit ({err})")
        return {"label": label, "theory": theory, "fit": None}
    theory_text = "—" if theory is None else f"{theory:+.3f}"
    inside = "" if theory is None else ("  (theory inside CI)" if fit.ci_low <= theory <= fit.ci_high else "  (theory outside CI)")
    print(f"  {label}: slope {fit.slope:+.3f}  95% CI [{fit.ci_low:+.3f}, {fit.ci_high:+.3f}]  "
          f"theory {theory_text}  ({fit.num_points} points){inside}")
    return {"label": label, "theory": theory, "fit": fit.as_dict()}


def band(ax, xs, errors: torch.Tensor, label: str, color=None, **kw) -> None:
    """Mean ± one standard deviation over trials."""
    mean, std = errors.mean(0).numpy(), errors.std(0).numpy() if errors.shape[0] > 1 else 0 * errors[0].numpy()
    line, = ax.plot(xs, mean, label=label, color=color, **kw)
    # on log axes mean − std can reach 0: floor the band at a tenth of the mean
    ax.fill_between(xs, np.maximum(mean - std, mean / 10), mean + std, color=line.get_color(), alpha=0.2)


# --------------------------------------------------------------------------------------------
# figure 1: error vs d (several T) and vs T (several d), thresholded scheme


def figure_d_and_t(ctx: Context):
    import matplotlib.pyplot as plt

    task = ZipfAssociations(1000, 5, 2.0)
    trials = ctx.trials(20, 100)
    d_curves, t_curves = [10, 20, 50, 100, 200, 1000], [10, 100, 1000, 10_000]
    dims = sorted(set(log_grid(10, 1000, 13 if not ctx.full else 20)) | set(d_curves))
    sizes = sorted(set(log_grid(10, 10_000, 13 if not ctx.full else 20)) | set(t_curves))
    print(f"d-and-T: N=1000, M=5, alpha=2, P=d*{ctx.top_fraction:.4g}, {trials} trials, "
          f"{len(dims)} d x {len(sizes)} T (+ T=inf)")
    counts = task.nested_counts(sizes, trials, seed=ctx.seed)  # (R, T, N)
    finite = q_threshold(counts, ctx.tops(dims))  # (R, T, D, N)
    infinite = q_threshold(task.probs(), ctx.tops(dims))[None, None]  # T = ∞: counts ∝ p
    err = ctx.errors([finite, infinite], task, dims, trials)["error"]  # (R, T+1, D)
    alpha = task.alpha
    fits = [report_fit("error vs d at T=inf", dims, err[:, -1], -(alpha - 1), ctx.seed)]
    floor = err[:, -1, dims.index(1000)].mean()
    along_t = err[:, :-1, dims.index(1000)]
    # fit the T-slope where the finite-d floor (T = ∞ error) is < 1/3 of the error
    mask = (along_t.mean(0) > 3 * floor).tolist()
    fits.append(report_fit("error vs T at d=1000 (points with error > 3x the T=inf floor)", sizes,
                           along_t, -(1 - 1 / alpha), ctx.seed, mask=mask))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for t in t_curves:
        band(left, dims, err[:, sizes.index(t)], f"T={t:g}")
    band(left, dims, err[:, -1], "T=inf", color="k")
    ref = err[:, -1, 0].mean().item()
    left.plot(dims, [ref * (d / dims[0]) ** (-(alpha - 1)) for d in dims], "k--", lw=1, label=r"$d^{-\alpha+1}$")
    for d in d_curves:
        band(right, sizes, err[:, :-1, dims.index(d)], f"d={d}")
    ref = along_t[:, 0].mean().item()
    right.plot(sizes, [ref * (t / sizes[0]) ** (-(1 - 1 / alpha)) for t in sizes], "k--", lw=1,
               label=r"$T^{-1+1/\alpha}$")
    for ax, xlabel in ((left, "memory dimension d"), (right, "number of samples T")):
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="generalization error")
        ax.legend(fontsize=7)
    fig.suptitle(f"Thresholded scheme (P = d/{1 / ctx.top_fraction:.3g}), N=1000, M=5, α=2, {trials} trials")
    fig.tight_layout()
    record = {"N": 1000, "M": 5, "alpha": alpha, "trials": trials, "top_fraction": ctx.top_fraction,
              "dims": dims, "sizes": sizes + ["inf"], "mean_error": err.mean(0).tolist(),
              "std_error": err.std(0).tolist(), "fits": fits}
    return record, {"d-and-T": fig}


# --------------------------------------------------------------------------------------------
# figure 2: heatmaps over (d, T) for q0 = 1{seen} and q1 = p̂


def figure_heatmap(ctx: Context):
    import matplotlib.pyplot as plt

    task = ZipfAssociations(100, 5, 0.5)
    trials = ctx.trials(20, 100)
    dims, sizes = log_grid(10, 1000, 30), log_grid(10, 10_000, 30)
    print(f"heatmap: N=100, M=5, alpha=0.5, {trials} trials, {len(dims)} d x {len(sizes)} T")
    counts = task.nested_counts(sizes, trials, seed=ctx.seed)
    weights = torch.cat([q_seen(counts), q_frequency(counts)], 1)[:, :, None]  # (R, 2T, 1, N)
    err = ctx.errors(weights, task, dims, trials)["error"].mean(0)  # (2T, D)
    q0, q1 = err[: len(sizes)], err[len(sizes):]
    better = (q1 < q0 - 1e-12).float().mean().item()
    print(f"  q0=1{{seen}}: error {q0.min():.3f}..{q0.max():.3f}; q1=p_hat: error {q1.min():.3f}..{q1.max():.3f}")
    print(f"  q1 beats q0 on {100 * better:.0f}% of the grid (small d, large T); q0 reaches error "
          f"{q0[-1, -1]:.3f} at d={dims[-1]}, T={sizes[-1]} vs q1 {q1[-1, -1]:.3f}")
    print("  (no power-law theory for alpha < 1: the figure shows the regimes, not a slope)")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    extent = dict(x=np.array(dims), y=np.array(sizes))
    for ax, values, title, cmap, lims in (
        (axes[0], q0, r"$q_0 = 1\{seen\}$", "RdBu_r", (0, 1)),
        (axes[1], q1, r"$q_1 = \hat p$", "RdBu_r", (0, 1)),
        (axes[2], q0 - q1, r"error($q_0$) − error($q_1$)", "PuOr", (-0.5, 0.5)),
    ):
        mesh = ax.pcolormesh(extent["x"], extent["y"], values.numpy(), cmap=cmap, vmin=lims[0], vmax=lims[1], shading="nearest")
        ax.set(xscale="log", yscale="log", xlabel="d", ylabel="T", title=title)
        fig.colorbar(mesh, ax=ax)
    fig.suptitle(f"Zipf α=0.5, N=100, M=5, {trials} trials")
    fig.tight_layout()
    record = {"N": 100, "M": 5, "alpha": 0.5, "trials": trials, "dims": dims, "sizes": sizes,
              "mean_error_q0": q0.tolist(), "mean_error_q1": q1.tolist(), "fraction_q1_better": better}
    return record, {"heatmap": fig}


# --------------------------------------------------------------------------------------------
# figure 3: schemes at T = ∞


def figure_schemes(ctx: Context):
    import matplotlib.pyplot as plt

    task = ZipfAssociations(1000, 5, 2.0)
    trials = ctx.trials(30, 100)
    dims = log_grid(10, 1000, 20)
    probs = task.probs()
    print(f"schemes: N=1000, M=5, alpha=2, T=inf, {len(dims)} d in [10, 1000], {trials} trials")
    flat = torch.stack([torch.ones_like(probs), probs])[None, :, None]  # q = 1, q = p
    top = q_threshold(probs, ctx.tops(dims))[None, None]  # q = 1{x <= P(d)}
    started = time.perf_counter()
    err = ctx.errors([flat, top], task, dims, trials)["error"]  # (R, 3, D)
    print(f"  computed in {time.perf_counter() - started:.2f} s")
    alpha = task.alpha
    labels = ["q = 1", "q = p", f"q = 1{{x <= d*{ctx.top_fraction:.3g}}}"]
    theories = [None, -(alpha - 1) / (2 * alpha), -(alpha - 1)]
    fits = [report_fit(label, dims, err[:, s], th, ctx.seed) for s, (label, th) in enumerate(zip(labels, theories))]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for s, label in enumerate(labels):
        band(ax, dims, err[:, s], label)
        fit = fits[s]["fit"]
        if fit is not None and theories[s] is not None:
            ax.plot(dims, [math.exp(fit["intercept"]) * d ** theories[s] for d in dims], "k--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="d", ylabel="generalization error",
           title=f"T = ∞, N=1000, M=5, α=2, {trials} trials (dashed: theory slopes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    record = {"N": 1000, "M": 5, "alpha": alpha, "trials": trials, "dims": dims, "schemes": labels,
              "mean_error": err.mean(0).tolist(), "std_error": err.std(0).tolist(), "fits": fits}
    return record, {"schemes": fig}


# --------------------------------------------------------------------------------------------
# figure 4/5: SGD vs the q-update approximation, q_γ curves


def figure_sgd(ctx: Context):
    import matplotlib.pyplot as plt
    from training.memory_sgd import TrainConfig, approximate_q_dynamics, train_memory

    task = ZipfAssociations(100, 5, 2.0)
    trials = ctx.trials(10, 100)
    num_steps = ctx.args.steps if ctx.args.steps is not None else (10_000 if ctx.full else 2_000)
    checkpoints = [0] + log_grid(1, num_steps, 25)
    runs = [  # (title, d, batch, lr, trials)
        ("one run, d=N=100, batch 1, γ=10", 100, 1, 10.0, 1),
        (f"d=N=100, batch 1, γ=1, {trials} runs", 100, 1, 1.0, trials),
        (f"d=N/10=10, batch 1, γ=1, {trials} runs", 10, 1, 1.0, trials),
        (f"d=N=100, batch 16, γ=1, {trials} runs", 100, 16, 1.0, trials),
    ]
    print(f"sgd: N=100, M=5, alpha=2, {num_steps} steps, SGD from W=0 vs the decoupled q update")
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.6), sharey=True)
    records = []
    for ax, (title, dim, batch, lr, n) in zip(axes, runs):
        config = TrainConfig("sgd", lr, batch, num_steps, eval_steps=checkpoints)
        trained = train_memory(task, dim, n, config, seed=ctx.seed, dtype=ctx.dtype, device=ctx.device)
        q = approximate_q_dynamics(trained["batches"], task.num_inputs, task.num_outputs, lr, trained["steps"].tolist())
        approx = ctx.errors(q[:, :, None], task, [dim], n, trial_chunk=n)["error"][:, :, 0]
        steps = trained["steps"].numpy()
        band(ax, steps[1:], trained["error"][:, 1:], "SGD on W")
        band(ax, steps[1:], approx[:, 1:], "q-update approximation", ls="--")
        gap = (trained["error"] - approx).abs().mean(0)
        print(f"  {title}: final error SGD {trained['error'][:, -1].mean():.4f} vs approximation "
              f"{approx[:, -1].mean():.4f}; mean |gap| over the curve {gap.mean():.4f}")
        ax.set(xscale="log", yscale="log", xlabel="SGD steps", title=title)
        ax.title.set_fontsize(8)
        records.append({"title": title, "d": dim, "batch": batch, "lr": lr, "trials": n,
                        "steps": steps.tolist(), "sgd_error": trained["error"].mean(0).tolist(),
                        "approx_error": approx.mean(0).tolist(), "mean_abs_gap": gap.mean().item()})
    axes[0].set_ylabel("generalization error")
    axes[0].legend(fontsize=7)
    fig.tight_layout()

    # figure 5: F^n(0) for several γ, and q_γ(x) with n_x ∝ (x+3)^-α, n_N = 1, against q_ρ = p^ρ
    gammas = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    num = 100
    counts = np.round(((np.arange(1, num + 1) + 3.0) / (num + 3.0)) ** -2.0).astype(int)
    fig5, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    table_len = int(counts.max())
    curves = {}
    for gamma in gammas:
        table = sgd_scheme_table(table_len, gamma, 5)  # fresh from q = 0 for every γ
        curves[gamma] = table
        left.plot(np.arange(1, table_len + 1), table[1:].numpy(), label=f"γ={gamma:g}")
    left.set(xscale="log", yscale="log", xlabel="n (occurrences)", ylabel=r"$f^n(0)$", title="q after n SGD updates")
    left.legend(fontsize=7)
    xs = np.arange(1, num + 1)
    for gamma, rho in ((10.0, 0.05), (1e-1, 0.35), (1e-3, 1.0)):
        q_gamma = curves[gamma][torch.from_numpy(counts)].numpy()
        line, = right.plot(xs, q_gamma / q_gamma.max(), label=f"$q_\\gamma$, γ={gamma:g}")
        p_rho = (xs + 3.0) ** (-2.0 * rho)
        right.plot(xs, p_rho / p_rho.max(), "--", color=line.get_color(), label=f"$q_\\rho$, ρ={rho:g}")
    right.set(xscale="log", yscale="log", xlabel="x", ylabel="q(x) / max q", title=r"$n_x \propto (x+3)^{-2}$, $n_N = 1$")
    right.legend(fontsize=7)
    fig5.tight_layout()
    record = {"N": 100, "M": 5, "alpha": 2.0, "num_steps": num_steps, "runs": records,
              "q_gamma_curves": {str(g): curves[g].tolist() for g in gammas}}
    return record, {"sgd": fig, "q_gamma": fig5}


# --------------------------------------------------------------------------------------------
# optimizer study


def figure_optimizers(ctx: Context):
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    from training.memory_sgd import TrainConfig, train_memory

    task = ZipfAssociations(100, 5, 2.0)
    seeds = ctx.trials(3, 10)
    dims = [10, 30, 100, 300, 1000] if ctx.full else [10, 100]
    lrs = [0.1, 1.0, 10.0, 100.0]
    batches = [16, 64, 256, 1024] if ctx.full else [16, 64, 256]
    num_samples = ctx.args.samples if ctx.args.samples is not None else 10_240
    combos = [(opt, ln) for opt in ("sgd", "adam") for ln in (False, True)]
    print(f"optimizers: N=100, M=5, alpha=2, T={num_samples} samples, d in {dims}, lr in {lrs}, "
          f"batch in {batches}, {{SGD, Adam}} x LayerNorm on/off, {seeds} seeds")
    grid = [(d, opt, ln, lr, b) for d in dims for opt, ln in combos for lr in lrs for b in batches]
    results = {}
    for d, opt, ln, lr, b in tqdm(grid, desc="optimizer grid", disable=not ctx.progress):
        config = TrainConfig(opt, lr, b, num_samples // b, layer_norm=ln)
        out = train_memory(task, d, seeds, config, seed=ctx.seed, dtype=torch.float32, device=ctx.device)
        results[(d, opt, ln, lr, b)] = out["error"][:, -1]
    fig, axes = plt.subplots(len(dims), len(combos), figsize=(3.4 * len(combos), 2.8 * len(dims)),
                             sharex=True, sharey=True, squeeze=False)
    for row, d in enumerate(dims):
        for col, (opt, ln) in enumerate(combos):
            ax = axes[row, col]
            for b in batches:
                errs = torch.stack([results[(d, opt, ln, lr, b)] for lr in lrs], 1)
                band(ax, lrs, errs, f"batch {b}")
            ax.set(xscale="log", yscale="log", title=f"d={d}, {opt}{' + LN' if ln else ''}")
            ax.title.set_fontsize(8)
    for ax in axes[-1]:
        ax.set_xlabel("learning rate")
    for ax in axes[:, 0]:
        ax.set_ylabel("error")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    print("  final error (mean over seeds), SGD batch 64, no LayerNorm "
          "(reference: 0.168 -> 0.046 at lr 0.1, 0.031 -> 0.002 at lr 100, for d = 10 -> 1000):")
    for lr in lrs:
        if 64 in batches:
            line = ", ".join(f"d={d}: {results[(d, 'sgd', False, lr, 64)].mean():.4f}" for d in dims)
            print(f"    lr {lr:g}: {line}")
    best = min(results, key=lambda k: results[k].mean().item())
    print(f"  best configuration: d={best[0]}, {best[1]}, LayerNorm={best[2]}, lr={best[3]:g}, batch={best[4]}: "
          f"error {results[best].mean():.4f}")
    record = {"N": 100, "M": 5, "alpha": 2.0, "num_samples": num_samples, "seeds": seeds,
              "runs": [{"d": d, "optimizer": opt, "layer_norm": ln, "lr": lr, "batch": b,
                        "final_error_mean": v.mean().item(), "final_error_per_seed": v.tolist()}
                       for (d, opt, ln, lr, b), v in results.items()]}
    return record, {"optimizers": fig}


FIGURE_FUNCTIONS: dict[str, Callable] = {
    "d-and-T": figure_d_and_t, "heatmap": figure_heatmap, "schemes": figure_schemes,
    "sgd": figure_sgd, "optimizers": figure_optimizers,
}


# --------------------------------------------------------------------------------------------
# output


def output_files(name: str) -> list[str]:
    stems = [name, "q_gamma"] if name == "sgd" else [name]
    return [f"{name}.json"] + [f"{s}.{ext}" for s in stems for ext in ("png", "pdf")]


def check_output_dir(out: Path, name: str, overwrite: bool) -> None:
    """Refuse to replace an earlier run's files unless --overwrite."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    existing = [f for f in output_files(name) if (out / f).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them or choose another --out")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.trials is not None and args.trials < 2:
        raise ValueError(f"--trials must be >= 2 (the fits bootstrap over trials), got {args.trials}")
    if not 0 < args.top_fraction <= 1:
        raise ValueError(f"--top-fraction must lie in (0, 1], got {args.top_fraction}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.samples is not None and args.samples < 1024:
        raise ValueError(f"--samples must be >= 1024 (the largest batch), got {args.samples}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = list(FIGURES) if args.name == "all" else [args.name]
    base = args.out if args.out is not None else Path("results/scaling")
    outs = {n: (base / n if (args.out is None or args.name == "all") else base) for n in names}
    for name in names:  # check every folder before any work
        check_output_dir(outs[name], name, args.overwrite)
    ctx = Context(args)
    default_threads = torch.get_num_threads()
    for name in names:
        started = time.perf_counter()
        # SGD steps on tiny tensors: one thread beats two (no synchronisation), unless --threads says
        if args.threads is None:
            torch.set_num_threads(1 if name in ("sgd", "optimizers") else default_threads)
        record, figures = FIGURE_FUNCTIONS[name](ctx)
        out = outs[name]
        out.mkdir(parents=True, exist_ok=True)
        record.update({"figure": name, "seed": ctx.seed, "full": ctx.full, "device": str(ctx.device),
                       "dtype": str(ctx.dtype), "seconds": round(time.perf_counter() - started, 2)})
        (out / f"{name}.json").write_text(json.dumps(record, indent=1))
        written = [out / f"{name}.json"]
        for stem, fig in figures.items():
            for ext in ("png", "pdf"):
                fig.savefig(out / f"{stem}.{ext}", dpi=130)
                written.append(out / f"{stem}.{ext}")
            plt.close(fig)
        print(f"{name}: wrote {', '.join(str(p) for p in written)} ({record['seconds']:.1f} s)")
    torch.set_num_threads(default_threads)
    return 0
