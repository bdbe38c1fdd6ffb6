"""laplace_lora against independent computations on the tiny model with an r=2 adapter.

The reference quantities come from torch.autograd.functional.jacobian over the LoRA weights (not the
hooks), dense Kronecker products and matrix inverses: what the method computes in eigenbases and per
layer, written out the slow, obvious way.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from methods.base import ConfigError, FitData
from methods.laplace_lora.factors import FullFactor, LowRankFactor
from methods.laplace_lora.hooks import Capture, row_examples
from methods.laplace_lora.posterior import KronLayer
from methods.laplace_lora.predictive import glm_logits, mc_logprobs, probit_logprobs
from methods.laplace_lora import LaplaceLoRA
from methods.registry import load_fit
from methods.lora import LoRA
from methods.settings import make_config
from runners.evaluate import predict
from tasks import load_split
from tests.helpers import tiny


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An r=2 LoRA adapter on q_proj/v_proj with random (nonzero) A and B, so every gradient is nonzero."""
    from peft import LoraConfig, get_peft_model
    bb, _ = tiny()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(bb.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.3)
    d = tmp_path_factory.mktemp("adapter_r2")
    model.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def data(data_dir):
    return (load_split("arc_easy", "train", data_dir=data_dir, limit=6),
            load_split("arc_easy", "validation", data_dir=data_dir, limit=4),
            load_split("arc_easy", "test", data_dir=data_dir, limit=3))


def fit(adapter, data, tmp_path, mode="label", **settings):
    bb, scorer = tiny(mode)
    cfg = make_config(LaplaceLoRA.Config, {"batch_size": 4, "prior_grid_size": 5, **settings})
    method = LaplaceLoRA(cfg, bb, scorer, seed=0)
    method.fit(FitData(train=data[0], validation=data[1], workdir=tmp_path, base=load_fit("lora", adapter, bb, scorer)))
    return method


def autograd_jacobian(method, batch) -> dict[str, torch.Tensor]:
    """{layer: [B, K, out, in]} d class logits / d LoRA weight, by torch.autograd.functional.jacobian."""
    names = [n for n, _ in method.layers]
    weights = tuple(m.weight.detach().clone() for _, m in method.layers)

    class Functional:  # the model with its LoRA weights replaced by the differentiated arguments
        config = method.model.config

        def __init__(self, params):
            self.params = params

        def __call__(self, **kw):
            return functional_call(method.model, self.params, kwargs=kw)

    def logits(*ws):
        call = Functional({f"{n}.weight": w for n, w in zip(names, ws)})
        return method.scorer.class_logits(call, batch).masked_fill(~batch.choice_mask, 0.0)

    jac = torch.autograd.functional.jacobian(logits, weights)
    return dict(zip(names, jac))


def hook_jacobian(method, batch) -> dict[str, torch.Tensor]:
    from methods.laplace_lora.hooks import per_example_grads
    out = {n: [] for n, _ in method.layers}
    rows = row_examples(batch)
    with Capture(method.layers) as cap, torch.enable_grad():
        cap.on_grad = lambda n, a, g: out[n].append(per_example_grads(a, g, rows, batch.size))
        logits = method.scorer.class_logits(method.model, batch)
        for k in range(logits.shape[1]):
            v = torch.zeros_like(logits)
            v[:, k] = batch.choice_mask[:, k].float()
            cap.backward(logits, v)
    return {n: torch.stack(v, 1) for n, v in out.items()}


@pytest.mark.parametrize("mode", ["label", "loglik"])  # loglik: several rows (choices) per example
def test_hook_jacobian_matches_autograd(adapter, data, tmp_path, mode):
    method = fit(adapter, data, tmp_path, mode=mode, prior_method="fixed")
    batch = method.scorer.encode(data[2])
    ref, got = autograd_jacobian(method, batch), hook_jacobian(method, batch)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=1e-5, rtol=1e-4)


