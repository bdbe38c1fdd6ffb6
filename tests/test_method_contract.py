"""The contract every registered method must pass (one class, run over the whole registry).

A new method is covered by adding it to methods/registry.py: nothing here names a method; post-hoc methods
start from an adapter of their `base_method`.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from methods.registry import get_method, method_names
from runners.evaluate import predict
from tasks import load_split
from tests.helpers import build, tiny

S = 3


@pytest.fixture(scope="session")
def base_adapter(tmp_path_factory, data_dir):
    """base_adapter(name): a trained adapter of method `name` on disk (built once), for post-hoc methods."""
    made = {}

    def get(name: str):
        if name not in made:
            d = tmp_path_factory.mktemp(name)
            build(name, data_dir, d).save(d / "adapter")
            made[name] = d / "adapter"
        return made[name]
    return get


@pytest.fixture(scope="session")
def eval_examples(data_dir):
    return load_split("arc_easy", "test", data_dir=data_dir, limit=7)  # 7: the last batch is smaller


@pytest.fixture(scope="module", params=method_names())
def fitted(request, tmp_path_factory, data_dir, base_adapter):
    name = request.param
    cls = get_method(name)
    work = tmp_path_factory.mktemp(name)
    return build(name, data_dir, work, base_dir=base_adapter(cls.base_method) if cls.posthoc else None), work


def _predict(method, examples, seed=0):
    n = S if method.stochastic else 1
    return predict(method, examples, n, batch_size=3, seed=seed)


class TestMethodContract:
    def test_every_sample_is_a_distribution_over_the_present_choices(self, fitted, eval_examples):
        method, _ = fitted
        logp = _predict(method, eval_examples)
        per_sample = np.exp(logp)
        np.testing.assert_allclose(per_sample.sum(-1), 1.0, atol=1e-4)  # each sample, not only their mean
        for e, p in zip(eval_examples, per_sample):  # absent choices (3-choice items) get probability 0
            assert np.all(p[:, e.n_choices:] == 0)

    def test_declared_samples_are_what_it_draws(self, fitted):
        method, _ = fitted
        cls = type(method)
        assert method.stochastic == (cls.samples_for(method.config) > 1)
        assert cls.samples_for(method.config, 7) in (1, 7, cls.samples_for(method.config))

    def test_point_estimate_when_declared(self, fitted, eval_examples):
        """A declared point estimate is a distribution over the present choices of every example."""
        method, _ = fitted
        if not method.has_point_estimate:
            return
        batch = method.scorer.encode(eval_examples)
        with torch.no_grad():
            point = method.predict_point_logprobs(batch).float().exp().numpy()
        assert point.shape == tuple(batch.choice_mask.shape)
        np.testing.assert_allclose(point.sum(-1), 1.0, atol=1e-4)
        assert np.all(point[~batch.choice_mask.numpy()] == 0)

    def test_repeatable_under_seed(self, fitted, eval_examples):
        method, _ = fitted
        np.testing.assert_array_equal(_predict(method, eval_examples, seed=1), _predict(method, eval_examples, seed=1))

    def test_samples_differ_when_stochastic(self, fitted, eval_examples):
        method, _ = fitted
        logp = _predict(method, eval_examples)
        spread = np.nanmax(np.abs(logp - logp[:, :1]) * np.isfinite(logp))
        if method.stochastic:
            assert spread > 1e-6, "a stochastic method returned identical samples"
        else:
            assert logp.shape[1] == 1

    def test_save_load_roundtrip(self, fitted, eval_examples, data_dir):
        method, work = fitted
        method.save(work / "saved")
        bb, scorer = tiny()
        cls = type(method)
        fresh = cls(method.config, bb, scorer, method.seed)
        fresh.load(work / "saved")
        np.testing.assert_allclose(_predict(fresh, eval_examples, seed=2), _predict(method, eval_examples, seed=2),
                                   atol=1e-5)

    def test_records_what_it_fitted(self, fitted):
        """What it fitted goes into result.json: it must serialise, and survive a save/load."""
        method, work = fitted
        json.dumps(method.fitted)
        if method.name != "zero_shot":
            assert method.fitted, f"{method.name} fitted something but recorded nothing"
        method.save(work / "saved_fitted")
        bb, scorer = tiny()
        fresh = type(method)(method.config, bb, scorer, method.seed)
        fresh.load(work / "saved_fitted")
        assert json.loads(json.dumps(fresh.fitted)) == json.loads(json.dumps(method.fitted))


def test_training_changes_predictions(tmp_path, data_dir, eval_examples):
    """`lora` really trains: its predictions move away from the untrained backbone's."""
    before = build("zero_shot", data_dir, tmp_path)
    after = build("lora", data_dir, tmp_path, extra={"lr": 1e-2})
    assert np.abs(_predict(before, eval_examples) - _predict(after, eval_examples)).max() > 1e-3
    assert torch.is_tensor(next(after.model.parameters()))
