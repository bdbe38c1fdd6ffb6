#!/usr/bin/env python
"""Command line of the Bayesian-PEFT benchmark suite. `python benchmark.py --help`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet() -> None:
    """Messages that appear on every run and matter to nobody here: bitsandbytes' note that an optional CPU
    4-bit kernel package is absent (only 4-bit matmuls would use it), and a transformers deprecation
    warning raised from inside peft."""
    import logging
    import warnings
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)



def _csv(s: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in s.split(","))
    if any(not x for x in items):
        raise argparse.ArgumentTypeError(f"{s!r} has an empty item; write comma-separated names such as a,b")
    return items


def _seeds(s: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(x) for x in _csv(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: seeds are comma-separated non-negative integers, e.g. 0,1,2") from None
    if any(x < 0 for x in seeds):
        raise argparse.ArgumentTypeError(f"{s!r}: seeds must be >= 0")
    return seeds


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        return text if "default" in text or action.default in (None, argparse.SUPPRESS) and action.required \
            else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but its errors keep the suite's promise: one line `error: ...` and exit code 2; and every
    option's help shows its default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="a registered method (`list methods`)")
    p.add_argument("--task", required=True, help="training / in-distribution task (`list tasks`)")
    p.add_argument("--model", default="smollm2-135m", help="preset, hub id or local directory (`list models`)")
    p.add_argument("--seed", type=int, default=0, help="run seed (LoRA init, data order, posterior samples)")
    p.add_argument("--ood", type=_csv, default=(), help="comma-separated OOD evaluation tasks")
    p.add_argument("--scoring", default="loglik", help="loglik (default, small models) | label (papers' prompt)")
    p.add_argument("--normalization", default="token", help="loglik length normalisation: token | char | none")
    p.add_argument("--limit-train", type=int, default=None, help="use the first N training examples")
    p.add_argument("--limit-eval", type=int, default=None, help="evaluate on the first N test examples per task")
    p.add_argument("--samples", type=int, default=None, dest="n_samples", help="posterior samples at test time")
    p.add_argument("--precision", default="bf16", help="bf16 (autocast, default) | fp32")
    p.add_argument("--quant", default="none", help="none | 4bit | 8bit (bitsandbytes base weights)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="questions per evaluation batch (no effect on results)")
    p.add_argument("--adapter", default=None, help="post-hoc methods: an existing PEFT adapter directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting (repeatable)")
    p.add_argument("--base-set", action="append", default=[], metavar="KEY=VALUE",
                   help="post-hoc methods: a setting of the lora adapter they start from (repeatable)")
    p.add_argument("--results", default=str(ROOT / "results"), help="results directory (default: results/)")
    p.add_argument("--data-dir", default=None, help="local dataset mirror in hub schema (else $BAYESPEFT_DATA_DIR, else the hub)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--force", action="store_true", help="rerun even if an identical finished run exists")


def cmd_run(a) -> int:
    from methods.settings import parse_set_args
    from runners.config import build_run_config
    from runners.run import execute

    from runners.results import check_results_dir
    check_results_dir(Path(a.results))
    cfg = build_run_config(a.method, a.task, parse_set_args(a.set), model=a.model, seed=a.seed, ood=a.ood,
                           scoring=a.scoring, normalization=a.normalization, limit_train=a.limit_train,
                           limit_eval=a.limit_eval, n_samples=a.n_samples, precision=a.precision, quant=a.quant,
                           eval_batch_size=a.eval_batch_size, adapter=a.adapter,
                           base_settings=parse_set_args(a.base_set))
    rec = execute(cfg, Path(a.results), data_dir=a.data_dir, device=a.device, force=a.force)
    return show_run(rec, Path(a.results) / cfg.run_id)


def show_run(rec: dict, where: Path) -> int:
    if rec.get("skipped"):
        print(f"identical run already done: {where} (use --force to rerun)")
    print(f"run {where.name}: {rec['status']}  ->  {where}/result.json")
    fit = rec.get("fit") or {}
    if fit.get("reused") or fit.get("evaluations_reused"):
        print(f"  reused: {'fit ' + fit['fit_id'] if fit.get('reused') else 'no fit'}"
              f"{', evaluations of ' + ', '.join(fit['evaluations_reused']) if fit.get('evaluations_reused') else ''}")
    from metrics import METRICS
    for task, m in rec.get("metrics", {}).items():
        shown = " ".join(f"{k}={m[k]:.4f}" for k, spec in METRICS.items() if spec.printed and k in m)
        print(f"  {task:<16} {m['role']:<3} n={m['n']:<5} {shown}")
    t = rec.get("timings", {})
    print("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    return 0


def cmd_evaluate(a) -> int:
    """Score a stored fit on more sets, or with another limit or S: nothing is refitted (runners/fits.py)."""
    from runners.fits import rescoring_config
    from runners.run import execute
    cfg, results = rescoring_config(Path(a.fit), a.ood, a.limit_eval, a.n_samples, a.eval_batch_size)
    out = execute(cfg, results, data_dir=a.data_dir, device=a.device)
    return show_run(out, results / cfg.run_id)


def cmd_migrate(a) -> int:
    from runners.migrate import migrate
    migrate(Path(a.results))
    return 0


def spec_from_args(a) -> dict:
    """A sweep given as CLI lists instead of a YAML file."""
    from methods.base import ConfigError
    if not (a.methods and a.tasks):
        raise ConfigError("give a sweep file or preset, or at least --methods and --tasks")
    from methods.registry import get_method
    from methods.settings import parse_set_args
    sets, base = parse_set_args(a.set), parse_set_args(a.base_set)
    methods = []
    for m in a.methods:  # --set applies to every listed method that has the setting
        own = {k: v for k, v in sets.items() if k in get_method(m).Config.__dataclass_fields__}
        methods.append({m: own} if own else m)
    unused = set(sets) - {k for m in a.methods for k in get_method(m).Config.__dataclass_fields__}
    if unused:
        raise ConfigError(f"--set {', '.join(sorted(unused))}: no listed method has such a setting "
                          f"(`python benchmark.py list methods NAME` shows a method's settings)")
    spec = {"name": a.name, "methods": methods, "seeds": list(a.seeds),
            "tasks": [{"task": t, "ood": list(a.ood)} for t in a.tasks]}
    if base:
        spec["base_settings"] = base
    for key in ("model", "scoring", "limit_train", "limit_eval", "precision"):
        if getattr(a, key) is not None:
            spec[key] = getattr(a, key)
    return spec


def cmd_sweep(a) -> int:
    import subprocess

    from methods.base import ConfigError
    from runners.queue import enqueue_missing, open_storage
    from runners.results import check_results_dir
    from runners.config import plan_run
    from runners.run import execute, preflight
    from runners.sweep import describe, expand, load_spec
    from tasks import resolve_data_dir

    if a.workers < 0:
        raise ConfigError(f"--workers {a.workers} must be >= 0 (0: only enqueue, for workers started elsewhere)")
    if a.workers == 0 and a.storage is None:
        raise ConfigError("--workers 0 only enqueues the cells for workers started elsewhere: give --storage "
                          "(the journal file or RDB URL those workers read)")
    results = Path(a.results)
    check_results_dir(results)
    plan = expand(load_spec(a.spec) if a.spec else spec_from_args(a))
    data_dir = resolve_data_dir(a.data_dir)
    for c in plan.cells:  # every cell passes the same up-front checks as `run` before anything runs
        preflight(plan_run(c.cfg), data_dir)
    print(describe(plan, results))
    if a.dry_run:
        return 0
    if a.workers == 1 and a.storage is None:  # one process: run the cells in dependency order
        failed = 0
        for c in plan.cells:
            try:
                rec = execute(c.cfg, results, data_dir=data_dir, device=a.device)
                print(f"{c.run_id}: {rec['status']}{' (already done)' if rec.get('skipped') else ''}")
            except Exception as e:  # recorded under the run id; the sweep goes on
                failed += 1
                print(f"{c.run_id}: failed: {type(e).__name__}: {e}")
        print(f"sweep {plan.name}: {len(plan.cells) - failed} done, {failed} failed")
        return 1 if failed else 0
    study = f"sweep-{plan.name}"
    n = enqueue_missing(open_storage(a.storage, results), study, plan.cells, results)
    print(f"enqueued {n} cells in study {study!r} ({a.storage or results / '.sweeps.journal'})")
    if a.workers == 0:
        print(f"start workers with: python benchmark.py worker --study {study} --storage {a.storage} "
              f"--results {results}")
        return 0
    cmd = [sys.executable, str(ROOT / "benchmark.py"), "worker", "--study", study, "--results", str(results),
           "--device", a.device] + (["--storage", a.storage] if a.storage else []) + \
          (["--data-dir", data_dir] if data_dir else [])
    # N torch processes with the default thread count each oversubscribe the cores, and OpenMP threads that
    # spin against each other slow everything down many times over: give each worker its share.
    threads = str(max(1, (os.cpu_count() or 1) // max(1, a.workers)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    procs = [subprocess.Popen(cmd + ["--name", f"w{i}"], env=env) for i in range(a.workers)]
    codes = [p.wait() for p in procs]
    st = plan.status(results)
    bad = [k for k, v in st.items() if v != "done"]
    print(f"sweep {plan.name}: {len(st) - len(bad)} done, {len(bad)} not done")
    return 1 if bad or any(codes) else 0


def cmd_worker(a) -> int:
    import socket

    from runners.queue import require_study, work
    require_study(a.storage, a.study, Path(a.results))
    did = work(a.storage, a.study, Path(a.results), a.data_dir, a.device,
               worker=a.name or f"{socket.gethostname()}-{os.getpid()}", log=lambda m: print(m, flush=True))
    print(f"worker done: {did}")
    return 0


def cmd_tune(a) -> int:
    from methods.settings import parse_set_args
    from runners.results import check_results_dir
    from runners.tune import tune
    check_results_dir(Path(a.results))

    run_kw = dict(model=a.model, seed=a.seed, scoring=a.scoring, normalization=a.normalization,
                  limit_train=a.limit_train, limit_eval=a.limit_eval, n_samples=a.n_samples, precision=a.precision,
                  quant=a.quant, eval_batch_size=a.eval_batch_size, base_settings=parse_set_args(a.base_set))
    study = tune(a.method, a.task, a.trials, Path(a.results), storage=a.storage, study_name=a.study,
                 sampler=a.sampler, ece_max=a.ece_max, fixed=parse_set_args(a.set), ood=a.ood, run_kw=run_kw,
                 data_dir=a.data_dir, device=a.device)
    print(f"study {study.study_name}: {len(study.trials)} trials, {len(study.best_trials)} on the Pareto front")
    return 0


def cmd_report(a) -> int:
    from methods.base import ConfigError
    from runners.report import report
    if a.bootstrap < 0:
        raise ConfigError(f"--bootstrap {a.bootstrap} must be >= 0 (0: no intervals)")
    out = Path(a.out) if a.out else Path(a.results) / "report"
    for p in report(Path(a.results), out, n_boot=a.bootstrap, storage=a.storage):
        print(p)
    return 0


def cmd_bench(a) -> int:
    from bench.cli import main as bench_main
    return bench_main(a)


def cmd_list(a) -> int:
    if a.what == "methods" and a.name:
        from methods.registry import get_method
        from methods.settings import settings_table
        cls = get_method(a.name)
        print(f"{a.name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        import dataclasses
        fields = dataclasses.fields(cls.Config)
        kind = (f"post-hoc, starts from a {cls.base_method} fit" if cls.posthoc else
                "nothing fitted" if not fields else
                "trained" + (f", member 0 is a {cls.base_method} fit" if cls.base_method else ""))
        print(f"kind: {kind}; samples per evaluation: {cls.samples_for(cls.Config())} by default")
        if fields:
            print("settings (--set key=value): name, type, default, help")
            print(settings_table(cls.Config))
        else:
            print("settings: none")
        return 0
    if a.what == "methods":
        from methods.registry import list_methods
        rows = list_methods()
    elif a.what == "tasks":
        from tasks import list_tasks
        rows = list_tasks()
    else:
        from backbones import list_models
        rows = list_models()
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0


def main(argv=None) -> int:
    ap = Parser(prog="benchmark.py", description="Bayesian parameter-efficient fine-tuning benchmark")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_run_args(sub.add_parser("run", help="run one benchmark cell (method x task x seed)"))
    tp = sub.add_parser("tune", help="multi-objective search (ACC, ECE, NLL on validation) with Optuna")
    add_run_args(tp)
    tp.add_argument("--trials", type=int, required=True, help="the study's total number of trials (rerunning resumes it)")
    tp.add_argument("--storage", default=None, help="Optuna storage: a .journal file or an RDB URL (default: <results>/.sweeps.journal)")
    tp.add_argument("--study", default=None, help="study name (default tune-<method>-<task>)")
    tp.add_argument("--sampler", default="tpe", help="tpe (multivariate, default) | nsga2 | gp")
    tp.add_argument("--ece-max", type=float, default=None, help="constraint: only trials with validation ECE <= this are feasible")
    sp = sub.add_parser("sweep", help="run a grid of cells from a YAML file or preset (quick, commonsense, paper, tiny)")
    sp.add_argument("spec", nargs="?", default=None, help="a sweep YAML file or a preset name (or use the lists below)")
    sp.add_argument("--methods", type=_csv, default=(), help="instead of a file: comma-separated methods")
    sp.add_argument("--tasks", type=_csv, default=(), help="instead of a file: comma-separated training tasks")
    sp.add_argument("--ood", type=_csv, default=(), help="instead of a file: OOD sets for every task")
    sp.add_argument("--seeds", type=_seeds, default=(0,), help="instead of a file: comma-separated seeds (default 0)")
    sp.add_argument("--model", default=None, help="instead of a file: the model (default: smollm2-135m)")
    sp.add_argument("--scoring", default=None, help="instead of a file: loglik | label (default: loglik)")
    sp.add_argument("--limit-train", type=int, default=None, help="instead of a file: first N training questions")
    sp.add_argument("--limit-eval", type=int, default=None, help="instead of a file: first N test questions per set")
    sp.add_argument("--precision", default=None, help="instead of a file: bf16 | fp32 (default: bf16)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="instead of a file: a setting of every listed method that has it (repeatable)")
    sp.add_argument("--base-set", action="append", default=[], metavar="KEY=VALUE",
                    help="instead of a file: a setting of the lora base adapter of post-hoc methods (repeatable)")
    sp.add_argument("--name", default="cli", help="sweep name (the shared study is sweep-<name>)")
    sp.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    sp.add_argument("--workers", type=int, default=1, help="local worker processes (shared through --storage)")
    sp.add_argument("--storage", default=None, help="Optuna storage: a .journal file (one machine) or an RDB URL")
    for p in (sp, wp := sub.add_parser("worker", help="claim and run cells of a shared sweep until none is left")):
        p.add_argument("--results", default=str(ROOT / "results"), help="results directory")
        p.add_argument("--data-dir", default=None, help="local dataset mirror (else $BAYESPEFT_DATA_DIR, else the hub)")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    wp.add_argument("--study", required=True, help="the sweep's study, sweep-<name> (printed by `sweep`)")
    wp.add_argument("--storage", default=None, help="the sweep's storage: .journal file or RDB URL "
                                                    "(default: <results>/.sweeps.journal)")
    wp.add_argument("--name", default=None, help="this worker's name in the storage (default: host-pid)")
    rp = sub.add_parser("report", help="leaderboard and cost tables (md, csv, tex) and figures (png, pdf)")
    rp.add_argument("--results", default=str(ROOT / "results"), help="results directory to report on")
    rp.add_argument("--out", default=None, help="output directory (default: <results>/report)")
    rp.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for intervals (0: none)")
    rp.add_argument("--storage", default=None,
                    help="Optuna storage whose tune studies are plotted (default: <results>/.sweeps.journal)")
    ep = sub.add_parser("evaluate", help="score a stored fit on more sets / another limit or S, refitting nothing")
    ep.add_argument("--fit", required=True, help="a finished run directory or <results>/fits/<fit id>")
    ep.add_argument("--ood", type=_csv, default=(), help="comma-separated OOD sets scored besides the run's own "
                                                         "(the training task is always scored)")
    ep.add_argument("--limit-eval", type=int, default=None, help="first N test questions per set (default: the run's)")
    ep.add_argument("--samples", type=int, default=None, dest="n_samples",
                    help="posterior samples at test time (default: the run's)")
    ep.add_argument("--eval-batch-size", type=int, default=None, help="questions per evaluation batch (default: the run's)")
    ep.add_argument("--data-dir", default=None, help="local dataset mirror (else $BAYESPEFT_DATA_DIR, else the hub)")
    ep.add_argument("--device", default="auto", help="auto | cpu | cuda")
    mp = sub.add_parser("migrate", help="move the fits of runs written before the fit store into <results>/fits")
    mp.add_argument("--results", default=str(ROOT / "results"), help="results directory")
    from bench.cli import add_bench_args
    add_bench_args(sub.add_parser("bench", help="performance comparisons against plain loops and laplace-torch"))
    lp = sub.add_parser("list", help="list methods, tasks or models")
    lp.add_argument("what", choices=["methods", "tasks", "models"], help="what to list")
    lp.add_argument("name", nargs="?", default=None, help="with `methods`: one method's settings, types, defaults, help")
    a = ap.parse_args(argv)
    _quiet()
    from backbones import BackboneError
    from methods.base import ConfigError
    from tasks import TaskError
    try:
        return {"run": cmd_run, "report": cmd_report, "tune": cmd_tune, "sweep": cmd_sweep, "worker": cmd_worker, "list": cmd_list,
                "bench": cmd_bench, "evaluate": cmd_evaluate, "migrate": cmd_migrate}[a.cmd](a)
    except (ConfigError, TaskError, BackboneError, FileNotFoundError) as e:  # bad input: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # what finished is kept; a run cut short was recorded as failed and is retried
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """`main` with Ctrl-C during start-up (imports, argument parsing) as quiet as during a command."""
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(entry())
