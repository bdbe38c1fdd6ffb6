"""One benchmark cell end to end: backbone -> task -> method.fit -> predict -> metrics -> result files.

All inputs are validated before anything is written. The run is assembled in a hidden temp directory and
renamed into place at the end, so `<results>/<run-id>/` is either absent or complete; a run that fails
after validation is recorded with status "failed" and its reason, and is retried on the next call.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import traceback
from pathlib import Path

from backbones import BackboneError, Scorer, load_backbone
from methods.base import ConfigError
from methods.registry import get_method
from metrics import ood_auroc
from runners.config import RunConfig, RunPlan, plan_run
from runners.evaluate import evaluate_set
from runners.fits import clean_orphans as clean_fit_orphans, ensure_fit, eval_key, read_eval, write_eval
from runners.results import Phases, environment, finished, prediction_arrays, write_json_atomic
from runners.lock import claim, is_stale, lock_path
from tasks import TaskError, check_task, file_stem, load_split, resolve_data_dir


def preflight(plan: RunPlan, data_dir: str | None) -> None:
    """Everything that can be checked without loading a model; raises a one-line error."""
    cfg = plan.cfg
    for t, split in plan.sets:
        check_task(t, ("train", "validation", split) if t == cfg.task else (split,), data_dir=data_dir)
    if cfg.adapter is not None:
        try:
            get_method(plan.cls.base_method).check_saved(Path(cfg.adapter))
        except ConfigError as e:
            raise ConfigError(f"--adapter {cfg.adapter}: {e}") from None


def n_samples_for(cfg: RunConfig) -> int:
    """The S this run's evaluations draw: the method declares it from its settings and the request."""
    return plan_run(cfg).n_samples


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _clean_orphans(results_dir: Path) -> None:
    """Remove the temp directories of runs that died (no live lock holds them); live runs hold their lock."""
    for tmp in Path(results_dir).glob(".tmp-*"):
        lock = lock_path(results_dir, tmp.name[len(".tmp-"):])
        if not lock.exists() or is_stale(lock):
            shutil.rmtree(tmp, ignore_errors=True)
    clean_fit_orphans(results_dir)


def execute(cfg: RunConfig, results_dir: Path, data_dir: str | None = None, device: str = "auto",
            force: bool = False, log=None) -> dict:
    """Run `cfg` unless an identical finished run exists; return its result record.

    The cell is claimed first (runners/lock.py): a second identical call waits for the first and returns
    its result instead of computing it again. Its fit and evaluations are reused when stored
    (runners/fits.py); `force` recomputes the evaluations (the fit stays)."""
    data_dir = resolve_data_dir(data_dir)
    plan = plan_run(cfg)  # resolved once, passed down
    preflight(plan, data_dir)
    final = Path(results_dir) / cfg.run_id
    done = finished(final)
    if done and not force:
        return {**done, "skipped": True}
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    with claim(results_dir, cfg.run_id, on_wait=lambda: say(f"{cfg.run_id}: another process is running this "
                                                             "cell; waiting for it")) as waited:
        done = finished(final)
        if done and (waited or not force):
            return {**done, "skipped": True}
        _clean_orphans(results_dir)
        return _execute_claimed(plan, results_dir, data_dir, device, force, say)


