"""`benchmark.py bench` on the tiny model with tiny sizes: every comparison runs and writes its figures, and
the optimised and plain computations agree where they compute the same thing. No timing assertions."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bench.common import Context
from bench.settings import BenchSettings
from benchmark import main
from runners.sweep import expand, load_spec

TINY = ["--model", "tiny-random-llama", "--precision", "fp32", "--batch-size", "4", "--train-steps", "2",
        "--score-examples", "8", "--score-check-examples", "4", "--adapter-examples", "8",
        "--laplace-pred-examples", "4", "--tfb-anchor", "8", "--tfb-samples", "3", "--tfb-iterations", "3",
        "--tfb-sigma-max", "1.0", "--samples", "4", "--samples-examples", "4", "--peak-size", "128"]
# Two cells of the quick sweep: lora under its run id, tfb under another id (found by its fields).
QUICK_TIMES = {"lora": {"load": 10.0, "fit": 100.0, "eval:arc_easy": 50.0},
               "tfb": {"load": 1.0, "fit": 20.0, "eval:arc_easy": 30.0}}


def _write_quick_results(results) -> None:
    for cell in expand(load_spec("quick")).cells:
        if cell.cfg.method not in QUICK_TIMES:
            continue
        run_id = cell.run_id if cell.cfg.method == "lora" else cell.run_id + "-old"
        rec = {"run_id": run_id, "status": "done", "config": cell.cfg.to_dict(), "created": "2026-01-01T00:00:00",
               "method": {"n_samples": 1, "posthoc": cell.cfg.method != "lora"}, "scoring": {"mode": "loglik"},
               "metrics": {"arc_easy": {"role": "id", "n": 1}}, "timings": QUICK_TIMES[cell.cfg.method]}
        (results / run_id).mkdir(parents=True)
        (results / run_id / "result.json").write_text(json.dumps(rec))


@pytest.fixture(scope="module")
def doc(tmp_path_factory, data_dir):
    results = tmp_path_factory.mktemp("results")
    _write_quick_results(results)
    out = results / "bench.json"
    assert main(["bench", *TINY, "--data-dir", data_dir, "--results", str(results), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_json_has_every_comparison_with_positive_times(doc):
    assert list(doc["comparisons"]) == ["train", "score", "laplace", "tfb", "samples", "quick", "levers"]
    assert doc["settings"]["model"] == "tiny-random-llama" and doc["peak"]["gflops"] > 0
    for name, rep in doc["comparisons"].items():
        assert "error" not in rep, (name, rep.get("error"))
        assert rep["wall_seconds"] > 0 and rep["tables"] and rep["tables"][0]["rows"], name
        for t in rep["targets"]:
            assert isinstance(t["met"], bool) and math.isfinite(t["value"])
    c = doc["comparisons"]
    assert c["train"]["figures"]["ours_seconds"] > 0 and c["train"]["figures"]["plain_seconds"] > 0
    assert all(c["score"]["figures"][v]["seconds"] > 0 for v in ("loglik packed (ours, default)", "loglik plain"))
    lap = c["laplace"]["figures"]
    assert lap["ours_fit_seconds"] > 0 and lap["laplace_torch_fit_seconds"] > 0
    assert lap["ours_pred_seconds_per_batch"] > 0 and lap["laplace_torch_pred_seconds_per_batch"] > 0
    assert c["tfb"]["figures"]["ours_seconds"] > 0 and c["tfb"]["figures"]["plain_seconds"] > 0
    assert c["samples"]["figures"]["t_1_seconds"] > 0 and c["samples"]["figures"]["t_S_seconds"] > 0


def test_levers_keep_results(doc):
    f = doc["comparisons"]["levers"]["figures"]
    assert f["bf16_cast_linears"] > 0
    # bf16-stored frozen weights: autocast multiplies the same bf16 values, so results are unchanged
    assert f["bf16 frozen Linear weights, bf16 autocast"]["max_abs_logprob_diff_vs_default"] < 1e-6
    assert f["one row per choice, bf16 autocast"]["max_abs_logprob_diff_vs_default"] < 0.05  # bf16 rounding only
    assert f["fp32 weights, fp32 compute"]["max_abs_logprob_diff_vs_default"] < 0.05


def test_train_losses_agree(doc):
    f = doc["comparisons"]["train"]["figures"]
    assert f["step0_loss_abs_diff"] < 1e-4  # the plain loop computes the same loss from the same init
    assert f["plain_layout_tokens"] > f["packed_tokens"] > 0  # packing shares each prompt across its choices


def test_train_work_is_counted_on_the_tokens_each_loop_processes(doc):
    """Issue 13: utilisation counts the work done (real tokens of each layout, padding as overhead), not the
    plain layout's tokens credited to the packed loop."""
    f = doc["comparisons"]["train"]["figures"]
    ours, plain = f["work"]["ours"], f["work"]["plain"]
    assert ours["real_tokens"] == f["packed_tokens"] and plain["real_tokens"] == f["plain_layout_tokens"]
    assert 0 < ours["flops"] < plain["flops"]  # packing really does less work
    assert all(0 <= w["padding_fraction"] < 1 and w["padded_slots"] >= w["real_tokens"] for w in (ours, plain))
    assert f["peak_at_model_shapes"] == max(f["matmul_gflops_at_model_shapes"].values()) > 0


