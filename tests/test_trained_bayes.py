"""Trained Bayesian methods: BLoB (KL, flipout, zero-variance limit), MC dropout, deep ensembles."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from methods.shared.adapter import lora_layers
from methods.base import ConfigError
from methods.blob import BayesLinear, gaussian_kl, kl_weight
from methods.registry import get_method
from methods.settings import make_config
from metrics import predictive_probs
from runners.config import base_run_config, build_run_config
from runners.evaluate import predict
from runners.run import execute, n_samples_for
from tasks import load_split
from tests.helpers import build, fast_settings, tiny


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora(tmp_path_factory, data_dir):
    """A trained lora method and its saved adapter (the base of blob's and the ensemble's checks)."""
    d = tmp_path_factory.mktemp("lora")
    method = build("lora", data_dir, d, extra={"lr": 1e-2})
    method.save(d / "adapter")
    return method, d / "adapter"


@pytest.fixture(scope="module")
def examples(data_dir):
    return load_split("arc_easy", "test", data_dir=data_dir, limit=5)


# ---- BLoB ---------------------------------------------------------------------------------------
def test_blob_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(8, 16, generator=g), torch.rand(8, 16, generator=g) * 0.3 + 1e-3
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std),
                                            torch.distributions.Normal(0.0, 0.2)).sum()
    torch.testing.assert_close(gaussian_kl(mean, std, 0.2), ref, rtol=1e-5, atol=1e-4)


def test_kl_schedules_sum_to_one_per_epoch():
    for M in (1, 5, 2000):
        assert sum(kl_weight(i, M, "blundell") for i in range(1, M + 1)) == pytest.approx(1.0)
        assert sum(kl_weight(i, M, "uniform") for i in range(1, M + 1)) == pytest.approx(1.0)
    assert kl_weight(1, 5, "blundell") == pytest.approx(16 / 31)  # 2^(M-i) / (2^M - 1), decreasing in i
    assert kl_weight(5, 5, "blundell") == pytest.approx(1 / 31)


def test_flipout_noise_has_the_posterior_variance():
    """Each sequence's perturbation is a N(0, Omega^2) sample of A: Var(delta_i) = sum_j x_j^2 Omega_ij^2."""
    g = torch.Generator().manual_seed(0)
    r, d, rows, calls = 4, 256, 128, 1000
    # Omega and |x| of similar size everywhere, so that no few entries dominate the variance estimate
    layer = BayesLinear(torch.randn(r, d, generator=g), 0.4 + 0.2 * torch.rand(r, d, generator=g)).train()
    x = torch.randn(d, generator=g).sign() * (1 + torch.rand(d, generator=g))
    X = x.expand(rows, 2, d)  # two identical tokens per sequence
    with torch.no_grad():
        mean = x @ layer.weight.T
        torch.manual_seed(0)
        delta = torch.stack([layer(X) - mean for _ in range(calls)])  # [calls, rows, 2, r]
    torch.testing.assert_close(delta[:, :, 0], delta[:, :, 1])  # one weight sample per sequence
    assert delta[0, 0].ne(delta[0, 1]).any()                   # sequences of one pass differ
    want = (x ** 2) @ (layer.std.detach() ** 2).T
    got = delta[:, :, 0].pow(2).mean((0, 1))
    torch.testing.assert_close(got, want, rtol=0.04, atol=0)  # ~5 standard errors
    assert delta[:, :, 0].mean((0, 1)).abs().max() < 0.05 * want.sqrt().max()
    layer.eval()
    torch.testing.assert_close(layer(X)[:, 0], mean.expand(rows, r))  # eval: the mean


def _blob_with_lora_weights(lora_method, **extra):
    bb, scorer = tiny()
    cls = get_method("blob")
    blob = cls(make_config(cls.Config, fast_settings("blob", extra)), bb, scorer, 0)
    blob._wrap()
    weights = {n: p for n, p in lora_method.model.state_dict().items() if "lora_" in n}
    missing = blob.model.load_state_dict(weights, strict=False).missing_keys
    assert {k for k in missing if "lora_" in k} == {n for n, _ in blob.model.named_parameters() if n.endswith(".rho")}
    blob.model.eval()
    return blob


