"""Tests for metrics/: against torchmetrics / torch / scipy references and hand-computed cases."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassCalibrationError

from metrics import (
    ECE_SCHEME, aurc, compute_metrics, nll_sum_count, ood_auroc, ood_scores, predictive_probs,
    reliability, validate_inputs,
)


def random_case(n, k, alpha, seed):
    """Dirichlet probs; labels = top class 60% of the time, else uniform (so ECE is far from 0)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, alpha), size=n)
    y = np.where(rng.random(n) < 0.6, p.argmax(1), rng.integers(0, k, n))
    return p, y


CASES = [(n, k, a) for n, k in [(1, 2), (7, 3), (200, 2), (500, 5), (5000, 10), (3000, 50)] for a in (0.5, 1.0)]


# ---------------------------------------------------------------- references
@pytest.mark.parametrize("n,k,alpha", CASES)
def test_against_references(n, k, alpha):
    p, y = random_case(n, k, alpha, seed=n * 100 + k)
    m = compute_metrics(p, y)
    tp, ty = torch.from_numpy(p), torch.from_numpy(y)
    for norm, key in [("l1", "ece"), ("max", "mce")]:
        ref = MulticlassCalibrationError(num_classes=k, n_bins=15, norm=norm)(tp, ty).item()
        assert m[key] == pytest.approx(ref, abs=1e-6), key
    assert m["acc"] == pytest.approx(MulticlassAccuracy(num_classes=k, average="micro")(tp, ty).item(), abs=1e-6)  # float32 result
    assert m["nll"] == pytest.approx(F.nll_loss(torch.log(tp), ty).item(), rel=1e-12)
    brier = ((tp - F.one_hot(ty, k).double()) ** 2).sum(1).mean().item()
    assert m["brier"] == pytest.approx(brier, rel=1e-12)
    correct = p.argmax(1) == y
    if 0 < correct.sum() < n:
        conf = torch.from_numpy(p.max(1))
        assert m["auroc"] == pytest.approx(BinaryAUROC()(conf, torch.from_numpy(correct).long()).item(), abs=1e-6)
    assert m["mean_conf"] == pytest.approx(p.max(1).mean(), rel=1e-12)
    assert m["n"] == n and m["n_bins"] == 15 and m["ece_scheme"] == ECE_SCHEME


def test_auroc_with_ties_vs_torchmetrics_and_scipy():
    p, y = random_case(400, 4, 1.0, seed=3)
    p = np.round(p, 1)  # many tied confidences, and many argmax ties (first max wins)
    p = p / p.sum(1, keepdims=True)
    m = compute_metrics(p, y)
    conf, correct = p.max(1), p.argmax(1) == y
    tm = BinaryAUROC()(torch.from_numpy(conf), torch.from_numpy(correct).long()).item()
    u = mannwhitneyu(conf[correct], conf[~correct]).statistic / (correct.sum() * (~correct).sum())
    assert m["auroc"] == pytest.approx(tm, abs=1e-6)
    assert m["auroc"] == pytest.approx(u, abs=1e-12)
    assert m["acc"] == pytest.approx(correct.mean())


def test_ood_auroc_and_scores():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    lab = torch.cat([torch.ones(300), torch.zeros(200)]).long()
    ref = BinaryAUROC()(torch.sigmoid(torch.from_numpy(np.r_[a, b])), lab).item()  # sigmoid: monotone, keeps AUROC
    assert ood_auroc(a, b) == pytest.approx(ref, abs=1e-6)
    assert ood_auroc([1.0, 2.0], [0.0]) == 1.0 and ood_auroc([0.0], [1.0, 2.0]) == 0.0
    assert ood_auroc([1.0, 1.0], [1.0]) == 0.5
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    s = ood_scores(p)
    assert s["max_prob"].tolist() == [1.0, 0.5]
    assert s["neg_entropy"] == pytest.approx([0.0, -(0.5 * math.log(2) + 0.5 * math.log(4))])
    with pytest.raises(ValueError):
        ood_auroc([], [1.0])


# ---------------------------------------------------------------- hand cases
def test_k2_hand_ece_and_inner_boundary():
    # conf 0.6 is exactly edge 9/15 and goes to bin 9 = [0.6, 0.667) (left-closed, as torchmetrics).
    p = np.array([[0.6, 0.4], [0.38, 0.62], [0.59, 0.41]])
    y = np.array([0, 1, 1])  # correct, correct, wrong
    m = compute_metrics(p, y)
    # bin 9: {0.6 ok, 0.62 ok} |2 - 1.22| ; bin 8: {0.59 wrong} |0 - 0.59|
    assert m["ece"] == pytest.approx((0.78 + 0.59) / 3, abs=1e-12)  # right-closed bins would give 0.57/3
    assert m["mce"] == pytest.approx(0.59, abs=1e-12)
    r = reliability(p, y)
    assert r["count"][9] == 2 and r["count"][8] == 1 and sum(r["count"]) == 3
    assert r["accuracy"][9] == 1.0 and r["mean_confidence"][9] == pytest.approx(0.61)
    assert r["lower"][9] == 0.6 and r["upper"][14] == 1.0


