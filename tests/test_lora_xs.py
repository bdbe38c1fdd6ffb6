"""LoRA-XS projections, the LoRA-XS layer, and L-LoRA-XS (Laplace over the r x r cores)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.base import ConfigError
from methods.lora_xs import module as xs
from methods.lora_xs.projections import dct_matrix, parse_projection, projection, split_rank
from methods.registry import get_method
from methods.settings import make_config
from runners.config import build_run_config
from runners.evaluate import predict
from runners.run import execute
from tasks import load_split
from tests.helpers import assert_bad_input, build, cli, tiny

torch.manual_seed(0)
W = torch.randn(24, 40, dtype=torch.float64) @ torch.diag(torch.linspace(3, 0.1, 40, dtype=torch.float64))


def _orthonormal_rows(a):
    return torch.allclose(a @ a.T, torch.eye(a.shape[0], dtype=a.dtype), atol=1e-8)


@pytest.mark.parametrize("spec", ["svd", "wsvd", "dct", "random", "dct-1/2+svd", "random-1/4+wsvd-1/4+svd"])
def test_every_family_gives_orthonormal_bases_scaled_by_singular_values(spec):
    A, B = projection(W, split_rank(parse_projection(spec), 8), cov=torch.eye(40, dtype=torch.float64),
                      gen=torch.Generator().manual_seed(0))
    assert A.shape == (8, 40) and B.shape == (24, 8)
    assert _orthonormal_rows(A)
    s = torch.linalg.svdvals(W)[:8]
    assert torch.allclose(B.norm(dim=0), s) and _orthonormal_rows((B / s).T)


def test_svd_is_the_best_rank_r_approximation():
    A, B = projection(W, [("svd", 8)])
    s = torch.linalg.svdvals(W)
    assert torch.linalg.norm(W - B @ A) == pytest.approx(float(s[8:].pow(2).sum().sqrt()), rel=1e-8)


def test_wsvd_with_identity_covariance_spans_the_svd_subspaces():
    (A1, B1), (A2, B2) = projection(W, [("svd", 6)]), projection(W, [("wsvd", 6)], cov=torch.eye(40, dtype=torch.float64))
    assert torch.allclose(A1.T @ A1, A2.T @ A2, atol=1e-6) and torch.allclose(B1 @ B1.T, B2 @ B2.T, atol=1e-6)


def test_wsvd_follows_the_data():
    """On skewed inputs (covariance C), the best core in wsvd's subspaces reconstructs W0 on the data,
    min_R ||(W0 - B R A) C^1/2||, better than the best core in svd's, and reaches the optimum of rank r."""
    C = torch.diag(torch.cat([torch.full((32,), 1e-2), torch.ones(8) * 4])).double()
    root = C.sqrt()

    def best_error(A, B):
        R = torch.linalg.pinv(B) @ W @ root @ torch.linalg.pinv(A @ root)
        return float(torch.linalg.norm((W - B @ R @ A) @ root))

    optimum = float(torch.linalg.svdvals(W @ root)[4:].pow(2).sum().sqrt())
    e_w, e_s = best_error(*projection(W, [("wsvd", 4)], cov=C)), best_error(*projection(W, [("svd", 4)]))
    assert e_w == pytest.approx(optimum, rel=1e-2) and e_w < 0.9 * e_s


def test_dct_rows_are_the_most_energetic_frequencies():
    A, B = projection(W, [("dct", 3)])
    coef = (dct_matrix(24) @ W @ dct_matrix(40).T).abs()
    assert torch.allclose(A, dct_matrix(40)[coef.sum(0).argsort(descending=True)[:3]])
    assert torch.allclose(B / B.norm(dim=0), dct_matrix(24)[coef.sum(1).argsort(descending=True)[:3]].T)


