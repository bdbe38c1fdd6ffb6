"""Issue 11: the posterior parameters learn, the likelihood gradient is not clipped away by the KL, and every
evaluation records diagnostics that expose a collapsed or uniform posterior."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.base import ConfigError
from methods.registry import get_method
from methods.settings import make_config
from methods.shared.training import train_classifier
from metrics import COLLAPSE_TV, posterior_diagnostics
from runners.config import build_run_config
from runners.run import execute
from tasks import load_split
from tests.helpers import build, tiny


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the shared loop ------------------------------------------------------------------------------
def _lora(data_dir, steps: int, **settings):
    bb, scorer = tiny()
    cls = get_method("lora")
    method = cls(make_config(cls.Config, {"max_steps": steps, "batch_size": 4, "lr": 1e-2, **settings}), bb, scorer, 0)
    method._wrap()
    train = load_split("arc_easy", "train", data_dir=data_dir, limit=8)
    return method, [p for p in method.model.parameters() if p.requires_grad], train


def test_a_huge_kl_gradient_does_not_shrink_the_likelihood_gradient(data_dir):
    """The clip sees the likelihood alone: its pre-clip norm is the same with and without a KL whose gradient
    is 1e6 times larger, and the KL's own gradient norm is recorded apart from it."""
    runs = {}
    for with_kl in (False, True):
        method, params, train = _lora(data_dir, 1)
        extra = (lambda step, bs: 1e6 * sum(p.pow(2).sum() for p in params)) if with_kl else None
        runs[with_kl] = train_classifier(method.model, params, method, train, method.config, 0, extra)["epochs"][0]
    assert runs[True]["lik_grad_norm"] == pytest.approx(runs[False]["lik_grad_norm"], rel=1e-5)
    assert runs[True]["extra_grad_norm"] > 1e3 * runs[True]["lik_grad_norm"]
    assert runs[False]["extra"] is None and runs[True]["extra"] > 0


def test_epochs_record_likelihood_and_kl_separately(data_dir):
    method, params, train = _lora(data_dir, 5)  # 8 examples, batch 4: epochs of 2, 2 and 1 steps
    stats = train_classifier(method.model, params, method, train, method.config, 0,
                             lambda step, bs: torch.tensor(0.25))
    assert [e["steps"] for e in stats["epochs"]] == [2, 2, 1]
    assert all(e["extra"] == pytest.approx(0.25) and e["nll"] > 0 for e in stats["epochs"])


# ---- the posterior parameters move -------------------------------------------------------------
def test_blob_omega_moves_from_its_init(data_dir, tmp_path):
    blob = build("blob", data_dir, tmp_path, extra={"epochs": 2})
    post = blob.fitted["posterior"]
    assert post["omega_ratio_to_init"] > 1.5, post  # the KL pulls Omega toward the prior's 0.2
    assert post["omega_mean"] < blob.config.beta
    rho = {id(m.rho) for _, m in blob.bayes}  # rho is stepped by the KL optimiser only (the reference's opt2)
    assert rho and blob.fitted["epochs"][0]["extra_grad_norm"] > 0


def test_bayesian_lora_scales_move_from_their_init(data_dir, tmp_path):
    m = build("bayesian_lora", data_dir, tmp_path, extra={"epochs": 2})
    post = m.fitted["posterior"]
    assert post["lambda_mean_ratio_to_init"] > 1.05, post
    assert abs(post["u_sd_mean_ratio_to_init"] - 1) > 0.05, post


def test_bayesian_lora_scale_lr_zero_is_the_old_single_rate(data_dir, tmp_path):
    slow = build("bayesian_lora", data_dir, tmp_path, extra={"epochs": 2, "scale_lr": 0.0})
    fast = build("bayesian_lora", data_dir, tmp_path, extra={"epochs": 2})
    assert (fast.fitted["posterior"]["lambda_mean_ratio_to_init"]
            > slow.fitted["posterior"]["lambda_mean_ratio_to_init"])


