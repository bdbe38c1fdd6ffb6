"""Figures for a paper: reliability diagrams, Pareto fronts (ACC vs ECE / NLL), cost bars. PNG and PDF."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from metrics import reliability  # noqa: E402
from runners.collect import cost_table, load_predictions  # noqa: E402
from tasks import file_stem  # noqa: E402

plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 150})


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    return paths


def reliability_diagrams(df: pd.DataFrame, out: Path) -> list[Path]:
    written = []
    for (model, task, eval_task), g in df.groupby(["model", "train_task", "eval_task"]):
        runs = g.sort_values(["label", "seed"]).drop_duplicates("label")  # first seed of each method
        n = len(runs)
        cols = min(4, n)
        fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(2.4 * cols, 2.5 * math.ceil(n / cols)),
                                 squeeze=False, sharex=True, sharey=True)
        for ax, r in zip(axes.flat, runs.itertuples()):
            probs, labels = load_predictions(r.run_dir, r.eval_task)
            rel = reliability(probs, labels)
            lo, hi = np.array(rel["lower"]), np.array(rel["upper"])
            acc = np.array([a if a is not None else np.nan for a in rel["accuracy"]], dtype=float)
            conf = np.array([c if c is not None else np.nan for c in rel["mean_confidence"]], dtype=float)
            ax.bar(lo, np.nan_to_num(acc), width=hi - lo, align="edge", color="#4C72B0", edgecolor="white", label="accuracy")
            ax.bar(lo, np.nan_to_num(np.abs(conf - acc)), bottom=np.nan_to_num(np.minimum(acc, conf)), width=hi - lo,
                   align="edge", color="#DD8452", alpha=0.45, hatch="//", edgecolor="#DD8452", lw=0, label="gap to confidence")
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.set_title(f"{r.label}\nECE {r.ece:.3f}  acc {r.acc:.3f}", fontsize=8)
            ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        for ax in axes.flat[n:]:
            ax.axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("confidence")
        for ax in axes[:, 0]:
            ax.set_ylabel("accuracy")
        axes.flat[0].legend(loc="upper left", fontsize=7, frameon=False)
        fig.suptitle(f"Reliability: trained on {task}, evaluated on {eval_task} ({model})", fontsize=9)
        fig.tight_layout()
        written += _save(fig, out, f"reliability_{file_stem(task)}_{file_stem(eval_task)}")
    return written


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points not dominated when maximising x and minimising y."""
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        keep[i] = not np.any((x >= x[i]) & (y <= y[i]) & ((x > x[i]) | (y < y[i])))
    return keep


def _front(ax, x, y, labels, ylabel):
    keep = pareto_mask(x, y)
    ax.scatter(x[~keep], y[~keep], c="#999999", s=22, zorder=2)
    ax.scatter(x[keep], y[keep], c="#C44E52", s=28, zorder=3)
    order = np.argsort(x[keep])
    ax.plot(x[keep][order], y[keep][order], c="#C44E52", lw=1, zorder=1)
    for xi, yi, t in zip(x, y, labels):
        ax.annotate(t, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("accuracy (higher is better)")
    ax.set_ylabel(f"{ylabel} (lower is better)")


def pareto_fronts(df: pd.DataFrame, out: Path) -> list[Path]:
    written = []
    idd = df[df["role"] == "id"]
    for (model, task), g in idd.groupby(["model", "train_task"]):
        m = g.groupby("label")[["acc", "ece", "nll"]].mean()
        if len(m) < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, metric in zip(axes, ("ece", "nll")):
            _front(ax, m["acc"].values, m[metric].values, list(m.index), metric.upper())
        fig.suptitle(f"{task} ({model}): methods, mean over seeds; red = Pareto front", fontsize=9)
        written += _save(fig, out, f"pareto_{file_stem(task)}")
    return written


def study_fronts(results: Path, out: Path, storage: str | None = None) -> list[Path]:
    """Pareto fronts of the tune studies in `storage` (default: the results directory's journal)."""
    from runners.queue import load_studies
    written = []
    for study in load_studies(storage, results, prefix="tune-"):
        done = [t for t in study.trials if t.values is not None]
        if len(done) < 2:
            continue
        v = np.array([t.values for t in done])
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, j, name in zip(axes, (1, 2), ("ECE", "NLL")):
            _front(ax, v[:, 0], v[:, j], [str(t.number) for t in done], f"validation {name}")
        fig.suptitle(f"study {study.study_name}: trials (numbers), validation split", fontsize=9)
        written += _save(fig, out, f"study_{study.study_name}")
    return written


def cost_bars(df: pd.DataFrame, out: Path) -> list[Path]:
    cost = cost_table(df)
    if cost.empty:
        return []
    m = cost.groupby("method")[["fit_x_lora_train", "eval_x_lora"]].mean().sort_values("fit_x_lora_train")
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(m)), 3))
    x = np.arange(len(m))
    ax.bar(x - 0.2, m["fit_x_lora_train"], 0.4, label="fit time / lora training")
    ax.bar(x + 0.2, m["eval_x_lora"], 0.4, label="evaluation time / lora's")
    ax.axhline(1, c="k", lw=0.6, ls="--")
    ax.set_xticks(x, m.index, rotation=30, ha="right")
    ax.set_ylabel("ratio to lora")
    ax.legend(frameon=False, fontsize=7)
    return _save(fig, out, "cost")


def write_plots(df: pd.DataFrame, results: Path, out: Path, storage: str | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return (reliability_diagrams(df, out) + pareto_fronts(df, out) + study_fronts(results, out, storage)
            + cost_bars(df, out))
