"""Fits and evaluations stored apart from runs (runners/fits.py): reuse, exact re-scoring, migration."""
from __future__ import annotations

import json
import shutil

import pytest

from methods.registry import get_method, method_names
from runners.config import build_run_config
from runners.fits import eval_key
from runners.run import execute
from tests.helpers import fast_settings

TINY = dict(model="tiny-random-llama", limit_train=8, limit_eval=6, precision="fp32")


def _cfg(name: str, **kw):
    cls = get_method(name)
    base = {"base_settings": fast_settings(cls.base_method)} if cls.posthoc else {}
    return build_run_config(name, "arc_easy", fast_settings(name), **{**TINY, **base, **kw})


def _mtimes(d):
    return {p: p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", method_names())
def test_a_stored_fit_rescored_reproduces_the_runs_metrics(name, tmp_path, data_dir):
    """The run scores the fit it just made in memory; scoring the stored fit again (loaded through
    Method.load) gives exactly the same numbers, for every method in the registry."""
    cfg = _cfg(name)
    first = execute(cfg, tmp_path, data_dir=data_dir, device="cpu")
    again = execute(cfg, tmp_path, data_dir=data_dir, device="cpu", force=True)  # re-scores, never refits
    assert again["fit"]["reused"] and not again["fit"]["evaluations_reused"]
    assert again["metrics"] == first["metrics"]


def test_adding_an_ood_set_refits_nothing_and_scores_only_the_new_set(tmp_path, data_dir):
    first = execute(_cfg("temperature"), tmp_path, data_dir=data_dir, device="cpu")
    fits = tmp_path / "fits"
    before = _mtimes(fits)
    added = execute(_cfg("temperature", ood=("mmlu_chem",)), tmp_path, data_dir=data_dir, device="cpu")
    assert added["fit"]["reused"] and added["fit"]["evaluations_reused"] == ["arc_easy"]
    assert all(_mtimes(fits)[p] == t for p, t in before.items())  # no stored file was rewritten
    assert added["metrics"]["arc_easy"] == {**first["metrics"]["arc_easy"]}
    assert {p.name for p in (fits / first["fit"]["fit_id"] / "evals").iterdir()} == \
        {eval_key("test", "arc_easy", 6, 1), eval_key("test", "mmlu_chem", 6, 1)}
    assert len(list(fits.glob("lora-*"))) == 1 and not list(tmp_path.glob("lora-*"))  # the base: a fit, no run


def test_a_posthoc_run_with_other_evaluation_options_reuses_the_base_fit(tmp_path, data_dir):
    a = execute(_cfg("tfb"), tmp_path, data_dir=data_dir, device="cpu")
    b = execute(_cfg("tfb", limit_eval=4, n_samples=2), tmp_path, data_dir=data_dir, device="cpu")
    assert a["base_run"] == b["base_run"] and b["fit"]["reused"]
    assert len(list((tmp_path / "fits").glob("lora-*"))) == 1


def test_evaluate_command_scores_a_stored_fit_on_a_new_set(tmp_path, data_dir):
    rec = execute(_cfg("lora"), tmp_path, data_dir=data_dir, device="cpu")
    run = tmp_path / _cfg("lora").run_id
    from tests.helpers import ROOT
    import subprocess
    import sys
    p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "evaluate", "--fit", str(run), "--ood",
                        "mmlu_chem", "--data-dir", data_dir, "--device", "cpu"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "reused: fit" in p.stdout and "evaluations of arc_easy" in p.stdout and "mmlu_chem" in p.stdout
    new = _cfg("lora", ood=("mmlu_chem",))
    out = json.loads((tmp_path / new.run_id / "result.json").read_text())
    assert out["metrics"]["arc_easy"] == rec["metrics"]["arc_easy"] and "mmlu_chem" in out["metrics"]


def test_migrate_moves_an_old_layout_run_into_the_store(tmp_path, data_dir):
    """A run written before the store (artifacts inside it) still counts as done; after `migrate` a new run
    with one more OOD set reuses its fit and its evaluation."""
    from runners.migrate import migrate
    from runners.results import finished, read_result, write_json_atomic
    cfg = _cfg("lora")
    rec = execute(cfg, tmp_path, data_dir=data_dir, device="cpu")
    run, fdir = tmp_path / cfg.run_id, tmp_path / rec["fit"]["dir"]
    shutil.move(fdir / "artifacts", run / "artifacts")  # make it look like the old layout
    shutil.rmtree(tmp_path / "fits")
    old = read_result(run)
    del old["fit"]
    write_json_atomic(run / "result.json", old)
    assert finished(run)
    assert migrate(tmp_path, log=lambda m: None) == 1
    assert finished(run) and not (run / "artifacts").exists() and (fdir / "artifacts").is_dir()
    added = execute(_cfg("lora", ood=("mmlu_chem",)), tmp_path, data_dir=data_dir, device="cpu")
    assert added["fit"]["reused"] and added["fit"]["evaluations_reused"] == ["arc_easy"]
    assert added["metrics"]["arc_easy"]["acc"] == rec["metrics"]["arc_easy"]["acc"]