# ---- TFB variants -------------------------------------------------------------------------------
def test_tfb_variants_fill_only_what_is_not_set():
    cls = get_method("tfb").Config
    ref = make_config(cls, {})
    assert (ref.variant, ref.anchor_labels, ref.relative, ref.sigma_min, ref.sigma_max, ref.iterations,
            ref.epsilon) == ("reference", "pred", "reference", 1e-3, 0.015, 5, 0.003)
    paper = make_config(cls, {"variant": "paper", "iterations": "3"})
    assert (paper.anchor_labels, paper.relative, paper.iterations, paper.sigma_max) == ("true", "true", 3, 0.1)
    assert make_config(cls, {"variant": "flip"}).criterion == "flip"
    with pytest.raises(ConfigError, match="variant"):
        make_config(cls, {"variant": "papr"})


# ---- diagnostics --------------------------------------------------------------------------------
def test_diagnostics_of_identical_samples_equal_to_the_point_are_collapsed():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    logp = np.log(np.repeat(p[:, None], 4, 1))
    d = posterior_diagnostics(logp, p)
    assert d["mutual_information"] == pytest.approx(0, abs=1e-12) and d["sample_spread"] == pytest.approx(0)
    assert d["agreement_with_point"] == 1 and d["tv_to_point"] < COLLAPSE_TV and d["flags"] == ["collapsed"]


def test_diagnostics_of_disagreeing_samples_have_mutual_information_and_no_flag():
    logp = np.log(np.array([[[0.9, 0.1], [0.1, 0.9]], [[0.8, 0.2], [0.6, 0.4]]]))
    point = np.array([[0.9, 0.1], [0.9, 0.1]])
    d = posterior_diagnostics(logp, point)
    h = lambda q: -(q * np.log(q)).sum()  # noqa: E731
    want_mi = np.mean([h(np.array([0.5, 0.5])) - (h(np.array([0.9, 0.1])) + h(np.array([0.1, 0.9]))) / 2,
                       h(np.array([0.7, 0.3])) - (h(np.array([0.8, 0.2])) + h(np.array([0.6, 0.4]))) / 2])
    assert d["mutual_information"] == pytest.approx(want_mi)
    assert d["tv_to_point"] == pytest.approx((0.4 + 0.2) / 2) and d["flags"] == []


def test_near_uniform_predictive_is_flagged_per_number_of_choices():
    logp = np.log(np.array([[[0.26, 0.25, 0.25, 0.24]], [[0.52, 0.48, 0, 0]]]) + 1e-300)
    logp[1, 0, 2:] = -np.inf  # a 2-choice example among 4-choice ones
    d = posterior_diagnostics(logp)
    assert d["confidence_above_uniform"] == pytest.approx((0.01 + 0.02) / 2) and "uniform" in d["flags"]
    assert "agreement_with_point" not in d


def test_run_records_diagnostics_and_posterior_scales(tmp_path, data_dir):
    kw = dict(model="tiny-random-llama", limit_train=8, limit_eval=6, precision="fp32")
    rec = execute(build_run_config("blob", "arc_easy", {"epochs": "1", "batch_size": "4"}, **kw), tmp_path,
                  data_dir=data_dir, device="cpu")
    d = rec["metrics"]["arc_easy"]["diagnostics"]
    assert d["samples"] == 10 and 0 <= d["agreement_with_point"] <= 1 and d["mutual_information"] >= 0
    assert "omega_mean_init" in rec["method"]["fitted"]["posterior"]
    lora = execute(build_run_config("lora", "arc_easy", {"epochs": "1", "batch_size": "4"}, **kw), tmp_path,
                   data_dir=data_dir, device="cpu")
    assert "agreement_with_point" not in lora["metrics"]["arc_easy"]["diagnostics"]  # lora is its own point