def _execute_claimed(plan: RunPlan, results_dir, data_dir, device, force, say) -> dict:
    cfg = plan.cfg
    final = Path(results_dir) / cfg.run_id
    tmp = Path(results_dir) / f".tmp-{cfg.run_id}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    phases = Phases()
    record = {"run_id": cfg.run_id, "status": "running", "config": cfg.to_dict(),
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        record.update(_run(plan, tmp, Path(results_dir), data_dir, device, phases, force, say))
        record["status"] = "done"
    except (ConfigError, BackboneError, TaskError):
        # bad input found only once the model is loaded (e.g. an adapter of another model): nothing is kept
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException as e:  # recorded (Ctrl-C too), then re-raised for the caller (the sweep decides whether to go on)
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
        _finish(record, phases, tmp, final)
        raise
    _finish(record, phases, tmp, final)
    return record


def _finish(record: dict, phases: Phases, tmp: Path, final: Path) -> None:
    record["timings"], record["memory"] = phases.seconds, phases.memory
    write_json_atomic(tmp / "result.json", record)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _run(plan: RunPlan, out: Path, results: Path, data_dir: str | None, device: str, phases: Phases,
         force: bool, say) -> dict:
    cfg, cls, mcfg, S = plan.cfg, plan.cls, plan.method_config, plan.n_samples
    with phases("load"):
        backbone = load_backbone(cfg.backbone_config(device))
        scorer = Scorer(backbone.tokenizer, cfg.scoring, cfg.normalization)
    fdir, fit_rec, method = ensure_fit(plan, results, data_dir, device, (backbone, scorer), say)
    fit_reused = method is None
    split_kw = dict(data_dir=data_dir, split_seed=cfg.split_seed, val_fraction=cfg.val_fraction)
    metrics, rel, conf, reused, seconds = {}, {}, {}, [], {}
    for t, split in plan.sets:
        key = eval_key(split, t, cfg.limit_eval, S)
        got = None if force else read_eval(fdir, key)
        if got is None:
            if method is None:  # a stored fit: loaded once, through the method's own load
                with phases("load"):
                    method = cls(mcfg, backbone, scorer, cfg.seed)
                    method.load(fdir / "artifacts")
            with phases(f"eval:{t}"):
                rec_t, rows = evaluate_set(method, load_split(t, split, limit=cfg.limit_eval, **split_kw), S,
                                           cfg.eval_batch_size, cfg.seed, t)
            rec_t["environment"] = environment(backbone.device)
            write_eval(fdir, key, rec_t, rows)
            got = (rec_t, *prediction_arrays(rows), rows)
        else:
            reused.append(t)
        rec_t, probs, labels, rows = got
        seconds[f"eval:{t}"] = rec_t["seconds"]
        write_rows(out / "predictions" / f"{file_stem(t)}.jsonl", rows)
        metrics[t] = {"role": "id" if t == cfg.task else "ood", **rec_t["metrics"]}
        rel[t] = rec_t["reliability"]
        conf[t] = probs.max(1)
    for t in cfg.ood:  # OOD detection: does max-probability separate ID test from this OOD set?
        metrics[t]["ood_auroc_maxprob"] = ood_auroc(conf[cfg.task], conf[t])
    # the cost of this cell is the cost of computing each piece once, whether now or by an earlier run
    fit_t = fit_rec.get("timings", {})
    phases.seconds["fit"] = fit_t.get("fit", 0.0)
    if not fit_reused:  # fitted now: its data and base loading happened in this run too
        phases.seconds["load"] = phases.seconds.get("load", 0.0) + fit_t.get("load", 0.0)
    if "fit" in fit_rec.get("memory", {}):
        phases.memory.setdefault("fit", fit_rec["memory"]["fit"])
    phases.seconds.update({k: v for k, v in seconds.items() if k not in phases.seconds})
    return {"method": {"name": cfg.method, "config": mcfg.to_dict(), "fitted": fit_rec.get("fitted", {}),
                       "posthoc": cls.posthoc, "stochastic": cls.samples_for(mcfg) > 1, "n_samples": S,
                       "trainable_parameters": fit_rec.get("trainable_parameters")},
            "fit": {"fit_id": cfg.fit_id, "dir": str(fdir.relative_to(results)) if fdir.is_relative_to(results)
                    else str(fdir), "reused": fit_reused, "evaluations_reused": reused},
            "base_run": fit_rec.get("base_fit"),
            "task": cfg.task, "model": cfg.model, "seed": cfg.seed, "scoring": scorer.describe(),
            "data": {**fit_rec.get("data", {}), "data_dir": data_dir or "huggingface-hub"},
            "metrics": metrics, "reliability": rel, "environment": environment(backbone.device)}