def dense_layer(layer: KronLayer):
    """H = G (x) A (row-major vec of W [out, in]) written out densely from the stored eigenbases."""
    A = layer.qa.double() @ torch.diag(layer.ea.double()) @ layer.qa.double().T
    G = layer.qg.double() @ torch.diag(layer.eg.double()) @ layer.qg.double().T
    return torch.kron(G, A)


@pytest.mark.parametrize("full_max,n_kfac", [(10_000, 10), (1, 3)])  # full factors; rank-3 factors
def test_glm_variance_and_logdet_match_dense(adapter, data, tmp_path, full_max, n_kfac):
    lam = 0.7
    method = fit(adapter, data, tmp_path, prior_method="fixed", prior_precision=lam,
                 kfac_full_max=full_max, n_kfac=n_kfac)
    assert all(p.complete == (full_max > 1) for p in method.posterior.values())
    batch = method.scorer.encode(data[2])
    mean, cov = glm_logits(method.model, method.scorer, method.backbone, method.layers, method.posterior, batch,
                           torch.tensor([lam]))
    J = autograd_jacobian(method, batch)
    K = mean.shape[1]
    # glm_logits gives the covariance of f - f_0 (the softmax only sees differences): C f, C = rows e_k - e_0
    C = torch.eye(K, dtype=torch.float64) - torch.eye(K, dtype=torch.float64)[:1]
    C = C * batch.choice_mask.double()[:, :, None]  # absent choices: zero rows
    ref = torch.zeros(batch.size, K, K, dtype=torch.float64)
    for n, layer in method.posterior.items():
        H = dense_layer(layer)
        P = H + lam * torch.eye(H.shape[0], dtype=torch.float64)
        Jn = C @ J[n].flatten(2).double()  # [B, K, out*in]
        ref += Jn @ torch.linalg.inv(P) @ Jn.transpose(1, 2)
        torch.testing.assert_close(layer.logdet(torch.tensor([lam]))[0], torch.logdet(P), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cov[0].double(), ref, rtol=1e-4, atol=1e-6)


def test_diag_is_the_exact_ggn_diagonal(adapter, data, tmp_path):
    """diag(sum_n J_n^T (diag(p) - p p^T) J_n), from autograd Jacobians and the explicit softmax Hessian."""
    method = fit(adapter, data, tmp_path, prior_method="fixed", hessian_structure="diag")
    batch = method.scorer.encode(data[0])
    J = autograd_jacobian(method, batch)
    with torch.no_grad():
        p = method.scorer.class_logits(method.model, batch).softmax(-1).double()
    lam_hess = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    for n, layer in method.posterior.items():
        Jn = J[n].flatten(2).double()
        h = torch.einsum("bkp,bkl,blp->p", Jn, lam_hess, Jn)
        torch.testing.assert_close(layer.h.double().flatten(), h, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_kron_factors_match_direct_computation(adapter, data, tmp_path, approx):
    """A and G from plain forward hooks + torch.autograd.grad w.r.t. the LoRA outputs, with explicit loops."""
    method = fit(adapter, data, tmp_path, mode="loglik", prior_method="fixed", kfac_approx=approx,
                 kfac_full_max=10_000, batch_size=6)
    batch = method.scorer.encode(data[0])
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: seen.__setitem__(n, (a[0], o))) for n, m in method.layers]
    with torch.enable_grad():
        for _, m in method.layers:
            m.weight.requires_grad_(True)
        logits = method.scorer.class_logits(method.model, batch)
    for h in hooks:
        h.remove()
    p = logits.detach().softmax(-1)
    mask, rows = batch.attention_mask.bool(), row_examples(batch)
    for n, layer in method.posterior.items():
        a, y = seen[n]
        A = torch.zeros(a.shape[-1], a.shape[-1], dtype=torch.float64)
        G = torch.zeros(y.shape[-1], y.shape[-1], dtype=torch.float64)
        if approx == "expand":
            for r in range(a.shape[0]):
                A += a[r][mask[r]].detach().double().T @ a[r][mask[r]].detach().double()
            A /= mask.sum()
        else:
            for b in range(batch.size):
                ab = torch.cat([a[r][mask[r]] for r in range(a.shape[0]) if rows[r] == b]).detach().double()
                A += torch.outer(ab.mean(0), ab.mean(0)) / batch.size
        for k in range(logits.shape[1]):
            c = p[:, k:k + 1].sqrt() * (torch.eye(logits.shape[1])[k] - p)
            (g,) = torch.autograd.grad(logits, y, c, retain_graph=True)
            if approx == "expand":
                G += g[mask].double().T @ g[mask].double()
            else:
                for b in range(batch.size):
                    gb = g[rows == b].sum((0, 1)).double()
                    G += torch.outer(gb, gb)
        torch.testing.assert_close(dense_layer(layer), torch.kron(G, A), rtol=1e-4, atol=1e-8)


