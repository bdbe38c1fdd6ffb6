"""`benchmark.py report`: leaderboard and cost tables (Markdown, CSV, LaTeX) and figures (PNG, PDF)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metrics import METRICS, columns, compute_metrics
from runners.collect import cost_table, load_predictions, load_results
from runners.deltas import paired_deltas, render_deltas
from runners.plots import write_plots

HIGHER_BETTER = {n: m.higher_is_better for n, m in METRICS.items()}
ID_COLS, OOD_COLS = columns("id"), columns("ood")  # metrics/table.py decides what each leaderboard shows
# Shown beside the metrics, never ranked: a low ECE means nothing if the posterior collapsed to its MAP or
# the predictive went uniform (metrics/diagnostics.py); `posterior` names either.
DIAG_SHOWN = ("mean_conf", "mutual_information", "tv_to_point")


def bootstrap_ci(group: pd.DataFrame, metric: str, n_boot: int = 500, seed: int = 0) -> tuple[float, float]:
    """95% interval of the seed-mean metric, resampling test examples (the same resample for every seed)."""
    rng = np.random.default_rng(seed)
    preds = [load_predictions(r.run_dir, r.eval_task) for r in group.itertuples()]
    n = len(preds[0][1])
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        stats.append(np.mean([compute_metrics(p[idx], y[idx])[metric] for p, y in preds if len(y) == n]))
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def leaderboard(df: pd.DataFrame, cols, n_boot: int = 200) -> pd.DataFrame:
    """One row per (model, scoring, train task, eval task, method): mean, std over seeds, bootstrap CI."""
    keys = ["model", "scoring", "train_task", "eval_task", "label"]
    out = []
    for key, g in df.groupby(keys, sort=True):
        g = g.drop_duplicates("seed", keep="last")  # the same cell under two run ids (e.g. rerun) counts once
        row = dict(zip(keys, key), seeds=len(g), n=int(g["n"].iloc[0]))
        row["posterior"] = ",".join(sorted({f for fl in g.get("flags", pd.Series(dtype=str)).fillna("")
                                            for f in fl.split(",") if f}))
        for c in DIAG_SHOWN:
            row[c] = g[c].mean() if c in g else np.nan
        for c in cols:
            row[c] = g[c].mean()
            row[c + "_std"] = g[c].std(ddof=1) if len(g) > 1 else 0.0
            if n_boot and METRICS[c].interval:
                row[c + "_lo"], row[c + "_hi"] = bootstrap_ci(g, c, n_boot)
        out.append(row)
    return pd.DataFrame(out)


def _fmt(row, c, best) -> str:
    s = f"{row[c]:.3f}"
    if row.get(c + "_std", 0):
        s += f" ± {row[c + '_std']:.3f}"
    if c + "_lo" in row and not pd.isna(row[c + "_lo"]):
        s += f" [{row[c + '_lo']:.3f}, {row[c + '_hi']:.3f}]"
    return f"**{s}**" if best else s


def render(table: pd.DataFrame, cols) -> pd.DataFrame:
    """Readable cells; the best value per column and (train task, eval task) is bold, never on a row whose
    posterior is flagged (collapsed or uniform: its metrics are shown, not ranked)."""
    shown = []
    for _, g in table.groupby(["model", "scoring", "train_task", "eval_task"], sort=True):
        ranked = g[g["posterior"] == ""]
        best = {c: (ranked[c].max() if HIGHER_BETTER[c] else ranked[c].min()) for c in cols}
        for _, r in g.iterrows():
            shown.append({"model": r["model"], "scoring": r["scoring"], "train": r["train_task"], "eval": r["eval_task"],
                          "method": r["label"], "seeds": r["seeds"], "n": r["n"],
                          **{c: _fmt(r, c, np.isclose(r[c], best[c]) and not r["posterior"]) for c in cols},
                          "conf": _plain(r["mean_conf"]), "MI": _plain(r["mutual_information"], 4),
                          "TV to MAP": _plain(r["tv_to_point"]), "posterior": r["posterior"] or "ok"})
    return pd.DataFrame(shown)


def _plain(x, digits: int = 3) -> str:
    return "—" if pd.isna(x) else f"{x:.{digits}f}"


def to_markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)])


def write_tables(df: pd.DataFrame, out: Path, n_boot: int = 200) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for role, cols in (("id", ID_COLS), ("ood", OOD_COLS)):
        part = df[df["role"] == role]
        if part.empty:
            continue
        table = leaderboard(part, cols, n_boot)
        shown = render(table, cols)
        table.to_csv(out / f"leaderboard_{role}.csv", index=False)
        (out / f"leaderboard_{role}.md").write_text(to_markdown(shown) + "\n")
        latex = shown.map(lambda s: s.replace("**", "") if isinstance(s, str) else s)
        (out / f"leaderboard_{role}.tex").write_text(latex.to_latex(index=False, escape=True))
        written += [out / f"leaderboard_{role}.{e}" for e in ("csv", "md", "tex")]
    deltas = paired_deltas(df, "lora", n_boot)
    if not deltas.empty:  # paired differences to plain LoRA on the same questions (runners/deltas.py)
        deltas.to_csv(out / "deltas_vs_lora.csv", index=False)
        (out / "deltas_vs_lora.md").write_text(to_markdown(render_deltas(deltas)) + "\n")
        written += [out / "deltas_vs_lora.csv", out / "deltas_vs_lora.md"]
    cost = cost_table(df)
    if not cost.empty:
        cost.to_csv(out / "cost.csv", index=False)
        (out / "cost.md").write_text(to_markdown(cost.round(3)) + "\n")
        written += [out / "cost.csv", out / "cost.md"]
    return written


def report(results: Path, out: Path, n_boot: int = 200, storage: str | None = None, warn=None) -> list[Path]:
    """Tables and figures of every finished run under `results`; runs that cannot be read are skipped and
    named through `warn` (default: stderr)."""
    import sys
    df = load_results(results)
    for run_dir, why in df.attrs.get("problems", {}).items():
        (warn or (lambda m: print(m, file=sys.stderr)))(f"warning: skipped {run_dir}: {why}")
    if df.empty:
        raise FileNotFoundError(f"no finished runs under {results}")
    return write_tables(df, out, n_boot) + write_plots(df, results, out, storage)
