"""`samples`: an S-sample predictive (methods/shared/sampling.py: the batch repeated S times, one forward pass with a
weight sample per copy) against S times one deterministic `lora` evaluation of the same questions.

t_S / (S * t_1) < 1 means the batch-expanded pass beats S separate passes (wider matmuls use the cores
better; the prompt is still processed once per sample). `tfb` perturbs A' with a fixed sigma (its value does
not change the cost); `mc_dropout` samples dropout masks on a freshly wrapped (untrained) adapter, whose
cost is that of a trained one.
"""
from __future__ import annotations

import torch

from bench.common import Context, add_target, report, timed_loop


def _stochastic(ctx: Context, adapter):
    s = ctx.s
    m = ctx.method(s.samples_method, ctx.backbone())
    if s.samples_method == "tfb":
        m._load_adapter(adapter)
        m.set_state({"sigma_q": 0.01})
    elif s.samples_method == "mc_dropout":
        m._wrap()  # lora_dropout 0.1 on a new adapter (the saved one has no dropout)
    else:
        raise ValueError(f"samples-method {s.samples_method!r}: use tfb or mc_dropout")
    return m


def run(ctx: Context) -> dict:
    s = ctx.s
    rep = report("samples", f"S-sample predictive ({s.samples_method}) vs S deterministic lora evaluations")
    adapter, _ = ctx.adapter()
    examples = ctx.examples("test", s.samples_examples)
    lora = ctx.method("lora", ctx.backbone())
    lora.load(adapter)
    stoch = _stochastic(ctx, adapter)
    batches = ctx.encode_all(lora.scorer, examples)
    gen = torch.Generator().manual_seed(s.seed)
    with torch.no_grad():
        _, t1 = timed_loop(lambda b: lora.predict_logprobs(b, 1, gen), batches)
        outs, ts = timed_loop(lambda b: stoch.predict_logprobs(b, s.samples, gen), batches)
    spread = float(torch.cat([o.exp().std(1).flatten() for o in outs]).max())
    ratio = ts / (s.samples * t1)
    rep["tables"].append({"title": f"samples: {len(examples)} {s.task} test questions, batch {s.batch_size}, "
                                   f"S={s.samples}, {s.precision}",
                          "header": ["predictive", "seconds", "per question", "t_S / (S * t_1)"],
                          "rows": [["lora, deterministic (t_1)", f"{t1:.2f}", f"{t1 / len(examples):.3f}", "-"],
                                   [f"{s.samples_method}, S={s.samples} (t_S)", f"{ts:.2f}",
                                    f"{ts / len(examples):.3f}", f"{ratio:.2f}"]]})
    rep["figures"] = {"t_1_seconds": t1, "t_S_seconds": ts, "S": s.samples, "ratio": ratio,
                      "method": s.samples_method, "max_prob_std_over_samples": spread}
    add_target(rep, "S-sample time / (S x deterministic)", ratio, 0.8, False, "")
    rep["notes"].append("one untimed warm-up batch each; samples differ (max std of a class probability over "
                        f"samples {spread:.2e})")
    return rep