def test_blob_with_zero_std_is_lora(lora, examples):
    method, _ = lora
    want = predict(method, examples, 1, batch_size=3, seed=0)
    blob = _blob_with_lora_weights(method)
    spread = predict(blob, examples, 3, batch_size=3, seed=0)
    assert np.abs(spread - spread[:, :1]).max() > 1e-6  # rho = epsilon-init: samples differ
    with torch.no_grad():
        for _, m in blob.bayes:
            m.rho.zero_()
    np.testing.assert_allclose(predict(blob, examples, 3, batch_size=3, seed=0), np.repeat(want, 3, 1), atol=1e-5)
    blob.model.train()  # flipout with Omega = 0 adds nothing either
    with torch.no_grad():
        batch = blob.scorer.encode(examples)
        torch.testing.assert_close(blob.scorer.class_logits(blob.model, batch).log_softmax(-1),
                                   torch.as_tensor(want[:, 0], dtype=torch.float32), atol=1e-5, rtol=0)


def test_blob_mean_mode_is_deterministic_mean(lora, examples):
    method, _ = lora
    blob = _blob_with_lora_weights(method, test_mode="mean")
    want = predict(method, examples, 1, batch_size=3, seed=0)
    np.testing.assert_allclose(predict(blob, examples, 4, batch_size=3, seed=1), np.repeat(want, 4, 1), atol=1e-5)


def test_blob_fit_records_kl_and_counts_rho(data_dir, tmp_path):
    blob = build("blob", data_dir, tmp_path)
    f = blob.fitted
    assert f["kl_final"] > 0 and f["omega_mean"] > 0 and f["steps"] == 3 and "train_seconds" in f["timings"]
    n_lora = sum(p.numel() for n, p in blob.model.named_parameters() if "lora_" in n and not n.endswith(".rho"))
    n_rho = sum(m.rho.numel() for _, m in blob.bayes)
    assert blob.trainable_parameters() == n_lora + n_rho


# ---- MC dropout -----------------------------------------------------------------------------------
def test_mc_dropout_only_lora_dropout_is_active_and_samples_differ(data_dir, tmp_path, examples):
    m = build("mc_dropout", data_dir, tmp_path)
    lora_drops = {id(layer.lora_dropout[n]) for _, layer in lora_layers(m.model) for n in layer.lora_dropout}
    training = set()
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda mod, args: training.add(id(mod)) if mod.training else None)
    try:
        logp = predict(m, examples, 4, batch_size=3, seed=0)
    finally:
        hook.remove()
    assert training and training <= lora_drops  # nothing but the LoRA dropouts ran in train mode
    assert np.abs(logp - logp[:, :1]).max() > 1e-6
    assert not any(mod.training for mod in m.model.modules())  # and they are back in eval mode


def test_mc_dropout_without_dropout_is_lora(data_dir, tmp_path, examples):
    plain = build("lora", data_dir, tmp_path)
    mc = build("mc_dropout", data_dir, tmp_path, extra={"dropout": 0.0})
    want = predict(plain, examples, 1, batch_size=3, seed=0)
    np.testing.assert_allclose(predict(mc, examples, 3, batch_size=3, seed=0), np.repeat(want, 3, 1), atol=1e-6)


# ---- ensemble -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ensemble(lora, data_dir, tmp_path_factory):
    _, adapter = lora
    return build("ensemble", data_dir, tmp_path_factory.mktemp("ens"), base_dir=adapter,
                 extra={"lr": 1e-2, "members": 2})


def test_ensemble_member0_is_the_base_adapter(lora, ensemble, examples):
    method, adapter = lora
    assert ensemble.fitted["members"][0]["source"] == "base lora fit" and len(ensemble.fitted["members"]) == 2
    assert ensemble.fitted["members"][1]["seed"] == 1000
    logp = predict(ensemble, examples, 2, batch_size=3, seed=0)
    np.testing.assert_allclose(logp[:, :1], predict(method, examples, 1, batch_size=3, seed=0), atol=1e-6)
    assert np.abs(logp[:, 1] - logp[:, 0]).max() > 1e-3  # member 1 trained from another seed