def test_score_class_logprobs_agree_with_plain(doc):
    f = doc["comparisons"]["score"]["figures"]
    for name in ("loglik packed (ours, default)", "loglik per-choice (ours, pack=False)", "label (ours)"):
        assert f[name]["max_abs_diff_fp32"] < 1e-4, name


def test_laplace_posteriors_agree_on_the_same_link(doc):
    f = doc["comparisons"]["laplace"]["figures"]
    assert f["max_abs_map_logit_diff"] < 1e-5  # both see our scorer's logits
    assert f["max_abs_prob_diff_same_link"] < 1e-2  # padded batches: laplace-torch's KFAC also sees pad tokens
    assert 0 < f["max_abs_prob_diff"] < 0.1  # the two probit links differ by design


def test_laplace_matches_laplace_torch_without_padding(tmp_path, data_dir):
    """One question per batch: no padding, so both KFAC posteriors are the same and so are the predictives."""
    from bench import laplace_torch

    s = BenchSettings(model="tiny-random-llama", precision="fp32", data_dir=data_dir, batch_size=1,
                      adapter_examples=6, laplace_pred_examples=2, peak_size=64)
    f = laplace_torch.run(Context(s, workdir=tmp_path))["figures"]
    assert "laplace_torch_error" not in f
    assert f["max_abs_prob_diff_same_link"] < 1e-5
    lo, _, hi = f["var_diff_ratio_ours_over_lt"]
    assert 0.999 < lo <= hi < 1.001


def test_tfb_sigmas_are_in_bounds_and_satisfy_the_constraint(doc):
    f = doc["comparisons"]["tfb"]["figures"]
    for who in ("ours", "plain"):
        assert 1e-4 <= f[f"{who}_sigma"] <= 1.0
        assert f[f"{who}_degradation_in_search"] is not None and f[f"{who}_degradation_in_search"] <= f["epsilon"]
        assert f[f"{who}_satisfies"] and math.isfinite(f[f"{who}_degradation_recheck"])
    assert f["ours_evaluations"] >= 2 and f["plain_evaluations"] == 3


def test_plain_tfb_degradation_is_zero_without_noise(tmp_path, data_dir):
    from bench.tfb import PlainTFB
    from methods.registry import get_method
    from methods.settings import make_config

    ctx = Context(BenchSettings(model="tiny-random-llama", precision="fp32", data_dir=data_dir, batch_size=4,
                                adapter_examples=4), workdir=tmp_path)
    adapter, _ = ctx.adapter()
    cfg = make_config(get_method("tfb").Config, {"anchor_size": 4, "anchor_samples": 2})
    plain = PlainTFB(ctx, adapter, ctx.fit_examples(), cfg)
    assert plain.degradation(0.0, torch.Generator().manual_seed(0)) == pytest.approx(0.0, abs=1e-6)


def test_samples_ratio_and_spread(doc):
    f = doc["comparisons"]["samples"]["figures"]
    assert f["ratio"] > 0 and f["S"] == 4 and f["max_prob_std_over_samples"] > 0  # the samples differ


def test_quick_totals_from_result_files(doc):
    f = doc["comparisons"]["quick"]["figures"]
    lora, tfb = (sum(QUICK_TIMES[m].values()) for m in ("lora", "tfb"))
    assert f["found"] == 2 and not f["complete"]
    assert f["total_seconds"] == pytest.approx(lora + tfb)
    assert f["methods"]["tfb"]["found_by"] == "fields" and f["methods"]["lora"]["found_by"] == "run id"
    assert f["methods"]["tfb"]["total_vs_lora"] == pytest.approx(tfb / lora)
    assert f["methods"]["tfb"]["fit_vs_lora"] == pytest.approx(20 / 100)
    assert doc["comparisons"]["quick"]["targets"][0]["met"] is False  # incomplete: never met


def test_unknown_comparison_is_bad_input(capsys):
    assert main(["bench", "--only", "train,nope"]) == 2
    assert "nope" in capsys.readouterr().err