def test_random_is_seeded():
    a = projection(W, [("random", 4)], gen=torch.Generator().manual_seed(1))[0]
    b = projection(W, [("random", 4)], gen=torch.Generator().manual_seed(1))[0]
    c = projection(W, [("random", 4)], gen=torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_hybrid_keeps_the_first_family_and_splits_the_rank():
    assert split_rank(parse_projection("dct-1/2+svd"), 8) == [("dct", 4), ("svd", 4)]
    assert split_rank(parse_projection("dct-1/3+svd-2/3"), 8) == [("dct", 2), ("svd", 6)]
    A, _ = projection(W, [("dct", 4), ("svd", 4)])
    A_dct, _ = projection(W, [("dct", 4)])
    assert torch.allclose(A[:4].abs(), A_dct.abs())


@pytest.mark.parametrize("spec,needle", [("svdd", "did you mean 'svd'"), ("dct-1/2+svd-1/4", "sum to 3/4"),
                                         ("dct+svd", "only one family"), ("dct-3/2+svd", "(0, 1]"),
                                         ("dct-1/2+dct", "twice"), ("dct-x+svd", "not a fraction"),
                                         ("dct-1/2+svd-1/2+random", "leaving nothing")])
def test_bad_projection_names(spec, needle):
    with pytest.raises(ConfigError, match=None) as e:
        make_config(get_method("lora_xs").Config, {"projection": spec})
    assert needle.lower() in str(e.value).lower()


def test_rank_of_zero_directions_fails():
    with pytest.raises(ConfigError, match="no direction"):
        make_config(get_method("lora_xs").Config, {"projection": "dct-1/8+svd", "r": 4})


def test_layer_is_base_plus_scaled_core(data_dir, tmp_path):
    m = build("lora_xs", data_dir, tmp_path, extra={"lr": 1e-2})
    name, layer = xs.xs_modules(m.model)[0]
    x = torch.randn(3, layer.base.in_features)
    W0, A, R, B = (t.weight.detach() for t in (layer.base, layer.xs_A, layer.xs_R, layer.xs_B))
    assert torch.allclose(layer(x), x @ (W0 + layer.scale * B @ R @ A).T, atol=1e-5)
    assert R.abs().max() > 1e-3  # training moved the core away from its N(0, 1e-5) init
    n_mod = len(xs.xs_modules(m.model))
    assert m.trainable_parameters() == n_mod * 8 * 8 == sum(p.numel() for p in m.model.parameters() if p.requires_grad)


def test_unfreeze_ab_trains_the_projections_too(data_dir, tmp_path):
    m = build("lora_xs", data_dir, tmp_path, extra={"unfreeze_ab": True, "projection": "random"})
    mods = xs.xs_modules(m.model)
    assert m.trainable_parameters() == sum(64 + 8 * (l.xs_A.in_features + l.xs_B.out_features) for _, l in mods)
    fresh = projection(mods[0][1].base.weight, [("random", 8)], gen=torch.Generator().manual_seed(0))[0].float()
    assert not torch.allclose(mods[0][1].xs_A.weight, fresh, atol=1e-6)


def test_zero_core_is_the_pretrained_model(data_dir, tmp_path):
    examples = load_split("arc_easy", "test", data_dir=data_dir, limit=5)
    zs = build("zero_shot", data_dir, tmp_path)
    m = build("lora_xs", data_dir, tmp_path, extra={"init_std": 0.0, "lr": 1e-2})
    for _, layer in xs.xs_modules(m.model):
        layer.xs_R.weight.data.zero_()
    np.testing.assert_allclose(predict(m, examples, 1, 4, 0), predict(zs, examples, 1, 4, 0), atol=1e-5)


def test_rank_above_module_size_fails_up_front(data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"exceeds min\(d_in, d_out\)"):
        build("lora_xs", data_dir, tmp_path, extra={"r": 40})  # tiny v_proj is 32 x 64


@pytest.fixture(scope="module")
def xs_adapter(tmp_path_factory, data_dir):
    d = tmp_path_factory.mktemp("xs")
    build("lora_xs", data_dir, d, extra={"lr": 1e-2}).save(d / "adapter")
    return d / "adapter"


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_l_lora_xs_posterior_is_over_the_cores_only(structure, xs_adapter, data_dir, tmp_path):
    m = build("l_lora_xs", data_dir, tmp_path, base_dir=xs_adapter, extra={"hessian_structure": structure})
    assert all(n.endswith(".xs_R") for n, _ in m.layers)
    assert m.trainable_parameters() == len(m.layers) * 64
    assert m.fitted["low_rank_layers"] == 0 and m.prior_precision > 0


def test_l_lora_xs_with_huge_prior_is_the_map(xs_adapter, data_dir, tmp_path):
    examples = load_split("arc_easy", "test", data_dir=data_dir, limit=5)
    lap = build("l_lora_xs", data_dir, tmp_path, base_dir=xs_adapter,
                extra={"prior_method": "fixed", "prior_precision": 1e9})
    bb, scorer = tiny()
    mle = get_method("lora_xs")(make_config(get_method("lora_xs").Config, {}), bb, scorer, 0)
    mle.load(xs_adapter)
    np.testing.assert_allclose(predict(lap, examples, 1, 4, 0), predict(mle, examples, 1, 4, 0), atol=1e-4)


def test_runner_trains_lora_xs_once_for_l_lora_xs(tmp_path, data_dir):
    kw = dict(model="tiny-random-llama", limit_train=8, limit_eval=6, precision="fp32",
              base_settings={"epochs": "1", "batch_size": "4", "projection": "dct"})
    recs = [execute(build_run_config("l_lora_xs", "arc_easy", s, **kw), tmp_path, data_dir=data_dir, device="cpu")
            for s in ({}, {"hessian_structure": "diag"})]
    assert recs[0]["base_run"] == recs[1]["base_run"] and recs[0]["base_run"].startswith("lora_xs-")
    assert len(list((tmp_path / "fits").glob("lora_xs-*"))) == 1 and not list((tmp_path / "fits").glob("lora-*"))
    assert all(r["status"] == "done" for r in recs)


@pytest.mark.parametrize("args,needle", [
    (["--method", "lora_xs", "--set", "projection=dtc"], "did you mean 'dct'"),
    (["--method", "lora_xs", "--set", "projection=dct-1/2+svd-1/4"], "sum to 3/4"),
    (["--method", "lora_xs", "--set", "r=40", "--limit-train", "4"], "exceeds min(d_in, d_out)"),
    (["--method", "l_lora_xs", "--base-set", "projection=rnd"], "did you mean 'random'"),
])
def test_cli_bad_settings_exit_2_nothing_written(args, needle, tmp_path, data_dir):
    results = tmp_path / "results"
    p = cli("run", *args, "--task", "arc_easy", "--model", "tiny-random-llama", "--precision", "fp32",
            results=results, data_dir=data_dir)
    assert_bad_input(p, needle, results)


def test_l_lora_xs_rejects_a_peft_adapter(tmp_path, data_dir):
    d = tmp_path / "peft"
    build("lora", data_dir, tmp_path).save(d)
    p = cli("run", "--method", "l_lora_xs", "--task", "arc_easy", "--model", "tiny-random-llama",
            "--adapter", str(d), results=tmp_path / "r", data_dir=data_dir)
    assert p.returncode == 2 and "lora_xs.json" in p.stderr


def test_adapter_of_another_model_is_refused(xs_adapter, tmp_path):
    import json
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(xs_adapter, bad)
    meta = json.loads((bad / xs.MARKER).read_text())
    meta["layers"][0]["d_in"] += 1  # as if trained on a wider model
    (bad / xs.MARKER).write_text(json.dumps(meta))
    bb, _ = tiny()
    with pytest.raises(ConfigError, match="another model"):
        xs.load(bb, bad)
