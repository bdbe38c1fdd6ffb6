"""Paired differences to a reference method (default `lora`), for the report's `deltas_vs_<ref>` table.

Two leaderboard rows whose intervals overlap may still differ reliably, and two rows whose point values
differ may not: both are scored on the SAME test questions, so the honest test is a paired bootstrap, one
resample of question indices applied to both methods (and to every seed both share). A delta whose 95%
interval excludes 0 is starred; the rest are noise at this n.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from metrics import compute_metrics
from runners.collect import load_predictions

DELTA_METRICS = ("acc", "ece", "nll")
KEYS = ["model", "scoring", "train_task", "eval_task"]


def _seed_preds(rows: pd.DataFrame) -> dict:
    rows = rows.drop_duplicates("seed", keep="last")
    return {r.seed: load_predictions(r.run_dir, r.eval_task) for r in rows.itertuples()}


def _reference_for(rows: pd.DataFrame, refs: pd.DataFrame) -> pd.DataFrame | None:
    """The reference rows to compare `rows` with: the only variant of the reference method there is, else
    the one whose fit these rows start from (a post-hoc method's base); None when that is ambiguous."""
    if refs["label"].nunique() == 1:
        return refs
    bases = set(rows["base_run"].dropna())
    hit = refs[refs["fit_id"].isin(bases) | refs["run_id"].isin(bases)] if bases else refs.iloc[0:0]
    return hit if hit["label"].nunique() == 1 else None


def paired_deltas(df: pd.DataFrame, reference: str = "lora", n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per eval set and method: metric(method) - metric(reference), mean over the seeds both have, with a
    paired 95% bootstrap interval over test questions. Rows whose questions differ (other labels, other
    limit) from the reference's are left out rather than compared."""
    out = []
    for key, g in df.groupby(KEYS, sort=True):
        refs = g[g["method"] == reference]
        if refs.empty:
            continue
        for label, m in g[g["method"] != reference].groupby("label", sort=True):
            ref_rows = _reference_for(m, refs)
            if ref_rows is None:
                continue
            ref, mine = _seed_preds(ref_rows), _seed_preds(m)
            seeds = sorted(set(mine) & set(ref))
            if not seeds or any(not np.array_equal(mine[s][1], ref[s][1]) for s in seeds):
                continue
            n = len(ref[seeds[0]][1])

            def delta(idx):
                return {c: np.mean([compute_metrics(mine[s][0][idx], mine[s][1][idx])[c]
                                    - compute_metrics(ref[s][0][idx], ref[s][1][idx])[c] for s in seeds])
                        for c in DELTA_METRICS}

            row = dict(zip(KEYS, key), method=label, reference=ref_rows["label"].iloc[0], seeds=len(seeds), n=n,
                       **delta(np.arange(n)))
            if n_boot:
                rng = np.random.default_rng(seed)
                boots = [delta(rng.integers(0, n, n)) for _ in range(n_boot)]
                for c in DELTA_METRICS:
                    row[c + "_lo"], row[c + "_hi"] = (float(np.percentile([b[c] for b in boots], q)) for q in (2.5, 97.5))
            out.append(row)
    return pd.DataFrame(out)


def render_deltas(table: pd.DataFrame) -> pd.DataFrame:
    """Readable cells: '+0.012 [-0.010, +0.034]', starred when the interval excludes 0."""
    def cell(r, c):
        s = f"{r[c]:+.3f}"
        if c + "_lo" in r and not pd.isna(r[c + "_lo"]):
            s += f" [{r[c + '_lo']:+.3f}, {r[c + '_hi']:+.3f}]"
            if r[c + "_lo"] > 0 or r[c + "_hi"] < 0:
                s += " *"
        return s
    return pd.DataFrame([{"model": r["model"], "train": r["train_task"], "eval": r["eval_task"], "method": r["method"],
                          "vs": r["reference"], "seeds": r["seeds"], "n": r["n"],
                          **{f"Δ{c}": cell(r, c) for c in DELTA_METRICS}} for _, r in table.iterrows()])
