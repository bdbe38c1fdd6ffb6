"""`benchmark.py migrate`: move the fits of runs written before the fit store into it (runners/fits.py).

Such a run keeps its artifacts inside its own directory. It still counts as finished and still reports, but
a new run that scores its fit on another set cannot find it. Migrating copies the artifacts to
`fits/<fit id>/`, writes the fit's record and one stored evaluation per scored set (from the run's own
metrics and predictions), points the run at the fit, and only then removes the run's copy: a crash at any
step leaves every run finished and every fit complete.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from runners.config import RunConfig
from runners.fits import FIT_FILE, eval_key, fit_dir, fits_root, read_fit, write_eval
from runners.results import read_result, write_json_atomic
from tasks import file_stem


def legacy_runs(results: Path) -> list[Path]:
    """Finished runs of the old layout under `results`."""
    out = []
    for run in sorted(Path(results).iterdir()) if Path(results).is_dir() else []:
        rec = read_result(run) if run.is_dir() else None
        if rec and rec.get("status") == "done" and (run / "artifacts").is_dir() and not rec.get("fit"):
            out.append(run)
    return out


def migrate_run(run: Path, results: Path) -> str:
    """Move one old-layout run's fit into the store; returns what was done, in a few words."""
    rec = read_result(run)
    cfg = RunConfig.from_dict(rec["config"])
    fid = cfg.fit_id
    if read_fit(fit_dir(results, fid)) is None:
        root = fits_root(results)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{fid}-", dir=root))
        try:
            shutil.copytree(run / "artifacts", tmp / "artifacts")
            timings = rec.get("timings", {})
            write_json_atomic(tmp / FIT_FILE, {
                "fit_id": fid, "config": cfg.fit_dict(), "method": cfg.method,
                "fitted": rec.get("method", {}).get("fitted", {}), "base_fit": None,
                "data": {k: v for k, v in rec.get("data", {}).items() if k != "data_dir"},
                "trainable_parameters": rec.get("method", {}).get("trainable_parameters"),
                "timings": {k: v for k, v in timings.items() if k == "fit"},
                "environment": rec.get("environment"), "migrated_from": run.name})
            S = rec.get("method", {}).get("n_samples", 1)
            for t, m in rec.get("metrics", {}).items():
                split = cfg.eval_split if t == cfg.task else "test"
                rows = [json.loads(line) for line in open(run / "predictions" / f"{file_stem(t)}.jsonl")]
                kept = {k: v for k, v in m.items() if k not in ("role", "ood_auroc_maxprob")}
                write_eval(tmp, eval_key(split, t, cfg.limit_eval, S),
                           {"metrics": kept, "reliability": rec.get("reliability", {}).get(t), "n_samples": S,
                            "eval_batch_size": cfg.eval_batch_size, "seconds": timings.get(f"eval:{t}", 0.0),
                            "migrated_from": run.name}, rows)
            tmp.rename(fit_dir(results, fid))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        did = "fit moved to the store"
    else:
        did = "fit already in the store"
    rec["fit"] = {"fit_id": fid, "dir": f"fits/{fid}", "reused": False, "evaluations_reused": []}
    write_json_atomic(run / "result.json", rec)
    shutil.rmtree(run / "artifacts")
    return did


def migrate(results: Path, log=print) -> int:
    runs = legacy_runs(results)
    for run in runs:
        log(f"{run.name}: {migrate_run(run, Path(results))}")
    log(f"migrated {len(runs)} run(s) under {results}" if runs else f"nothing to migrate under {results}")
    return len(runs)
