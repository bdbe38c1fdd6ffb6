"""Multi-objective hyperparameter search with Optuna: maximise ACC, minimise ECE and NLL on the held-out
validation split (never the test split); the Pareto trials are then re-run on the test split (with OOD
sets) as ordinary results, so they join tables and plots.

Each trial is an ordinary run (content-hashed under the results directory), so a resumed study reuses
finished cells. The study lives in an Optuna storage (journal file or RDB URL), opens in optuna-dashboard,
and resumes with load_if_exists. Samplers are explicit, since Optuna 5 changed its defaults.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna

from methods.base import ConfigError
from metrics import tuned
from methods.registry import get_method
from methods.settings import suggest
from runners.config import build_run_config
from runners.queue import open_storage

SAMPLERS = ("tpe", "nsga2", "gp")
OBJECTIVES = tuned()  # metrics/table.py: ACC up, ECE and NLL down


def make_sampler(name: str, seed: int, constraints=None):
    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, seed=seed, constraints_func=constraints)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=constraints)
    raise ConfigError(f"sampler {name!r} is not one of {', '.join(SAMPLERS)}")


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{k}.")
            out += [inner] if inner else []
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} then, {b!r} now")
    return "; ".join(out)


def tune(method: str, task: str, trials: int, results: Path, *, storage: str | None = None,
         study_name: str | None = None, sampler: str = "tpe", ece_max: float | None = None,
         fixed: dict | None = None, ood: tuple[str, ...] = (), run_kw: dict | None = None,
         data_dir: str | None = None, device: str = "auto", log=print) -> optuna.Study:
    from runners.run import execute

    cls = get_method(method)
    space = cls.Config.search_space
    if not space:
        raise ConfigError(f"{method} declares no search space (nothing to tune)")
    if trials < 1:
        raise ConfigError(f"--trials {trials} must be >= 1")
    run_kw, fixed = dict(run_kw or {}), dict(fixed or {})
    probe = build_run_config(method, task, fixed, eval_split="validation", **run_kw)  # bad input fails up front
    if ece_max is not None and not 0 < ece_max <= 1:
        raise ConfigError(f"--ece-max {ece_max} must be in (0, 1]: ECE is a fraction")
    constraints = (lambda t: [t.user_attrs.get("ece", 1.0) - ece_max]) if ece_max is not None else None
    chosen = make_sampler(sampler, run_kw.get("seed", 0), constraints)  # before the storage: nothing written
    # What every trial shares: the study refuses to be resumed with anything else (it would mix trials).
    identity = {"method": method, "task": task, "ece_max": ece_max,
                "fixed": {k: v for k, v in probe.settings.items() if k not in space},
                "run": {k: v for k, v in probe.to_dict().items() if k not in ("method", "task", "settings")}}
    identity = json.loads(json.dumps(identity, default=list))
    study = optuna.create_study(study_name=study_name or f"tune-{method}-{task}", storage=open_storage(storage, results),
                                directions=["maximize" if m.higher_is_better else "minimize" for m in OBJECTIVES],
                                load_if_exists=True, sampler=chosen)
    before = study.user_attrs.get("identity")
    if before is None:
        study.set_user_attr("identity", identity)
    elif before != identity:
        raise ConfigError(f"study {study.study_name} was created with other settings ({_differences(before, identity)}); "
                          "resume it with the same ones, or name a new study with --study")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([m.name for m in OBJECTIVES])

    def objective(trial: optuna.Trial):
        settings = {**fixed, **suggest(trial, space)}
        cfg = build_run_config(method, task, settings, eval_split="validation", **run_kw)
        trial.set_user_attr("settings", json.dumps(settings))
        trial.set_user_attr("run_id", cfg.run_id)
        m = execute(cfg, results, data_dir=data_dir, device=device)["metrics"][task]
        trial.set_user_attr("ece", m["ece"])
        log(f"trial {trial.number}: {settings} -> " + " ".join(f"{o.name}={m[o.name]:.4f}" for o in OBJECTIVES))
        return tuple(m[o.name] for o in OBJECTIVES)

    done = sum(t.state.is_finished() for t in study.trials)
    study.optimize(objective, n_trials=max(0, trials - done), catch=(RuntimeError, FloatingPointError))
    test_runs = {}
    for t in study.best_trials:  # Pareto front (feasible trials only when a constraint is set)
        cfg = build_run_config(method, task, json.loads(t.user_attrs["settings"]), ood=ood, **run_kw)
        rec = execute(cfg, results, data_dir=data_dir, device=device)
        test_runs[str(t.number)] = cfg.run_id
        m = rec["metrics"][task]
        log(f"pareto trial {t.number}: test " + " ".join(f"{o.name}={m[o.name]:.4f}" for o in OBJECTIVES)
            + f" -> {cfg.run_id}")
    study.set_user_attr("pareto_test_runs", test_runs)  # finished trials are immutable; the study is not
    return study
