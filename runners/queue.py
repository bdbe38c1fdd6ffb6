"""Sharing a sweep between workers through an Optuna storage.

Each cell is an enqueued (WAITING) Optuna trial carrying its run config in user attributes. A worker claims
one by moving it WAITING -> RUNNING through the storage, which lets exactly one worker win (RDB row update,
or the journal's ordered log). A claimed cell carries a heartbeat (a user attribute refreshed by a thread);
a RUNNING cell whose heartbeat is older than the grace period belongs to a dead worker: the first worker
to mark it FAIL re-enqueues it. Optuna 5's JournalStorage has no heartbeat of its own and RDBStorage's
only fails stale trials inside `study.optimize`, so the heartbeat is kept here, the same for both.

Storage: a journal file (processes on one machine, default `<results>/.sweeps.journal`) or an RDB URL
(`postgresql://...`, `sqlite:///...`) for many machines; the same storage opens in optuna-dashboard.
Results are files under one results directory, which workers on several machines must share.
"""
from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from methods.base import ConfigError

from runners.config import RunConfig
from runners.results import finished

HEARTBEAT_S = 5.0
GRACE_S = 30.0


def open_storage(url: str | None, results: Path):
    if url is None or url.endswith(".journal") or url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend
        path = Path(url.removeprefix("journal:")) if url else Path(results) / ".sweeps.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # sqlalchemy's URL, driver and connection errors come in many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"--storage {url!r}: cannot open it ({first}); give a .journal file or an RDB URL "
                          "such as postgresql+psycopg2://user@host/db or sqlite:///path.db") from None


def require_study(url: str | None, name: str, results: Path) -> None:
    """A worker joins an existing study only: an unknown name (or no storage yet) is bad input."""
    if url is None and not (Path(results) / ".sweeps.journal").exists():
        raise ConfigError(f"no sweep storage at {Path(results) / '.sweeps.journal'}; start the sweep first "
                          "(`benchmark.py sweep ... --workers 0 --storage URL`) or give --storage")
    names = optuna.get_all_study_names(open_storage(url, results))
    if name not in names:
        raise ConfigError(f"study {name!r} is not in the storage (studies: {', '.join(sorted(names)) or 'none'})")


def load_studies(url: str | None, results: Path, prefix: str = "") -> list[optuna.Study]:
    """Every study in the storage whose name starts with `prefix`; none when the default journal does not
    exist yet (reading must not create it)."""
    if url is None and not (Path(results) / ".sweeps.journal").exists():
        return []
    storage = open_storage(url, results)
    return [optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(prefix)]


def _study(storage, name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="minimize")


def enqueue_missing(storage, study_name: str, cells, results: Path) -> int:
    """Enqueue every cell that is not done and has no live trial; bases come first (trial order)."""
    study = _study(storage, study_name)
    live = {t.user_attrs.get("run_id") for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))}
    n = 0
    for c in cells:
        if finished(Path(results) / c.run_id) or c.run_id in live:
            continue
        study.enqueue_trial({}, user_attrs={"run_id": c.run_id, "config": json.dumps(c.cfg.to_dict()),
                                            "depends_on": c.depends_on}, skip_if_exists=False)
        n += 1
    return n


def _reclaim_stale(storage, study: optuna.Study, grace: float) -> None:
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        if now - beat > grace:
            try:
                storage.set_trial_user_attr(t._trial_id, "error", "worker stopped sending heartbeats")
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # another worker got there first and re-enqueued it
            study.enqueue_trial({}, user_attrs={k: t.user_attrs[k] for k in ("run_id", "config", "depends_on")})


def _claim(storage, study: optuna.Study):
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                return t
        except UpdateFinishedTrialError:
            continue
    return None


class _Heartbeat(threading.Thread):
    def __init__(self, storage, trial_id: int, every: float):
        super().__init__(daemon=True)
        self.storage, self.trial_id, self.every, self.stop = storage, trial_id, every, threading.Event()

    def run(self):
        while not self.stop.wait(self.every):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:  # the trial was finished under us; nothing to keep alive
                return


def work(storage_url: str | None, study_name: str, results: Path, data_dir: str | None, device: str,
         worker: str, heartbeat: float = HEARTBEAT_S, grace: float = GRACE_S, log=print) -> dict:
    """Claim and run cells until none is waiting or running. Returns counts of what this worker did."""
    storage = open_storage(storage_url, results)
    study = _study(storage, study_name)
    did = {"done": 0, "failed": 0}
    while True:
        _reclaim_stale(storage, study, grace)
        t = _claim(storage, study)
        if t is None:
            if study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
                time.sleep(heartbeat)  # others are busy; a dead one may need reclaiming
                continue
            return did
        _run_claimed(storage, study, t, results, data_dir, device, worker, heartbeat, did, log, grace)


def _run_claimed(storage, study, t, results, data_dir, device, worker, heartbeat, did, log, grace=None) -> None:
    """Run one claimed cell under a heartbeat and record how it ended in the storage."""
    from runners.run import execute

    storage.set_trial_user_attr(t._trial_id, "heartbeat", time.time())
    storage.set_trial_user_attr(t._trial_id, "worker", worker)
    beat = _Heartbeat(storage, t._trial_id, heartbeat)
    beat.start()
    cfg = RunConfig.from_dict(json.loads(t.user_attrs["config"]))
    t0 = time.time()
    try:
        # a base fit is claimed by whichever cell needs it first (runners/fits.py), the others wait on its lock
        rec = execute(cfg, results, data_dir=data_dir, device=device)
        state, summary = TrialState.COMPLETE, {"status": rec["status"], "skipped": bool(rec.get("skipped"))}
        did["done"] += 1
    except Exception as e:  # recorded as failed (execute wrote the failed result); the sweep goes on
        state, summary = TrialState.FAIL, {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        did["failed"] += 1
        log(f"[{worker}] {cfg.run_id} failed: {summary['error']}\n{traceback.format_exc(limit=3)}")
    finally:
        beat.stop.set()
        beat.join()
    storage.set_trial_user_attr(t._trial_id, "result", json.dumps(summary))
    storage.set_trial_state_values(t._trial_id, state, values=[time.time() - t0] if state == TrialState.COMPLETE else None)
    log(f"[{worker}] {cfg.run_id}: {summary['status']}{' (already done)' if summary.get('skipped') else ''}")