def test_inner_boundary_matches_torchmetrics():
    # 4 bins: edges 0.5 and 0.75 are exact in float32 too, so torchmetrics' convention is testable exactly.
    p = np.array([[0.75, 0.25], [0.8, 0.2], [0.3, 0.7]])
    y = np.array([0, 0, 0])  # 0.75 ok, 0.8 ok, 0.7 wrong
    hand = (abs(2 - 1.55) + 0.7) / 3  # 0.75 in bin [0.75, 1]; right-closed would give 0.65/3
    assert compute_metrics(p, y, n_bins=4)["ece"] == pytest.approx(hand, abs=1e-12)
    tm = MulticlassCalibrationError(num_classes=2, n_bins=4)(torch.from_numpy(p), torch.from_numpy(y)).item()
    assert tm == pytest.approx(hand, abs=1e-6)


def test_all_correct_confidence_exactly_one():
    y = np.array([0, 2, 1, 2])
    p = np.eye(3)[y]
    m = compute_metrics(p, y)
    assert (m["acc"], m["ece"], m["mce"], m["nll"], m["brier"], m["aurc"]) == (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert m["auroc"] == 0.5  # convention: no incorrect predictions
    r = reliability(p, y)
    assert r["count"] == [0] * 14 + [4]  # 1.0 lands in the last bin, not an overflow bin
    assert r["accuracy"][14] == 1.0 and r["mean_confidence"][14] == 1.0 and r["accuracy"][0] is None


def test_all_wrong_confident_and_nll_clamp():
    y = np.array([0, 1, 2])
    p = np.eye(3)[[1, 2, 0]]  # p_y = 0 everywhere
    m = compute_metrics(p, y)
    assert m["acc"] == 0.0 and m["ece"] == 1.0 and m["mce"] == 1.0 and m["brier"] == 2.0
    assert m["nll"] == pytest.approx(-math.log(1e-12)) and math.isfinite(m["nll"])
    assert m["auroc"] == 0.5 and m["aurc"] == 1.0
    assert reliability(p, y)["count"][14] == 3
    # mixed: one example with p_y = 0 contributes -log(1e-12), others their own -log p_y
    p2 = np.array([[1.0, 0.0], [0.25, 0.75]])
    assert compute_metrics(p2, [1, 1])["nll"] == pytest.approx((-math.log(1e-12) - math.log(0.75)) / 2)


def test_confidence_one_shares_last_bin_documented_divergence():
    # 1.0 (wrong) and 0.95 (right) share the last bin here: |1 - 1.95| / 2 = 0.475.
    # torchmetrics puts 1.0 in an extra [1, 1] bin: (|1 - 0.95| + |0 - 1|) / 2 = 0.525.
    p, y = np.array([[1.0, 0.0], [0.95, 0.05]]), np.array([1, 0])
    assert compute_metrics(p, y)["ece"] == pytest.approx(0.475, abs=1e-12)
    tm = MulticlassCalibrationError(num_classes=2, n_bins=15)(torch.from_numpy(p), torch.from_numpy(y)).item()
    assert tm == pytest.approx(0.525, abs=1e-6)


def test_argmax_ties_use_first_max():
    p = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]])
    m = compute_metrics(p, [0, 1])  # prediction is class 0 for both
    assert m["acc"] == 0.5
    assert m["ece"] == pytest.approx(abs(0.5 - 0.4))  # both in bin 6 = [0.4, 0.467)
    assert reliability(p, [0, 1])["count"][6] == 2


def test_aurc_hand_and_ties():
    conf, correct = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])
    assert aurc(conf, correct) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert aurc(conf[::-1], correct[::-1]) == pytest.approx(aurc(conf, correct))
    # tied confidences: equals the average over all orderings of the tied examples
    conf, correct = np.array([0.9, 0.7, 0.7, 0.7, 0.5]), np.array([1, 1, 0, 0, 1])
    brute = []
    for perm in itertools.permutations([1, 0, 0]):
        c = np.array([1, *perm, 1], float)
        brute.append(np.mean(np.cumsum(1 - c) / np.arange(1, 6)))
    assert aurc(conf, correct) == pytest.approx(np.mean(brute), abs=1e-12)
    assert compute_metrics(np.c_[conf, 1 - conf], 1 - correct)["aurc"] == pytest.approx(np.mean(brute))


