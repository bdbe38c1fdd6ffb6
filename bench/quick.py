"""`quick`: the `quick` leaderboard's compute time and each method's overhead over `lora`, read from the
result.json files of a results directory (nothing is run unless --run-quick).

The leaderboard is the cells of the quick sweep plan (runners/sweep.py `expand`). A cell is found by its run
id, or, when run ids changed since the results were written, by the finished run with the same method,
task, model, seed and limits (the most recent). Post-hoc cells (temperature, tfb, laplace_lora) and the
ensemble's member 0 reuse the lora cell's adapter, so the leaderboard total is the sum over cells with lora
counted once, and a post-hoc method's own time excludes that training.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.common import Context, add_target, report
from runners.results import read_result
from runners.sweep import expand, load_spec

MATCH_KEYS = ("method", "task", "model", "seed", "limit_train", "limit_eval")


def _phases(rec: dict) -> dict:
    t = rec.get("timings", {})
    ev = sum(v for k, v in t.items() if k.startswith("eval:"))
    return {"load": t.get("load", 0.0), "fit": t.get("fit", 0.0), "eval": ev, "total": sum(t.values())}


def find_cells(results: Path, spec: str) -> tuple[list[tuple[object, dict | None, str]], str]:
    """[(cell, its result record or None, how it was found)], and the plan name."""
    plan = expand(load_spec(spec))
    # every finished record (timings are all this needs; predictions may have been pruned)
    done = [r for r in (read_result(d) for d in sorted(Path(results).iterdir()) if d.is_dir())
            if isinstance(r, dict) and r.get("status") == "done" and isinstance(r.get("config"), dict)]
    out = []
    for cell in plan.cells:
        rec = read_result(results / cell.run_id)
        if rec and rec.get("status") == "done":
            out.append((cell, rec, "run id"))
            continue
        want = {k: getattr(cell.cfg, k) for k in MATCH_KEYS}
        same = [r for r in done if r and all(r["config"].get(k) == v for k, v in want.items())]
        same.sort(key=lambda r: r.get("created", ""))
        out.append((cell, same[-1] if same else None, "fields" if same else "missing"))
    return out, plan.name


def run(ctx: Context) -> dict:
    s = ctx.s
    results = Path(s.results)
    rep = report("quick", f"the {s.quick_spec} leaderboard's wall time and per-method overhead vs lora, from {results}")
    if s.run_quick:
        cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmark.py"), "sweep", s.quick_spec,
               "--results", str(results)] + (["--data-dir", s.data_dir] if s.data_dir else [])
        rep["notes"].append(f"ran: {' '.join(cmd)} (exit {subprocess.run(cmd, check=False).returncode})")
    cells, name = find_cells(results, s.quick_spec)
    found = [(c, r, how) for c, r, how in cells if r is not None]
    lora = next((_phases(r) for c, r, _ in found if c.cfg.method == "lora"), None)
    rows, per = [], {}
    for cell, rec, how in cells:
        if rec is None:
            rows.append([cell.cfg.method, cell.run_id, "missing", "-", "-", "-", "-", "-", "-"])
            continue
        p = _phases(rec)
        ratio = {k: (p[k] / lora[k] if lora and lora[k] else None) for k in ("fit", "eval", "total")}
        per[cell.cfg.method] = {"run_id": rec["run_id"], "found_by": how, **p, **{f"{k}_vs_lora": v for k, v in ratio.items()}}
        rows.append([cell.cfg.method, rec["run_id"], how, f"{p['fit']:.0f}", f"{p['eval']:.0f}", f"{p['total']:.0f}"]
                    + [f"{v:.2f}x" if v is not None else "-" for v in ratio.values()])
    total = sum(_phases(r)["total"] for _, r, _ in found)
    complete = len(found) == len(cells)
    rep["tables"].append({"title": f"quick: sweep {name!r}, {len(found)}/{len(cells)} cells found in {results}; "
                                   f"total {total / 60:.1f} min",
                          "header": ["method", "run", "found by", "fit s", "eval s", "total s", "fit vs lora",
                                     "eval vs lora", "total vs lora"], "rows": rows})
    rep["figures"] = {"total_seconds": total, "total_minutes": total / 60, "cells": len(cells), "found": len(found),
                      "complete": complete, "methods": per}
    if found:
        add_target(rep, "quick leaderboard compute time", total / 60, 30, False, " min")
        if not complete:
            rep["targets"][-1]["met"] = False
            rep["notes"].append("some cells are missing: the total is a lower bound and the target is not met")
    else:
        rep["notes"].append(f"no quick cells in {results}; run `python benchmark.py sweep {s.quick_spec}` "
                            "or pass --run-quick")
    by_fields = [r["run_id"] for _, r, how in found if how == "fields"]
    if by_fields:
        rep["notes"].append(f"matched by method/task/model/seed/limits, not by run id (settings may differ from the "
                            f"current {s.quick_spec!r} preset): {', '.join(by_fields)}")
    rep["notes"] += [("total = sum over cells of load + fit + evaluation wall time (each cell's timings in its "
                     "result.json); post-hoc cells and ensemble member 0 reuse the lora cell, which is counted once"),
                     "cell times were measured when the cells ran (possibly with other jobs on the machine)"]
    return rep