def test_low_rank_factor_accumulation():
    torch.manual_seed(0)
    d = 30
    spectrum = torch.tensor([10.0, 7, 5, 3, 2] + [0.05] * (d - 5))
    basis = torch.linalg.qr(torch.randn(d, d))[0]
    X = torch.randn(400, d) * spectrum @ basis.T
    full, exact, small = FullFactor(d), LowRankFactor(d, rank=d), LowRankFactor(d, rank=5)
    for i in range(0, len(X), 16):  # batches, as in a training pass
        for f in (full, exact, small):
            f.update(X[i:i + 16])
    torch.testing.assert_close(full.sum, X.double().T @ X.double(), rtol=1e-9, atol=1e-9)
    qe, ee = exact.eig()  # rank >= d: L L^T is the full factor
    torch.testing.assert_close((qe * ee) @ qe.T, full.sum.float(), rtol=1e-4, atol=1e-2)
    qf, ef = full.eig()
    qs, es = small.eig()
    top = torch.argsort(ef, descending=True)[:5]
    torch.testing.assert_close(es, ef[top], rtol=1e-3, atol=0)
    overlap = torch.linalg.svdvals(qs.T @ qf[:, top])  # cosines of the principal angles
    assert overlap.min() > 0.999


@pytest.mark.parametrize("complete", [True, False])
def test_posterior_samples_have_the_posterior_covariance(complete):
    """KronLayer.sample (the nn predictive) draws from (G (x) A + lam I)^-1, low-rank remainder included."""
    torch.manual_seed(0)
    out, inp, lam = 3, 5, 0.5
    qa = torch.linalg.qr(torch.randn(inp, inp))[0][:, : inp if complete else 2]
    qg = torch.linalg.qr(torch.randn(out, out))[0][:, : out if complete else 2]
    layer = KronLayer((out, inp), qa, torch.rand(qa.shape[1]) * 4, qg, torch.rand(qg.shape[1]) * 4)
    gen = torch.Generator().manual_seed(0)
    s = torch.stack([layer.sample(lam, gen).flatten() for _ in range(40_000)]).double()
    sigma = torch.linalg.inv(dense_layer(layer) + lam * torch.eye(out * inp, dtype=torch.float64))
    torch.testing.assert_close(s.T @ s / len(s), sigma, atol=0.06, rtol=0)


def test_infinite_prior_precision_gives_the_map(adapter, data, tmp_path):
    bb, scorer = tiny("label")
    lora = LoRA(make_config(LoRA.Config, {}), bb, scorer, 0)
    lora.load(adapter)
    ref = predict(lora, data[2], 1, 3, seed=0)
    for extra in ({}, {"link": "mc"}, {"predictive": "nn", "nn_samples": 2}):
        method = fit(adapter, data, tmp_path, prior_method="fixed", prior_precision=1e12, **extra)
        np.testing.assert_allclose(predict(method, data[2], 1, 3, seed=0), ref, atol=1e-4)


