"""Scorers against a plain reference: one unpadded sequence per choice, full-vocabulary log-softmax."""
from __future__ import annotations

import pytest
import torch

from backbones import Scorer
from tasks import load_split
from tests.helpers import tiny


def reference_loglik(model, tok, ctx, cont, norm):
    ids = tok(ctx + cont, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    ll = sum(logp[t - 1, ids[t]].item() for t in range(n_ctx, len(ids)))
    return ll / {"token": len(ids) - n_ctx, "char": len(cont), "none": 1}[norm]


@pytest.fixture(scope="module")
def examples(data_dir):
    # mixed 3/4/5-choice ARC items and WinoGrande (one context per option) in the same batch
    arc = load_split("arc_easy", "test", data_dir=data_dir, limit=6)
    wg = load_split("winogrande_s", "test", data_dir=data_dir, limit=2)
    return arc + wg


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "per-choice"])
@pytest.mark.parametrize("norm", ["token", "char", "none"])
def test_loglik_matches_plain_per_choice_loop(examples, norm, pack):
    bb, _ = tiny()
    scorer = Scorer(bb.tokenizer, "loglik", norm, pack=pack)
    with torch.no_grad():
        got = scorer.class_logits(bb.model, scorer.encode(examples))
    for b, e in enumerate(examples):
        for k in range(e.n_choices):
            ref = reference_loglik(bb.model, bb.tokenizer, e.contexts[k], e.continuations[k], norm)
            assert got[b, k].item() == pytest.approx(ref, abs=1e-4)
        assert torch.isinf(got[b, e.n_choices:]).all()


def test_label_logits_match_unpadded_forward(examples):
    bb, _ = tiny()
    scorer = Scorer(bb.tokenizer, "label")
    with torch.no_grad():
        got = scorer.class_logits(bb.model, scorer.encode(examples))
        for b, e in enumerate(examples):
            ids = bb.tokenizer(e.label_prompt, add_special_tokens=False)["input_ids"]
            last = bb.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            want = last[scorer.label_token_ids(e.label_words, e.label_prompt)]
            torch.testing.assert_close(got[b, : e.n_choices], want, atol=1e-4, rtol=0)


def test_label_tokens_are_distinct_single_tokens(data_dir):
    bb, _ = tiny()
    scorer = Scorer(bb.tokenizer, "label")
    e = load_split("boolq", "test", data_dir=data_dir, limit=1)[0]
    ids = scorer.label_token_ids(e.label_words, e.label_prompt)
    assert e.label_words == ("False", "True") and len(set(ids)) == 2
    decoded = [bb.tokenizer.decode([i]).strip() for i in ids]
    assert decoded[0] in ("F", "False") and decoded[1] in ("T", "True")  # class 0 = False, class 1 = True


def test_batch_composition_does_not_change_scores(examples):
    """Left padding and position ids: an example scores the same alone or in a padded batch."""
    bb, _ = tiny()
    for mode, pack in (("loglik", True), ("loglik", False), ("label", False)):
        scorer = Scorer(bb.tokenizer, mode, pack=pack)
        with torch.no_grad():
            full = scorer.class_logits(bb.model, scorer.encode(examples))
            for b, e in enumerate(examples):
                alone = scorer.class_logits(bb.model, scorer.encode([e]))
                torch.testing.assert_close(full[b, : e.n_choices], alone[0, : e.n_choices], atol=1e-4, rtol=0)


def test_bad_mode_rejected():
    bb, _ = tiny()
    with pytest.raises(ValueError, match="scoring"):
        Scorer(bb.tokenizer, "logprob")


def test_packed_batch_is_smaller_and_expands_like_repeats(examples):
    """Packing shares each prompt once; expand(s) gives s identical copies, sample-major."""
    bb, _ = tiny()
    packed, plain = Scorer(bb.tokenizer, "loglik"), Scorer(bb.tokenizer, "loglik", pack=False)
    assert packed.encode(examples).n_tokens < 0.7 * plain.encode(examples).n_tokens
    batch = packed.encode(examples)
    with torch.no_grad():
        one = packed.class_logits(bb.model, batch)
        three = packed.class_logits(bb.model, batch.expand(3))
    torch.testing.assert_close(three.view(3, *one.shape), one.expand(3, *one.shape), atol=1e-4, rtol=0)
