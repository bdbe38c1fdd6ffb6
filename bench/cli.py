"""`python benchmark.py bench`: run the comparisons in one process, print a table per comparison with its
targets, and write everything measured, with the settings and the machine, to one JSON file.

Argument parsing stays import-light (no torch) so `benchmark.py --help` is fast; the comparisons are
imported when they run.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import time
import traceback
from pathlib import Path

from bench.settings import BenchSettings

COMPARISONS = {  # name -> module with run(ctx) -> report
    "train": "bench.train", "score": "bench.score", "laplace": "bench.laplace_torch", "tfb": "bench.tfb",
    "samples": "bench.samples", "quick": "bench.quick", "levers": "bench.levers",
}


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", default=",".join(COMPARISONS),
                   help=f"comma-separated comparisons to run (default all: {','.join(COMPARISONS)})")
    p.add_argument("--out", default=None, help="JSON file for everything measured (default: <results>/bench-<model>.json)")
    for f in dataclasses.fields(BenchSettings):
        flag, help_ = "--" + f.name.replace("_", "-"), f"{f.metadata['help']} (default: {f.default})"
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", dest=f.name, help=help_)
        else:
            typ = type(f.default) if f.default is not None else str
            p.add_argument(flag, type=typ, default=f.default, dest=f.name, help=help_)


def settings_from_args(a) -> BenchSettings:
    return BenchSettings(**{f.name: getattr(a, f.name) for f in dataclasses.fields(BenchSettings)})


def parse_only(only: str) -> list[str]:
    from methods.base import ConfigError
    names = [x.strip() for x in only.split(",") if x.strip()]
    bad = [n for n in names if n not in COMPARISONS]
    if bad or not names:
        raise ConfigError(f"--only {only!r}: unknown comparison(s) {bad}; choose from {', '.join(COMPARISONS)}")
    return names


def format_table(t: dict) -> str:
    cells = [t["header"]] + [[str(c) for c in r] for r in t["rows"]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(t["header"]))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths))
    return "\n".join([t["title"], line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def format_report(rep: dict) -> str:
    out = [f"== {rep['name']}: {rep['what']}"]
    if "error" in rep:
        return "\n".join(out + [f"FAILED: {rep['error']}"])
    out += [format_table(t) for t in rep["tables"]]
    for t in rep["targets"]:
        out.append(f"target  {t['target']}: {t['value']:.3g} (want {t['rule']})  ->  {'met' if t['met'] else 'NOT met'}")
    out += [f"note    {n}" for n in rep["notes"]]
    return "\n".join(out)


def environment(ctx) -> dict:
    import torch

    from bench.common import loadavg
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": __import__("os").cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
            "loadavg_start": loadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run_bench(settings: BenchSettings, only: list[str], out: Path | None, log=print) -> dict:
    """Run `only` in order; a comparison that raises is recorded as failed and the others still run."""
    from bench.common import FLOP_RULE, Context, loadavg

    ctx = Context(settings)
    doc = {"settings": dataclasses.asdict(settings), "only": only, "environment": environment(ctx),
           "flop_rule": FLOP_RULE, "comparisons": {}}
    peak = ctx.peak()
    doc["peak"] = peak
    log(f"== machine: {doc['environment']['cpus']} cpus, torch {doc['environment']['torch']} with "
        f"{peak['threads']} threads; bf16 {peak['size']}x{peak['size']} matmul peak {peak['gflops']:.1f} GFLOP/s "
        f"(best of {settings.peak_repeats}); load average {doc['environment']['loadavg_start']}")
    for name in only:
        t0, la0 = time.perf_counter(), loadavg()
        try:
            rep = importlib.import_module(COMPARISONS[name]).run(ctx)
        except Exception as e:  # keep going: one broken comparison must not hide the others
            rep = {"name": name, "what": "", "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=-6)}
        rep.update(wall_seconds=time.perf_counter() - t0, loadavg_before=la0, loadavg_after=loadavg())
        doc["comparisons"][name] = rep
        log(format_report(rep) + f"\n(took {rep['wall_seconds']:.1f} s; load average {la0} -> {rep['loadavg_after']})\n")
        if out is not None:  # written after every comparison, so a long run leaves what it measured
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=1, default=str))
    targets = [t for r in doc["comparisons"].values() for t in r.get("targets", [])]
    log("== targets: " + (", ".join(f"{t['target']}: {'met' if t['met'] else 'NOT met'}" for t in targets) or "none"))
    if out is not None:
        log(f"wrote {out}")
    return doc


def main(a) -> int:
    settings, only = settings_from_args(a), parse_only(a.only)
    out = Path(a.out) if a.out else Path(settings.results) / f"bench-{Path(settings.model).name}.json"
    doc = run_bench(settings, only, out)
    return 1 if any("error" in r for r in doc["comparisons"].values()) else 0

