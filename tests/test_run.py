"""The runner and CLI: result files, skipping identical runs, repeatability, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from metrics import compute_metrics
from runners.config import build_run_config
from runners.run import execute
from tests.conftest import ROOT
from tests.helpers import assert_bad_input, cli

TINY = dict(model="tiny-random-llama", limit_train=8, limit_eval=9, ood=("mmlu_chem",), precision="fp32")
FAST = {"epochs": "1", "batch_size": "4"}


@pytest.fixture(scope="module")
def done(tmp_path_factory, data_dir):
    results = tmp_path_factory.mktemp("results")
    cfg = build_run_config("lora", "arc_easy", FAST, **TINY)
    return cfg, results, execute(cfg, results, data_dir=data_dir, device="cpu")


def test_result_files(done):
    cfg, results, rec = done
    run = results / cfg.run_id
    saved = json.loads((run / "result.json").read_text())
    assert saved["status"] == "done" and saved["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert saved["scoring"]["mode"] == "loglik" and saved["scoring"]["normalization"] == "token"
    assert set(saved["metrics"]) == {"arc_easy", "mmlu_chem"}
    assert "ood_auroc_maxprob" in saved["metrics"]["mmlu_chem"]
    assert saved["metrics"]["arc_easy"]["ece_scheme"].startswith("top-label")
    assert {"load", "fit", "eval:arc_easy", "eval:mmlu_chem"} <= set(saved["timings"])
    assert saved["environment"]["packages"]["torch"].startswith("2.")
    assert (results / saved["fit"]["dir"] / "artifacts" / "adapter_model.safetensors").is_file()
    assert not list(results.glob(".tmp-*"))


def test_metrics_recomputed_from_predictions_match(done):
    cfg, results, rec = done
    for task, m in rec["metrics"].items():
        rows = [json.loads(line) for line in (results / cfg.run_id / "predictions" / f"{task}.jsonl").open()]
        assert len(rows) == m["n"] == 9  # no example dropped (the last batch is smaller)
        K = max(len(r["probs"]) for r in rows)
        probs = np.array([r["probs"] + [0.0] * (K - len(r["probs"])) for r in rows])
        again = compute_metrics(probs / probs.sum(1, keepdims=True), np.array([r["label"] for r in rows]))
        for key in ("acc", "nll", "ece", "brier"):
            assert again[key] == pytest.approx(m[key], abs=1e-5)


def test_identical_run_is_skipped_and_changed_setting_is_new(done, data_dir):
    cfg, results, rec = done
    again = execute(build_run_config("lora", "arc_easy", FAST, **TINY), results, data_dir=data_dir, device="cpu")
    assert again.get("skipped") and again["metrics"] == rec["metrics"]
    other = build_run_config("lora", "arc_easy", {**FAST, "lr": "1e-3"}, **TINY)
    assert other.run_id != cfg.run_id


def test_seed_makes_run_repeatable(done, data_dir, tmp_path):
    cfg, _, rec = done
    rerun = execute(cfg, tmp_path, data_dir=data_dir, device="cpu")
    assert rerun["metrics"] == rec["metrics"]


BAD = [
    (["--method", "lorra", "--task", "arc_easy"], "did you mean 'lora'"),
    (["--method", "lora", "--task", "arc_easyy"], "did you mean"),
    (["--method", "lora", "--task", "arc_easy", "--model", "smollm-135m"], "did you mean 'smollm2-135m'"),
    (["--method", "lora", "--task", "arc_easy", "--set", "r=0"], "r=0"),
    (["--method", "lora", "--task", "arc_easy", "--set", "lr=-1"], "lr=-1"),
    (["--method", "lora", "--task", "arc_easy", "--set", "weight_decy=0.1"], "did you mean 'weight_decay'"),
    (["--method", "lora", "--task", "arc_easy", "--limit-train", "0"], "--limit-train 0"),
    (["--method", "lora", "--task", "boolq"], "no train split"),
    (["--method", "lora", "--task", "winogrande_m"], "winogrande_m"),
    (["--method", "lora", "--task", "mmlu_chem"], "evaluation-only"),
    (["--method", "lora", "--task", "arc_easy", "--ood", "mmlu_chemistry"], "did you mean"),
    (["--method", "lora", "--task", "arc_easy", "--scoring", "logprob"], "scoring"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[b[1] for b in BAD])
def test_bad_input_one_line_exit_2_nothing_written(args, needle, tmp_path, data_dir):
    results = tmp_path / "results"
    p = cli("run", *args, "--model", "tiny-random-llama", results=results, data_dir=data_dir) \
        if "--model" not in args else cli("run", *args, results=results, data_dir=data_dir)
    assert_bad_input(p, needle, results)


def test_malformed_custom_file(tmp_path, data_dir):
    d = tmp_path / "mine"
    d.mkdir()
    ok = '{"question": "q", "choices": ["a", "b"], "answer": 1}\n'
    (d / "train.jsonl").write_text(ok + '{"question": "q", "choices": ["a"], "answer": 0}\n')
    (d / "test.jsonl").write_text(ok)
    p = cli("run", "--method", "lora", "--task", f"custom:{d}", "--model", "tiny-random-llama",
            results=tmp_path / "r", data_dir=data_dir)
    assert p.returncode == 2 and "train.jsonl:2" in p.stderr and not (tmp_path / "r").exists()


def test_training_on_a_single_custom_file_is_refused(tmp_path, data_dir):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"question": "q", "choices": ["a", "b"], "answer": 1}\n')
    p = cli("run", "--method", "lora", "--task", f"custom:{f}", "--model", "tiny-random-llama",
            results=tmp_path / "r", data_dir=data_dir)
    assert p.returncode == 2 and "evaluation-only" in p.stderr and "directory" in p.stderr
    assert not (tmp_path / "r").exists()


def test_list_commands(tmp_path, data_dir):
    for what, needle in (("methods", "lora"), ("tasks", "mmlu_health"), ("models", "smollm2-135m")):
        p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "list", what], capture_output=True, text=True)
        assert p.returncode == 0 and needle in p.stdout