def test_ensemble_trains_member0_like_lora(data_dir, tmp_path, examples):
    plain = build("lora", data_dir, tmp_path)
    alone = build("ensemble", data_dir, tmp_path, extra={"members": 1})  # no adapter given: trains member 0
    np.testing.assert_allclose(predict(alone, examples, 1, batch_size=3, seed=0),
                               predict(plain, examples, 1, batch_size=3, seed=0), atol=1e-6)


def test_ensemble_averages_probabilities_not_logits(ensemble, examples, monkeypatch):
    # member 0 is confident in class 0, member 1 mildly prefers class 1: mean logits favour class 0 far more
    table = {"default": torch.tensor([5.0, 0.0]), "member1": torch.tensor([0.0, 1.0])}
    monkeypatch.setattr(ensemble.scorer, "class_logits",
                        lambda model, batch: table[model.active_adapter].expand(batch.size, 2).clone())
    probs = predictive_probs(ensemble.predict_logprobs(ensemble.scorer.encode(examples[:2]), 2, None))
    want = (table["default"].softmax(-1) + table["member1"].softmax(-1)) / 2
    np.testing.assert_allclose(probs, want.expand(2, 2).numpy(), atol=1e-6)
    assert abs(probs[0, 0] - torch.stack(list(table.values())).mean(0).softmax(-1)[0].item()) > 0.2


def test_ensemble_rejects_a_base_adapter_of_other_shape(lora):
    method, _ = lora  # r=8
    bb, scorer = tiny()
    cls = get_method("ensemble")
    with pytest.raises(ConfigError, match="does not match"):
        cls(make_config(cls.Config, {"r": 4}), bb, scorer, 0)._check_base(method)


def test_runner_gives_ensemble_the_lora_run_of_its_settings(tmp_path, data_dir):
    kw = dict(model="tiny-random-llama", limit_train=8, limit_eval=6, precision="fp32")
    cfg = build_run_config("ensemble", "arc_easy", {"epochs": "1", "batch_size": "4", "members": "2"},
                           n_samples=5, **kw)
    base = base_run_config(cfg)  # the very fit `lora` with the ensemble's other settings would make
    assert base.fit_id == build_run_config("lora", "arc_easy", {"epochs": "1", "batch_size": "4"}, **kw).fit_id
    assert n_samples_for(cfg) == 2  # S is the number of members, whatever --samples says
    rec = execute(cfg, tmp_path, data_dir=data_dir, device="cpu")
    assert rec["base_run"] == base.fit_id and (tmp_path / "fits" / base.fit_id / "fit.json").is_file()
    assert rec["method"]["n_samples"] == 2
    assert rec["method"]["fitted"]["members"][0]["source"] == "base lora fit"


# ---- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,settings,needle", [
    ("blob", {"beta": 0}, "beta"),
    ("blob", {"epsilon": -0.1}, "epsilon"),
    ("blob", {"kl_schedule": "linear"}, "kl_schedule"),
    ("blob", {"test_mode": "median"}, "test_mode"),
    ("blob", {"r": 0}, "r=0"),
    ("mc_dropout", {"dropout": 1.0}, "dropout"),
    ("mc_dropout", {"dropout": -0.1}, "dropout"),
    ("ensemble", {"members": 0}, "members"),
    ("ensemble", {"lr": 0}, "lr"),
])
def test_bad_settings(method, settings, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config(get_method(method).Config, settings)


def test_samples_per_pass_shrinks_for_long_rows():
    from methods.shared.sampling import MAX_ATTENTION, samples_per_pass
    assert samples_per_pass(rows=8, length=70, n_samples=10) == 10       # short ARC rows: all samples at once
    long = samples_per_pass(rows=8, length=400, n_samples=10)
    assert 1 <= long < 10 and 8 * long * 400 ** 2 <= MAX_ATTENTION       # long rows: bounded attention
    assert samples_per_pass(rows=64, length=2048, n_samples=10) == 1      # never fewer than one
    assert samples_per_pass(rows=100, length=10, n_samples=10) == 2       # and at most max_rows rows
