"""Sweeps: plan, dependency order, failures, kill -9 and restart, and workers sharing one storage."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from runners.queue import enqueue_missing, open_storage, work
from runners.config import base_run_config
from runners.sweep import expand, load_spec
from tests.conftest import ROOT

TINY = load_spec("tiny")


def spec(**over):
    return {**TINY, **over}


def sweep(*args, results, data_dir, timeout=600):
    env = {**os.environ, "BAYESPEFT_DATA_DIR": data_dir}
    return subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "sweep", *args, "--results", str(results)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def write_spec(tmp_path, **over) -> str:
    import yaml
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec(**over)))
    return str(f)


def created(results: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["created"] for p in results.glob("*/result.json")}


def test_plan_orders_bases_first_and_shares_them():
    plan = expand(spec(seeds=[0, 1]))
    ids = [c.run_id for c in plan.cells]
    fits = [c.cfg.fit_id for c in plan.cells]
    assert len(ids) == len(set(ids)) == 6  # lora, temperature, tfb per seed; lora listed once per seed
    for i, c in enumerate(plan.cells):  # post-hoc cells start from the fit of the lora cell listed before them
        if c.depends_on:
            assert c.depends_on in fits[:i]
    assert sum(c.cfg.method == "lora" for c in plan.cells) == 2


def test_a_method_entry_may_set_its_own_base_settings():
    """l_lora_xs starts from a lora_xs adapter whose lr differs from the lora base's: its entry says so."""
    plan = expand(spec(methods=["temperature", {"l_lora_xs": {"base_settings": {"lr": 3e-3, "epochs": 1}}}],
                       base_settings={"lr": 5e-4, "epochs": 1}))
    base = {b.method: b for b in (base_run_config(c.cfg) for c in plan.cells if c.depends_on)}
    assert base["lora_xs"].settings["lr"] == 3e-3 and base["lora"].settings["lr"] == 5e-4
    assert all("base_settings" not in c.cfg.settings for c in plan.cells)


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, data_dir):
    p = sweep(write_spec(tmp_path), "--dry-run", results=tmp_path / "r", data_dir=data_dir)
    assert p.returncode == 0 and "3 cells, 0 done" in p.stdout and "reused by 2" in p.stdout
    assert not (tmp_path / "r").exists()


def test_bad_sweep_file(tmp_path, data_dir):
    p = sweep(write_spec(tmp_path, methods=["lorra"]), results=tmp_path / "r", data_dir=data_dir)
    assert p.returncode == 2 and "did you mean 'lora'" in p.stderr.lower()
    p = sweep(str(tmp_path / "nope.yaml"), results=tmp_path / "r", data_dir=data_dir)
    assert p.returncode == 2 and "presets" in p.stderr


def test_failing_cell_is_recorded_and_sweep_goes_on_then_retried(tmp_path, data_dir):
    bad = {"tfb": {"anchor_size": 8, "iterations": 2, "sigma_min": 50.0, "sigma_max": 60.0, "epsilon": 1e-9}}
    f = write_spec(tmp_path, methods=[TINY["methods"][0], "temperature", bad])
    p = sweep(f, results=tmp_path / "r", data_dir=data_dir)
    assert p.returncode == 1 and "2 done, 1 failed" in p.stdout
    failed = [json.loads(x.read_text()) for x in (tmp_path / "r").glob("tfb-*/result.json")]
    assert failed[0]["status"] == "failed" and "sigma_min" in failed[0]["error"]
    before = created(tmp_path / "r")
    p = sweep(f, results=tmp_path / "r", data_dir=data_dir)
    after = created(tmp_path / "r")
    assert "2 done, 1 failed" in p.stdout
    assert {k: v for k, v in after.items() if not k.startswith("tfb")} == \
           {k: v for k, v in before.items() if not k.startswith("tfb")}  # only the failed cell reran


def test_kill_9_and_restart_recomputes_nothing_finished(tmp_path, data_dir):
    results = tmp_path / "r"
    f = write_spec(tmp_path, seeds=[0, 1])
    env = {**os.environ, "BAYESPEFT_DATA_DIR": data_dir}
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmark.py"), "sweep", f, "--results", str(results)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(results.glob("*/result.json"))) < 2:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = created(results)
    assert 2 <= len(finished) < 6
    for d in results.glob("*"):  # every run directory is complete (hidden temp dirs aside)
        if not d.name.startswith(".") and d.name != "fits":
            json.loads((d / "result.json").read_text())
    for d in results.glob("fits/*"):  # and every stored fit (a killed fit's temp dir aside: the restart removes it)
        if not d.name.startswith("."):
            json.loads((d / "fit.json").read_text())
    p = sweep(f, results=results, data_dir=data_dir)
    assert p.returncode == 0 and "6 done, 0 failed" in p.stdout
    after = created(results)
    assert all(after[k] == v for k, v in finished.items())
    assert not list(results.glob(".tmp-*")) and not list(results.glob("fits/.tmp-*"))