@pytest.mark.parametrize("settings", [
    {"hessian_structure": "kron"}, {"hessian_structure": "diag"},
    {"hessian_structure": "diag", "predictive": "nn", "nn_samples": 2},
    {"subset": "last_layer", "prior_method": "val_nll", "link": "mc", "mc_samples": 20},
    {"kfac_full_max": 1, "n_kfac": 3, "kfac_approx": "expand", "prior_method": "val_nll"},
])
def test_variants_fit_and_predict(adapter, data, tmp_path, settings):
    method = fit(adapter, data, tmp_path, **settings)
    f = method.fitted
    assert f["prior_precision"] > 0 and f["n_examples"] == len(data[0]) and f["kfac_seconds"] >= 0
    assert len(f["prior_grid"]) == len(f["prior_curve"]) == 5
    if settings.get("subset") == "last_layer":  # tiny has 2 blocks: only block 1 carries a posterior
        assert method.layers and all(".layers.1." in n for n, _ in method.layers)
    logp = predict(method, data[2], 1, 3, seed=0)
    probs = np.exp(logp).sum(1)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_marglik_choice_is_the_curve_maximum(adapter, data, tmp_path):
    from methods.laplace_lora.prior import log_marglik
    method = fit(adapter, data, tmp_path, prior_grid_size=9, prior_method="marglik")
    lam, f = method.prior_precision, method.fitted
    best = max(f["prior_curve"])
    assert f["log_marglik"] >= best - 1e-9  # refinement never loses to the grid
    theta_sq = float(sum(m.weight.detach().double().pow(2).sum() for _, m in method.layers))
    for eps in (0.95, 1.05):  # a local maximum in lam
        assert float(log_marglik(method.posterior, theta_sq, f["train_loglik_map"], torch.tensor([lam * eps]))[0]) \
            <= f["log_marglik"] + 1e-9


def test_probit_link_properties():
    torch.manual_seed(0)
    mean, mask = torch.randn(5, 3), torch.ones(5, 3, dtype=torch.bool)
    L = torch.randn(5, 3, 3)
    cov = L @ L.transpose(1, 2)
    # invariant to a common shift of the logits, as the softmax is
    torch.testing.assert_close(probit_logprobs(mean - 5.0, cov, mask), probit_logprobs(mean, cov, mask))
    # K = 2: the binary probit approximation sigmoid(d / sqrt(1 + pi/8 var d))
    m2, c2, k2 = mean[:, :2], cov[:, :2, :2], mask[:, :2]
    var_d = c2[:, 0, 0] + c2[:, 1, 1] - 2 * c2[:, 0, 1]
    expect = torch.sigmoid((m2[:, 0] - m2[:, 1]) / torch.sqrt(1 + math.pi / 8 * var_d))
    torch.testing.assert_close(probit_logprobs(m2, c2, k2)[:, 0].exp(), expect)
    # absent choices keep probability 0 under both links
    mask[0, 2] = False
    mean[0, 2] = float("-inf")
    cov[0, 2, :] = cov[0, :, 2] = 0
    assert probit_logprobs(mean, cov, mask)[0, 2] == float("-inf")
    assert mc_logprobs(mean, cov, mask, torch.randn(50, 5, 3))[0, 2] == float("-inf")


@pytest.mark.parametrize("bad", [
    {"n_kfac": 0}, {"n_kfac": -3}, {"hessian_structure": "full"}, {"link": "laplace_bridge"},
    {"prior_method": "cv"}, {"subset": "first_layer"}, {"predictive": "bnn"}, {"kfac_approx": "mean"},
    {"prior_grid_min": 0}, {"prior_grid_min": 10, "prior_grid_max": 1}, {"prior_grid_size": 1},
    {"prior_precision": -1}, {"mc_samples": 0}, {"kfac_full_max": 0},
])
def test_bad_settings_raise(bad):
    with pytest.raises(ConfigError):
        make_config(LaplaceLoRA.Config, bad)


def test_needs_an_adapter(data, tmp_path):
    bb, scorer = tiny()
    method = LaplaceLoRA(make_config(LaplaceLoRA.Config, {}), bb, scorer, 0)
    with pytest.raises(ConfigError):
        method.fit(FitData(train=data[0], validation=data[1], workdir=tmp_path))
