"""`levers`: one deterministic evaluation pass over the same questions under each speed lever, alone, so
what each pays is visible (the `score` comparison times them all together against a plain loop).

- precision: fp32 weights and compute / fp32 weights under bf16 autocast (the default) / the frozen base
  nn.Linear weights stored in bf16 under autocast (autocast casts them to bf16 for every matmul anyway, so
  the products are the same; storing them in bf16 saves the per-call cast);
- layout: K choices packed behind one prompt (default) / one row per choice (`Scorer(pack=False)`).
Class log-probabilities are compared with the default's, so a lever that changes results shows it.
"""
from __future__ import annotations

import torch

from backbones import Scorer
from bench.common import Context, gflops, nonembedding_params, report, timed_loop
from bench.plain import encode_plain


def bf16_linear_weights(model: torch.nn.Module) -> int:
    """Store every frozen nn.Linear weight in bf16, except one tied to the input embedding; returns how many."""
    tied = model.get_input_embeddings().weight
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.weight is not tied and not m.weight.requires_grad:
            m.weight.data = m.weight.data.to(torch.bfloat16)
            n += 1
    return n


def run(ctx: Context) -> dict:
    s = ctx.s
    rep = report("levers", "one evaluation pass per speed lever (deterministic, no adapter)")
    examples = ctx.examples("test", s.score_examples)
    bb = ctx.backbone()
    n = nonembedding_params(bb.model)
    plain_tokens = sum(encode_plain(Scorer(bb.tokenizer, "loglik"), examples[i:i + s.batch_size]).n_tokens
                       for i in range(0, len(examples), s.batch_size))

    def timed(scorer: Scorer, precision: str):
        batches = ctx.encode_all(scorer, examples)
        cast = torch.autocast(bb.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")  # whatever --precision
        with torch.no_grad(), cast:
            outs, secs = timed_loop(lambda b: scorer.class_logits(bb.model, b).float().log_softmax(-1), batches)
        K = max(o.shape[1] for o in outs)  # batches differ in their widest question (3-5 choices)
        padded = [torch.nn.functional.pad(o, (0, K - o.shape[1]), value=float("-inf")) for o in outs]
        return torch.cat([o.masked_fill(~torch.isfinite(o), 0) for o in padded]), secs

    packed, per_choice = Scorer(bb.tokenizer, "loglik"), Scorer(bb.tokenizer, "loglik", pack=False)
    runs = [("fp32 weights, fp32 compute", packed, "fp32"), ("fp32 weights, bf16 autocast (default)", packed, "bf16"),
            ("one row per choice, bf16 autocast", per_choice, "bf16")]
    out = {label: timed(sc, prec) for label, sc, prec in runs}
    n_cast = bf16_linear_weights(bb.model)
    out["bf16 frozen Linear weights, bf16 autocast"] = timed(packed, "bf16")
    ref_label = runs[1][0]
    ref, ref_s = out[ref_label]
    rows, fig = [], {"questions": len(examples), "plain_layout_tokens": plain_tokens, "bf16_cast_linears": n_cast}
    for label, (logp, secs) in out.items():
        diff = float((logp - ref).abs().max())
        g = gflops(n, plain_tokens, secs, 2)
        rows.append([label, f"{secs:.2f}", f"{len(examples) / secs:.1f}", f"{ref_s / secs:.2f}x", f"{g:.0f}",
                     f"{diff:.1e}"])
        fig[label] = {"seconds": secs, "examples_per_s": len(examples) / secs, "vs_default": ref_s / secs,
                      "gflops": g, "max_abs_logprob_diff_vs_default": diff}
    rep["tables"].append({"title": f"levers: {len(examples)} {s.task} test questions, batch {s.batch_size}",
                          "header": ["lever", "seconds", "questions/s", "speed vs default", "GFLOP/s",
                                     "max |d log p| vs default"], "rows": rows})
    rep["figures"] = fig
    rep["notes"].append("GFLOP/s credit the plain per-choice layout's tokens (see FLOP rule); one untimed "
                        "warm-up batch per lever")
    return rep
