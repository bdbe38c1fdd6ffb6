"""Post-hoc methods: temperature scaling, TFB, and the runner's reuse of one trained lora adapter."""
from __future__ import annotations

import json

import pytest
import torch

from methods.shared.adapter import lora_layers
from methods.base import ConfigError
from methods.registry import get_method
from methods.settings import make_config
from methods.temperature import fit_temperature
from runners.config import build_run_config
from runners.run import execute
from tests.helpers import assert_bad_input, build, cli, tiny


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, data_dir):
    d = tmp_path_factory.mktemp("lora")
    build("lora", data_dir, d, extra={"lr": 1e-2}).save(d / "adapter")
    return d / "adapter"


def test_temperature_recovers_known_temperature():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 4, generator=g)
    labels = torch.multinomial((logits / 2.5).softmax(-1), 1, generator=g).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)
    logits[:100, 3] = float("-inf")  # some examples with 3 choices: still finite, same answer
    labels[:100] = labels[:100].clamp(max=2)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_tfb_reparametrisation_keeps_the_adapter_and_noise_is_isotropic(adapter, data_dir, tmp_path):
    plain = build("temperature", data_dir, tmp_path, base_dir=adapter)  # the adapter as trained
    tfb = build("tfb", data_dir, tmp_path, base_dir=adapter, extra={"anchor_size": 8, "iterations": 2})
    from tasks import load_split
    ex = load_split("arc_easy", "test", data_dir=data_dir, limit=5)
    torch.testing.assert_close(tfb.deterministic_logits(ex)[0], plain.deterministic_logits(ex)[0], atol=1e-4, rtol=0)
    sigma, S = 0.05, 4000
    draw = tfb._draw(sigma, torch.Generator().manual_seed(0))(S)
    for _, layer in lora_layers(tfb.model):
        name = layer.active_adapters[0]
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
        assert torch.allclose(B.T @ B, torch.diag((B * B).sum(0)), atol=1e-5)  # B' = U diag(d): orthogonal columns
        noise = torch.einsum("or,sri->soi", B, draw[layer]["A"] - A)       # noise of the weight update B'A'
        r_eff = int((B.norm(dim=0) > 1e-12).sum())
        # sigma U Z with U orthonormal: per-sample squared norm sigma^2 * r * d_in on average
        assert (noise ** 2).sum((1, 2)).mean().item() == pytest.approx(sigma ** 2 * r_eff * A.shape[1], rel=0.05)


def test_tfb_sigma_satisfies_constraint(adapter, data_dir, tmp_path):
    fitted = {}
    for relative in ("true", "reference"):
        m = build("tfb", data_dir, tmp_path, base_dir=adapter,
                  extra={"variant": "paper", "anchor_size": 12, "iterations": 4, "anchor_samples": 4, "sigma_max": 2.0,
                         "relative": relative})
        f = m.fitted
        assert f["degradation"] <= f["epsilon"] and f["sigma_q"] == m.sigma
        rejected = [s for s, d in f["search"] if d > f["epsilon"]]
        assert all(s > f["sigma_q"] for s in rejected)  # everything above the answer was rejected
        if rejected:  # the bracket is closed to the resolution of `iterations` bisection steps
            assert min(rejected) - f["sigma_q"] <= (2.0 - 1e-4) / 2 ** 4 + 1e-12
        fitted[relative] = f["sigma_q"]
    assert fitted["reference"] >= fitted["true"]  # dividing by the anchor size only loosens the constraint


@pytest.mark.parametrize("method,settings,needle", [
    ("tfb", {"sigma_min": 0.2, "sigma_max": 0.1}, "sigma_min < sigma_max"),
    ("tfb", {"epsilon": 0}, "epsilon"),
    ("tfb", {"criterion": "kl"}, "criterion"),
    ("temperature", {"max_iter": 0}, "max_iter"),
])
def test_bad_settings(method, settings, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config(get_method(method).Config, settings)


def foreign_adapter(adapter, tmp_path):
    """A copy of `adapter` whose config targets modules this backbone does not have."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in adapter.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["c_attn"]}))
    return bad


def test_adapter_that_does_not_match_backbone(adapter, tmp_path):
    from methods.shared.adapter import load_adapter
    bad = foreign_adapter(adapter, tmp_path)
    bb, _ = tiny()
    with pytest.raises(ConfigError, match="does not have"):
        load_adapter(bb, bad)
    from transformers import LlamaConfig, LlamaForCausalLM  # same module names, other widths
    from backbones import Backbone
    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(bb.tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ConfigError, match="does not fit"):
        load_adapter(Backbone(other, bb.tokenizer, bb.device, bb.config), adapter)


def test_posthoc_runs_reuse_one_lora_adapter(tmp_path, data_dir):
    kw = dict(model="tiny-random-llama", limit_train=8, limit_eval=6, precision="fp32",
              base_settings={"epochs": "1", "batch_size": "4"})
    recs = [execute(build_run_config(m, "arc_easy", s, **kw), tmp_path, data_dir=data_dir, device="cpu")
            for m, s in (("temperature", {}), ("tfb", {"anchor_size": "8", "iterations": "2"}))]
    assert recs[0]["base_run"] == recs[1]["base_run"] and recs[0]["base_run"].startswith("lora-")
    assert len(list((tmp_path / "fits").glob("lora-*"))) == 1 and not list(tmp_path.glob("lora-*"))  # a fit, no run
    assert recs[0]["method"]["fitted"]["temperature"] > 0 and recs[1]["method"]["fitted"]["sigma_q"] > 0


def test_cli_adapter_of_another_model_exit_2_nothing_written(adapter, tmp_path, data_dir):
    bad = foreign_adapter(adapter, tmp_path)
    p = cli("run", "--method", "temperature", "--task", "arc_easy", "--model", "tiny-random-llama", "--adapter",
            str(bad), "--limit-train", "4", "--limit-eval", "4", results=tmp_path / "r", data_dir=data_dir)
    assert_bad_input(p, "another model", tmp_path / "r")


def test_tuning_a_posthoc_method_writes_no_test_evaluation(tmp_path, data_dir):
    """A cell scored on validation (what `tune` runs) needs only its lora base's fit: nothing under the
    results directory holds a test-split evaluation."""
    kw = dict(model="tiny-random-llama", limit_train=8, limit_eval=6, precision="fp32",
              base_settings={"epochs": "1", "batch_size": "4"}, eval_split="validation")
    rec = execute(build_run_config("temperature", "arc_easy", {}, **kw), tmp_path, data_dir=data_dir, device="cpu")
    records = [json.loads(f.read_text()) for f in tmp_path.glob("*/result.json")]
    assert rec["base_run"] and [r["config"]["method"] for r in records] == ["temperature"]  # the base: a fit only
    assert records[0]["config"]["eval_split"] == "validation"
    evals = [p.name for p in tmp_path.glob("fits/*/evals/*")]
    assert evals and all(e.startswith("validation-") for e in evals)