def _trials_by_cell(storage, name):
    study = optuna.load_study(study_name=name, storage=storage)
    out = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.user_attrs["run_id"], []).append(t.state)
    return out


def test_three_workers_on_a_journal_run_each_cell_once(tmp_path, data_dir):
    results = tmp_path / "r"
    p = sweep(write_spec(tmp_path, seeds=[0, 1]), "--workers", "3", results=results, data_dir=data_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    cells = _trials_by_cell(open_storage(None, results), "sweep-tiny")
    assert len(cells) == 6 and all(states == [TrialState.COMPLETE] for states in cells.values())
    assert len(created(results)) == 6


def test_dead_worker_claim_is_released_and_retried(tmp_path, data_dir):
    results = tmp_path / "r"
    plan = expand(spec())
    storage = open_storage(None, results)
    enqueue_missing(storage, "sweep-tiny", plan.cells, results)
    study = optuna.load_study(study_name="sweep-tiny", storage=storage)
    first = study.get_trials(states=(TrialState.WAITING,))[0]
    assert storage.set_trial_state_values(first._trial_id, TrialState.RUNNING)  # a worker claims it, then dies
    storage.set_trial_user_attr(first._trial_id, "heartbeat", time.time() - 3600)
    did = work(None, "sweep-tiny", results, data_dir, "cpu", worker="survivor", heartbeat=0.2, grace=5)
    assert did == {"done": 3, "failed": 0}
    cells = _trials_by_cell(storage, "sweep-tiny")
    assert cells[first.user_attrs["run_id"]] == [TrialState.FAIL, TrialState.COMPLETE]


def _pg_bin():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL server on loopback (initdb refuses root: run it as the postgres user)."""
    bin_dir = _pg_bin()
    if bin_dir is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server binaries not installed (.ci/install.sh installs Debian's postgresql)")
    pytest.importorskip("psycopg2")
    import tempfile
    # not under tmp_path: pytest's temp root is private to root, and the server runs as the postgres user
    data = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(as_pg + [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "bench"], check=True,
                   capture_output=True)
    subprocess.run(as_pg + [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                            f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run(as_pg + [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "sweeps"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg2://bench@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run(as_pg + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_three_workers_on_postgresql_run_each_cell_once(tmp_path, data_dir, postgres):
    results = tmp_path / "r"
    p = sweep(write_spec(tmp_path, seeds=[0, 1]), "--workers", "3", "--storage", postgres, results=results,
              data_dir=data_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    cells = _trials_by_cell(open_storage(postgres, results), "sweep-tiny")
    assert len(cells) == 6 and all(states == [TrialState.COMPLETE] for states in cells.values())
    assert len(created(results)) == 6


def test_sweep_from_cli_lists(tmp_path, data_dir):
    p = sweep("--methods", "lora,temperature", "--tasks", "arc_easy", "--ood", "mmlu_chem", "--seeds", "0,1",
              "--model", "tiny-random-llama", "--limit-train", "8", "--limit-eval", "4", "--dry-run",
              results=tmp_path / "r", data_dir=data_dir)
    assert p.returncode == 0 and "4 cells" in p.stdout and "reused by 1" in p.stdout


def test_adding_an_ood_set_to_a_finished_sweep_runs_only_the_new_evaluations(tmp_path, data_dir):
    results = tmp_path / "r"
    assert sweep(write_spec(tmp_path), results=results, data_dir=data_dir).returncode == 0
    fits_before = {p: p.stat().st_mtime_ns for p in results.glob("fits/*/artifacts/**/*") if p.is_file()}
    more = [{"task": "arc_easy", "ood": ["mmlu_chem", "mmlu_law"]}]
    p = sweep(write_spec(tmp_path, tasks=more), results=results, data_dir=data_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    new = [json.loads(f.read_text()) for f in results.glob("*/result.json")
           if "mmlu_law" in json.loads(f.read_text())["config"]["ood"]]
    assert len(new) == 3  # lora, temperature, tfb: each scored mmlu_law and reused all the rest
    for rec in new:
        assert rec["fit"]["reused"] and set(rec["fit"]["evaluations_reused"]) == {"arc_easy", "mmlu_chem"}
    assert {p: p.stat().st_mtime_ns for p in fits_before} == fits_before
