"""`score`: evaluation throughput of the suite's scorers against plain per-choice loops, and their agreement.

Scorers (backbones/scoring.py) on the base model, no grad:
- loglik packed: the K choices behind one copy of the prompt, only scored positions projected (the default);
- loglik per-choice: `Scorer(pack=False)`, one left-padded row per choice, still `logits_to_keep`;
- loglik plain: bench/plain.py, one right-padded row per choice, full-vocabulary logits at every position;
- label, and label plain (full logits of every position, the last real one read).
Agreement is the largest |difference| of the class log-probabilities (log-softmax over the K choices) from
the plain loop of the same mode, in the bench precision on every timed question and in fp32 on a few.
"""
from __future__ import annotations

import torch

from backbones import Scorer
from bench.common import (
    FLOP_RULE,
    Context,
    add_target,
    batched,
    frac_of_peak,
    gflops,
    nonembedding_params,
    report,
    timed_loop,
)
from bench.plain import encode_plain, plain_class_logits


def _class_logprobs(ctx: Context, bb, scorer: Scorer, plain: bool, precision: str):
    """A function: list of questions -> [B, K] class log-probabilities (encoding included, as in evaluation)."""
    def fn(examples):
        with torch.no_grad(), ctx.autocast(bb, precision):
            if plain:
                logits = plain_class_logits(bb.model, encode_plain(scorer, examples))
            else:
                logits = scorer.class_logits(bb.model, scorer.encode(examples).to(bb.device))
        return logits.float().log_softmax(-1)
    return fn


VARIANTS = (  # name, scoring mode, packed, plain
    ("loglik packed (ours, default)", "loglik", True, False),
    ("loglik per-choice (ours, pack=False)", "loglik", False, False),
    ("loglik plain", "loglik", False, True),
    ("label (ours)", "label", False, False),
    ("label plain", "label", False, True),
)


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest |a - b| over present choices (both -inf where a question has fewer than K)."""
    x, y = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    ok = torch.isfinite(x) & torch.isfinite(y)
    if not torch.equal(ok, torch.isfinite(x)) or not torch.equal(ok, torch.isfinite(y)):
        return float("inf")  # the two disagree on which choices exist
    return float((x[ok] - y[ok]).abs().max())


def run(ctx: Context) -> dict:
    s = ctx.s
    rep = report("score", "evaluation examples/s: our scorers vs plain per-choice loops, and their agreement")
    bb = ctx.backbone()
    n_params, peak = nonembedding_params(bb.model), ctx.peak()["gflops"]
    examples = ctx.examples("test", s.score_examples)
    batches = batched(examples, s.batch_size)
    check = batched(examples[: s.score_check_examples], s.batch_size)
    scorers = {(mode, pack): Scorer(bb.tokenizer, mode, pack=pack) for _, mode, pack, _ in VARIANTS}
    tokens = {mode: sum(encode_plain(scorers[(mode, False)], b).n_tokens for b in batches) for mode in ("loglik", "label")}

    out, secs, fp32 = {}, {}, {}
    for name, mode, pack, plain in VARIANTS:
        scorer = scorers[(mode, pack)]
        out[name], secs[name] = timed_loop(_class_logprobs(ctx, bb, scorer, plain, s.precision), batches)
        fp32[name] = [_class_logprobs(ctx, bb, scorer, plain, "fp32")(b) for b in check]

    rows, fig = [], {"plain_layout_tokens": tokens, "nonembedding_params": n_params, "examples": len(examples)}
    for name, mode, _, plain in VARIANTS:
        ref = "loglik plain" if mode == "loglik" else "label plain"
        g = gflops(n_params, tokens[mode], secs[name], 2)
        d_bf, d_32 = max_abs_diff(out[name], out[ref]), max_abs_diff(fp32[name], fp32[ref])
        fig[name] = {"seconds": secs[name], "examples_per_s": len(examples) / secs[name],
                     "speedup_vs_plain": secs[ref] / secs[name], "gflops": g,
                     f"max_abs_diff_{s.precision}": d_bf, "max_abs_diff_fp32": d_32}
        diffs = [d_32] + ([d_bf] if s.precision != "fp32" else [])
        rows.append([name, f"{secs[name]:.2f}", f"{len(examples) / secs[name]:.1f}", f"{secs[ref] / secs[name]:.2f}x",
                     f"{g:.1f}", frac_of_peak(g, peak)] + ["-" if plain else f"{d:.1e}" for d in diffs])
    header = ["scorer", "seconds", "examples/s", "vs plain", "GFLOP/s", "of bf16 peak",
              f"max|dlogp| fp32 ({min(len(examples), s.score_check_examples)} q)"]
    if s.precision != "fp32":
        header.append(f"max|dlogp| {s.precision} ({len(examples)} q)")
    rep["tables"].append({"title": f"score: {len(examples)} {s.task} test questions, batch {s.batch_size}, {s.precision}; "
                                   "max|dlogp| = largest |difference| of class log-probs from the plain loop",
                          "header": header, "rows": rows})
    rep["figures"] = fig
    add_target(rep, "packed loglik agrees with plain (fp32 max |d log p|)",
               fig["loglik packed (ours, default)"]["max_abs_diff_fp32"], 1e-4, False)
    rep["notes"] += ["each scorer: one untimed warm-up batch, then every batch timed (tokenisation included)",
                     "label scorers read one position per question, so their GFLOP/s count the label prompt's tokens",
                     FLOP_RULE]
    return rep
