"""Read finished runs into pandas: one row per (run, evaluated task). Reports and notebooks start here."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from metrics import METRICS
from runners.results import prediction_arrays
from tasks import file_stem

METRIC_COLS = tuple(METRICS)  # metrics/table.py
DIAG_COLS = ("mutual_information", "tv_to_point")  # from metrics/diagnostics.py (absent in older results)


def _variant(rec: dict) -> str:
    """A short hash of the method's settings and, for post-hoc methods, of the base adapter's settings (an
    l_lora_xs on an svd and on a dct lora_xs are different variants)."""
    cfg = rec["config"]
    blob = json.dumps([cfg["settings"], cfg.get("base_settings") or {}, cfg.get("adapter")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:6]


def _problem(rec, run_dir: Path) -> str | None:
    """Why a finished record cannot be read into a table, or None."""
    if not isinstance(rec, dict):
        return f"result.json holds a JSON {type(rec).__name__}, not a run record"
    try:
        rec["config"]["method"], rec["config"]["task"], rec["scoring"]["mode"], rec["method"]["n_samples"]
        metrics = rec["metrics"]
        missing = [t for t in metrics if not (run_dir / "predictions" / f"{file_stem(t)}.jsonl").is_file()]
    except (KeyError, TypeError) as e:
        return f"result.json lacks {e}"
    if missing:
        return f"predictions of {', '.join(missing)} are missing (rerun it: `benchmark.py run` retries it)"
    return None


def load_results(results: Path, eval_split: str = "test") -> pd.DataFrame:
    """One row per (finished run, evaluated task). Runs that cannot be read are left out and named in
    `df.attrs["problems"]` ({run directory: why}), so a report shows the rest and says what it skipped."""
    rows, problems = [], {}
    for f in sorted(Path(results).glob("*/result.json")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems[str(f.parent)] = f"result.json is not readable JSON ({type(e).__name__}); delete the run " \
                                      "directory or rerun it"
            continue
        if isinstance(rec, dict) and rec.get("status") != "done":
            continue
        why = _problem(rec, f.parent)
        if why:
            problems[str(f.parent)] = why
            continue
        cfg = rec.get("config", {})
        if cfg.get("eval_split", "test") != eval_split:
            continue
        t = rec.get("timings", {})
        mem = rec.get("memory", {})
        for task, m in rec["metrics"].items():
            diag = m.get("diagnostics") or {}
            rows.append({
                "run_id": rec["run_id"], "method": cfg["method"], "settings_id": _variant(rec), "train_task": cfg["task"],
                "eval_task": task, "role": m["role"], "seed": cfg["seed"], "model": cfg["model"],
                "scoring": rec["scoring"]["mode"], "n": m["n"], "n_samples": rec["method"]["n_samples"],
                **{k: m.get(k, np.nan) for k in METRIC_COLS},
                **{k: diag.get(k, np.nan) for k in DIAG_COLS}, "flags": ",".join(diag.get("flags", [])),
                "fit_s": t.get("fit", np.nan), "eval_s": sum(v for k, v in t.items() if k.startswith("eval:")),
                "peak_rss_mb": max((v.get("peak_rss_mb", 0) for v in mem.values()), default=np.nan),
                "posthoc": rec["method"]["posthoc"], "base_run": rec.get("base_run"),
                "fit_id": (rec.get("fit") or {}).get("fit_id"),
                "trainable_parameters": rec["method"].get("trainable_parameters"),
                "run_dir": str(f.parent),
            })
    df = pd.DataFrame(rows)
    if len(df):
        n_variants = df.groupby("method")["settings_id"].transform("nunique")
        df["label"] = np.where(n_variants > 1, df["method"] + "@" + df["settings_id"], df["method"])
    df.attrs["problems"] = problems
    return df


def load_predictions(run_dir: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in open(Path(run_dir) / "predictions" / f"{file_stem(task)}.jsonl")]
    probs, labels = prediction_arrays(rows)
    return probs / probs.sum(1, keepdims=True), labels


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Fit (train or post-hoc) and evaluation time and peak memory, as ratios to lora of the same cell."""
    runs = df.drop_duplicates("run_id")
    out = []
    for (model, task, seed), g in runs.groupby(["model", "train_task", "seed"]):
        base = g[g["method"] == "lora"]
        if base.empty:
            continue
        b = base.iloc[0]
        for _, r in g.iterrows():
            out.append({"model": model, "task": task, "seed": seed, "method": r["label"],
                        "kind": "post-hoc" if r["posthoc"] else "trained", "fit_s": r["fit_s"], "eval_s": r["eval_s"],
                        "fit_x_lora_train": r["fit_s"] / b["fit_s"], "eval_x_lora": r["eval_s"] / b["eval_s"],
                        "peak_rss_x_lora": r["peak_rss_mb"] / b["peak_rss_mb"],
                        "trainable_params": r["trainable_parameters"], "samples": r["n_samples"]})
    return pd.DataFrame(out)
