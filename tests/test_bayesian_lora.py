"""`bayesian_lora`: the sparse-GP conditional, its pathwise samples and KLs, the LoRA limit, variants, settings."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from methods.shared.adapter import lora_layers
from methods.base import ConfigError
from methods.bayesian_lora import InducingFactor
from methods.registry import get_method
from methods.settings import make_config
from runners.evaluate import predict
from tasks import load_split
from tests.helpers import build, fast_settings, tiny


def factor(d_out=3, d_in=4, m_r=2, m_c=3, **kw) -> InducingFactor:
    torch.manual_seed(0)
    kw = {"flow_depth": 0, **kw}
    return InducingFactor(d_out, d_in, m_r, m_c, **kw).double()


def conditional_cov(f: InducingFactor) -> torch.Tensor:
    """The dense conditional covariance I - P_r (x) P_c of W~ | U (row-major vec), for small factors only."""
    b = f.bases()
    p_r, p_c = b.t_r @ b.z_r, b.z_c.T @ b.t_c
    return torch.eye(f.d_out * f.d_in, dtype=torch.float64) - torch.kron(p_r, p_c)


def set_(param: torch.Tensor, value) -> None:
    with torch.no_grad():  # in place under no_grad: bumps the version counter the mean cache watches
        param.copy_(torch.as_tensor(value, dtype=param.dtype).expand_as(param))


# ---- the conditional and its KL -----------------------------------------------------------------------------
def test_conditional_kl_matches_torch_distributions():
    f = factor(lambda_init=0.02, lambda_max=0.5)
    set_(f.lam_raw, 0.7)
    lam = f.lam.item()
    cov = conditional_cov(f)
    assert torch.linalg.eigvalsh(cov).min() > 0  # full rank, so the closed form applies
    mu = torch.randn(f.d_out * f.d_in, dtype=torch.float64)
    want = kl_divergence(MultivariateNormal(mu, lam ** 2 * cov), MultivariateNormal(mu, cov))
    assert f.kl_conditional().item() == pytest.approx(want.item(), rel=1e-9)
    assert f.kl_conditional().item() == pytest.approx(12 * (lam ** 2 / 2 - math.log(lam) - 0.5), rel=1e-12)


@pytest.mark.parametrize("family", ["diag", "matrix_normal"])
def test_inducing_kl_matches_torch_distributions(family):
    f = factor(family=family)
    q = f.q
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.3 * torch.randn_like(p))
    eps = torch.eye(6, dtype=torch.float64).view(6, 2, 3)  # U0 - M for unit eps: columns of the scale map
    u0, _ = q._base(eps)
    scale = (u0 - q.loc).reshape(6, 6).T  # vec(U0) = vec(M) + scale @ eps (row-major)
    want = kl_divergence(MultivariateNormal(q.loc.flatten(), scale @ scale.T),
                         MultivariateNormal(torch.zeros(6, dtype=torch.float64), torch.eye(6, dtype=torch.float64)))
    assert q.kl().item() == pytest.approx(want.item(), rel=1e-9)


def test_bases_shapes_and_conditional_mean_against_direct_formulas():
    f = factor(d_out=3, d_in=5, m_r=4, m_c=2)  # m_r > d_out: Z_r Z_r^T is singular, K_r is not
    b = f.bases()
    assert b.t_r.shape == (3, 4) and b.t_c.shape == (2, 5) and b.a_r.shape == (3, 4) and b.a_c.shape == (2, 5)
    k_r = b.z_r @ b.z_r.T + torch.diag(b.d_r ** 2)
    k_c = b.z_c @ b.z_c.T + torch.diag(b.d_c ** 2)
    torch.testing.assert_close(b.t_r, b.z_r.T @ torch.linalg.inv(k_r))
    torch.testing.assert_close(b.t_c, torch.linalg.inv(k_c) @ b.z_c)
    assert torch.linalg.matrix_norm(b.z_r, ord=2).item() == pytest.approx(1.0)  # spectral-normalised
    u = torch.randn(4, 2, dtype=torch.float64)
    l_r, l_c = torch.linalg.cholesky(k_r), torch.linalg.cholesky(k_c)
    u_k = l_r @ u @ l_c.T  # the un-whitened inducing matrix
    torch.testing.assert_close(f.conditional_mean(u, b), b.t_r @ u_k @ b.t_c)
    # ... which is the Gaussian conditional E[W | U_k] of the joint (U_k = Z_r W Z_c^T + noise, W ~ N(0, I))
    cross = torch.kron(b.z_r, b.z_c)  # Cov(vec U_k, vec W)
    dense = cross.T @ torch.linalg.solve(torch.kron(k_r, k_c), u_k.flatten())
    torch.testing.assert_close(f.conditional_mean(u, b).flatten(), dense)


def test_pathwise_samples_have_the_conditional_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    # U pinned at M (q's sd ~ 0), lambda = 0.5: W~ ~ N(A_r M A_c, lambda^2 (I - P_r (x) P_c))
    f = factor(d_out=2, d_in=3, m_r=2, m_c=2, lambda_init=0.1, lambda_max=1.0, prior_sd=math.sqrt(3))
    set_(f.lam_raw, 0.0)
    set_(f.q.sd_raw, -40.0)
    w = f.sample(40000, g).detach().flatten(1)  # prior_sd = sqrt(d_in): W = W~
    torch.testing.assert_close(w.mean(0), f.conditional_mean(f.q.loc, f.bases()).detach().flatten(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(w.T), 0.25 * conditional_cov(f).detach(), atol=0.02, rtol=0)
    # q(U) = p(U) and lambda = 1: the marginal is the prior, W ~ N(0, (prior_sd / sqrt(d_in))^2 I)
    f = factor(d_out=2, d_in=3, m_r=2, m_c=2, lambda_init=0.1, lambda_max=2.0, prior_sd=0.3 * math.sqrt(3))
    set_(f.lam_raw, 0.0)
    set_(f.q.loc, 0.0)
    set_(f.q.sd_raw, math.log(math.e - 1))  # softplus -> 1
    w = f.sample(40000, g).detach().flatten(1) / 0.3
    torch.testing.assert_close(w.mean(0), torch.zeros(6, dtype=torch.float64), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(w.T), torch.eye(6, dtype=torch.float64), atol=0.04, rtol=0)


# ---- the method on the tiny model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_default(tmp_path_factory, data_dir):
    return build("bayesian_lora", data_dir, tmp_path_factory.mktemp("bl"), extra={"max_steps": 1})


@pytest.fixture(scope="module")
def examples(data_dir):
    return load_split("arc_easy", "test", data_dir=data_dir, limit=5)


def test_collapses_to_lora_with_the_mean_weights(fitted_default, examples):
    m = fitted_default
    torch.manual_seed(1)
    with torch.no_grad():  # a large B, so that the comparison is not trivially satisfied by B ~ 0
        for _, layer in lora_layers(m.model):
            layer.lora_B["default"].weight.normal_(0, 0.3)
    spread = predict(m, examples, 3, batch_size=3, seed=0)
    assert np.abs(spread - spread[:, :1]).max() > 1e-4  # samples differ before the collapse

    bb, scorer = tiny()
    lora_cls = get_method("lora")
    lora = lora_cls(make_config(lora_cls.Config, fast_settings("lora")), bb, scorer, 0)
    lora._wrap()

    def lora_with_mean_weights():
        mine = dict(lora_layers(m.model))
        with torch.no_grad():
            for name, layer in lora_layers(lora.model):
                layer.lora_A["default"].weight.copy_(mine[name].lora_A["default"].weight)  # InducingFactor: E_q[W]
                layer.lora_B["default"].weight.copy_(mine[name].lora_B["default"].weight)
        return predict(lora, examples, 1, batch_size=3, seed=0)

    m.config.predict_mode = "mean"  # E_q[W]: LoRA with those weights, whatever the posterior spread
    mean_mode = predict(m, examples, 1, batch_size=3, seed=0)
    np.testing.assert_allclose(mean_mode, lora_with_mean_weights(), atol=1e-5)
    m.model.merge_adapter()  # ... and mergeable into the base weights like a LoRA adapter
    np.testing.assert_allclose(predict(m, examples, 1, batch_size=3, seed=0), mean_mode, atol=1e-5)
    m.model.unmerge_adapter()
    m.config.predict_mode = "mc"
    for *_, f in m.factors:  # lambda -> 0 and q(U)'s sd -> 0: every sample is the mean
        set_(f.lam_raw, -60.0)
        set_(f.q.sd_raw, -60.0)
    got = predict(m, examples, 3, batch_size=3, seed=0)
    np.testing.assert_allclose(got, np.repeat(lora_with_mean_weights(), 3, axis=1), atol=1e-5)


def test_mean_mode_is_not_stochastic(data_dir):
    bb, scorer = tiny()
    cls = get_method("bayesian_lora")
    m = cls(make_config(cls.Config, {"predict_mode": "mean"}), bb, scorer, 0)
    assert m.stochastic is False and cls.samples_for(m.config, 10) == 1
    assert cls.samples_for(make_config(cls.Config, {})) == 4 and cls.samples_for(make_config(cls.Config, {}), 7) == 7


@pytest.mark.parametrize("extra", [
    {"family": "diag", "flow_depth": 0},
    {"family": "matrix_normal", "flow_depth": 0},
    {"family": "matrix_normal", "flow_depth": 2, "bayesian_factors": "both", "bayesian_modules": ("v_proj",)},
])
def test_variants_train_a_step_with_finite_elbo(extra, tmp_path, data_dir, fitted_default):
    m = build("bayesian_lora", data_dir, tmp_path, extra={"max_steps": 1, **extra})
    for method in (m, fitted_default):  # fitted_default: diag + one MAF layer
        fit = method.fitted
        assert fit["steps"] == 1 and np.isfinite(fit["final_loss"]) and np.isfinite(fit["kl_per_example"])
        assert fit["trainable_parameters"] > fit["lora_parameters"] > 0 and fit["u_sd_mean"] > 0
        lam0 = method.config.lambda_init
        assert all(abs(f.lam.item() - lam0) > 0 for *_, f in method.factors)  # the ELBO reached lambda
    if extra.get("bayesian_factors") == "both":
        assert sorted(key for _, key, *_ in m.factors) == ["A", "A", "B", "B"]  # v_proj of both layers
        assert all("v_proj" in name for name, *_ in m.factors)


@pytest.mark.parametrize("bad", [
    {"m_r": 0}, {"m_c": -1}, {"lambda_max": 0.0}, {"lambda_init": 0.05}, {"mean_samples": 0},
    {"family": "full"}, {"predict_mode": "median"}, {"bayesian_factors": "C"}, {"flow_depth": -1},
    {"prior_sd": 0.0}, {"u_sd_init": -1.0}, {"beta": -0.5},
])
def test_bad_settings_raise(bad):
    with pytest.raises(ConfigError):
        make_config(get_method("bayesian_lora").Config, bad)


def test_unknown_module_filter_fails_clearly(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="match no adapted module"):
        build("bayesian_lora", data_dir, tmp_path, extra={"max_steps": 1, "bayesian_modules": ("o_proj",)})
