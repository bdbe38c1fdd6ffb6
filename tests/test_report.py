"""Reports and the notebook, on a real (tiny) sweep's results."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from runners.collect import load_results
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def results(tmp_path_factory, data_dir):
    r = tmp_path_factory.mktemp("results")
    env = {**os.environ, "BAYESPEFT_DATA_DIR": data_dir}
    p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "sweep", "tiny", "--results", str(r)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "tune", "--method", "lora", "--task", "arc_easy",
                        "--model", "tiny-random-llama", "--trials", "3", "--limit-train", "8", "--limit-eval", "6",
                        "--set", "epochs=1", "--precision", "fp32", "--results", str(r)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return r


def test_report_tables_and_plots(results, tmp_path):
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "report", "--results", str(results),
                        "--out", str(out), "--bootstrap", "20"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    md = (out / "leaderboard_id.md").read_text()
    for m in ("lora", "temperature", "tfb"):
        assert f"| {m}" in md
    assert "loglik" in md and "| posterior |" in md.splitlines()[0]  # scoring and posterior flags shown
    rows = [line.strip(" |").split(" | ") for line in md.splitlines()[2:]]
    for r in rows:  # the best is bold among unflagged rows only; a flagged row is shown, never ranked
        assert ("**" in " ".join(r)) <= (r[-1] == "ok")
    assert any("**" in " ".join(r) for r in rows) == any(r[-1] == "ok" for r in rows)
    csv = pd.read_csv(out / "leaderboard_id.csv")
    assert {"acc", "acc_lo", "acc_hi", "ece", "nll", "n", "seeds"} <= set(csv.columns)
    assert ((csv["acc_lo"] <= csv["acc"]) & (csv["acc"] <= csv["acc_hi"])).all()
    assert "\\begin{tabular}" in (out / "leaderboard_id.tex").read_text()
    deltas = pd.read_csv(out / "deltas_vs_lora.csv")  # paired differences to lora; temperature keeps its argmax
    assert deltas.loc[deltas.method == "temperature", "acc"].abs().max() == 0 and "Δnll" in (out / "deltas_vs_lora.md").read_text()
    cost = pd.read_csv(out / "cost.csv")
    assert cost.loc[cost.method.str.startswith("lora"), "fit_x_lora_train"].iloc[0] == pytest.approx(1.0)
    for name in ("reliability_arc_easy_arc_easy", "pareto_arc_easy", "cost", "study_tune-lora-arc_easy"):
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000


def test_tuning_runs_stay_out_of_the_leaderboard(results):
    df = load_results(results)
    assert set(df.eval_task) == {"arc_easy", "mmlu_chem"}
    val = load_results(results, eval_split="validation")
    assert val.run_id.nunique() == 3 and set(val.role) == {"id"}


def test_notebook_runs(results):
    nb = json.loads((ROOT / "notebooks" / "leaderboard.ipynb").read_text())
    env = {"__name__": "__main__"}
    os.environ["BAYESPEFT_RESULTS"] = str(results)
    cwd = os.getcwd()
    try:
        os.chdir(ROOT / "notebooks")
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), "notebook", "exec"), env)
    finally:
        os.chdir(cwd)
        os.environ.pop("BAYESPEFT_RESULTS")
    assert len(env["table"]) >= 3 and env["fig"].axes


def _fake_run(root, name, probs, labels, seed=0, label=None):
    d = root / name
    (d / "predictions").mkdir(parents=True)
    with open(d / "predictions" / "arc_easy.jsonl", "w") as f:
        for p, y in zip(probs, labels):
            f.write(json.dumps({"probs": list(p), "label": int(y)}) + "\n")
    return {"model": "m", "scoring": "loglik", "train_task": "arc_easy", "eval_task": "arc_easy",
            "label": label or name, "method": name, "seed": seed, "run_dir": str(d), "run_id": name,
            "fit_id": name, "base_run": None}


def test_paired_deltas_star_only_reliable_differences(tmp_path):
    """A method right on every question lora gets wrong is starred; one equal to lora is not; a run on
    other questions is left out rather than compared."""
    import numpy as np
    from runners.deltas import paired_deltas, render_deltas
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    lora = np.where(rng.random(200)[:, None] < 0.6, np.eye(2)[y] * 0.6 + 0.2, np.eye(2)[1 - y] * 0.6 + 0.2)
    better = np.eye(2)[y] * 0.6 + 0.2
    rows = [_fake_run(tmp_path, "lora", lora, y), _fake_run(tmp_path, "better", better, y),
            _fake_run(tmp_path, "same", lora, y), _fake_run(tmp_path, "other", lora, 1 - y)]
    table = paired_deltas(pd.DataFrame(rows), "lora", n_boot=100).set_index("method")
    assert set(table.index) == {"better", "same"}
    acc_gain = float((lora.argmax(1) != y).mean())
    assert table.loc["better", "acc"] == pytest.approx(acc_gain) and table.loc["better", "acc_lo"] > 0
    assert table.loc["same", ["acc", "ece", "nll"]].abs().max() == 0
    shown = render_deltas(table.reset_index()).set_index("method")
    assert shown.loc["better", "Δacc"].endswith("*") and not shown.loc["same", "Δacc"].endswith("*")