def test_aurc_vs_loop_random():
    p, y = random_case(300, 5, 1.0, seed=11)
    conf, err = p.max(1), (p.argmax(1) != y)
    order = np.argsort(-conf)
    ref = np.mean([err[order[:k]].mean() for k in range(1, 301)])
    assert compute_metrics(p, y)["aurc"] == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------- predictive_probs
def test_predictive_averages_probabilities_not_logits():
    probs = torch.tensor([[[0.98, 0.01, 0.01], [1e-4, 0.5, 0.4999]]], dtype=torch.float64)  # [1, S=2, 3]
    out = predictive_probs(torch.log(probs))
    assert out == pytest.approx(np.array([[0.49005, 0.255, 0.25495]]), abs=1e-12)
    logit_avg = torch.softmax(torch.log(probs).mean(1), -1).numpy()
    assert out.argmax() == 0 and logit_avg.argmax() == 1  # averaging logits flips the prediction


def test_predictive_single_sample_is_softmax_and_stable():
    logits = torch.randn(6, 1, 4, generator=torch.Generator().manual_seed(0)) * 30
    out = predictive_probs(torch.log_softmax(logits, -1))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, torch.softmax(logits[:, 0].double(), -1).numpy(), atol=1e-6)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-15)
    # random S, numpy input, probability-zero classes (-inf), very negative values
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=(8, 10))
    p[:, :, 4] = 0.0
    p /= p.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        out = predictive_probs(np.log(p))
    np.testing.assert_allclose(out, p.mean(1), atol=1e-14)
    assert (out[:, 4] == 0).all()
    with pytest.raises(ValueError, match="not logits"):
        predictive_probs(logits * 1.0 + 5.0)
    with pytest.raises(ValueError, match=r"\[N, S, K\]"):
        predictive_probs(np.zeros((3, 4)))


# ---------------------------------------------------------------- NLL aggregation
def test_nll_sums_and_counts_over_uneven_batches():
    p, y = random_case(1000, 4, 1.0, seed=5)
    loop = np.mean([-math.log(max(p[i, y[i]], 1e-12)) for i in range(1000)])
    assert compute_metrics(p, y)["nll"] == pytest.approx(loop, rel=1e-12)
    cuts = [0, 3, 50, 420, 1000]
    parts = [nll_sum_count(p[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    combined = sum(s for s, _ in parts) / sum(c for _, c in parts)
    assert combined == pytest.approx(loop, rel=1e-12)
    mean_of_means = np.mean([s / c for s, c in parts])  # the trap: weights a 3-example batch like 580
    assert abs(mean_of_means - loop) > 1e-3


# ---------------------------------------------------------------- validation / output types
@pytest.mark.parametrize("probs,labels,msg", [
    (np.array([0.2, 0.3, 0.5]), None, r"probs has shape \(3,\) but must be \[N, K\]"),
    (np.zeros((0, 3)), None, "no rows"),
    (np.ones((2, 1)), None, "K=1"),
    (np.array([[0.5, 0.6]]), None, "rows do not sum to 1 \\(max deviation 0.1"),
    (np.array([[np.nan, 1.0]]), None, "non-finite"),
    (np.array([[1.5, -0.5]]), None, "out of range"),
    (np.array([[0.5, 0.5]]), np.array([2]), "labels out of range"),
    (np.array([[0.5, 0.5]]), np.array([-1]), "labels out of range"),
    (np.array([[0.5, 0.5]]), np.array([0.0]), "integer"),
    (np.array([[0.5, 0.5]]), np.array([0, 1]), "must be \\[N\\] with N=1"),
])
def test_validate_inputs_errors(probs, labels, msg):
    with pytest.raises(ValueError, match=msg) as e:
        validate_inputs(probs, labels)
    assert "\n" not in str(e.value)


def test_validate_accepts_float32_torch_and_outputs_are_plain_json():
    p = torch.softmax(torch.randn(50, 7, generator=torch.Generator().manual_seed(2)), -1)  # float32
    y = torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(3))
    pp, yy = validate_inputs(p, y)
    assert pp.dtype == np.float64 and yy.dtype == np.int64
    m = compute_metrics(p, y)
    assert all(type(v) in (int, float, str) for v in m.values())
    r = reliability(p, y, n_bins=10)
    json.dumps(m, allow_nan=False)
    json.dumps(r, allow_nan=False)
    assert len(r["count"]) == 10 and sum(r["count"]) == 50
    # ECE recomputed from the reliability table agrees
    ece = sum(c * abs(a - mc) for c, a, mc in zip(r["count"], r["accuracy"], r["mean_confidence"]) if c) / 50
    assert compute_metrics(p, y, n_bins=10)["ece"] == pytest.approx(ece, abs=1e-12)
    with pytest.raises(ValueError, match="n_bins"):
        compute_metrics(p, y, n_bins=0)
