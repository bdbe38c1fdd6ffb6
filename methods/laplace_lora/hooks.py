"""Which LoRA matrices carry the posterior, and hooks that see their inputs and output gradients.

Every lora_A and lora_B of peft's LoRA Linear is a plain nn.Linear; for an example whose input rows (one,
or one per choice in unpacked `loglik` scoring) have inputs a_t and output gradients g_t at positions t,
the gradient of a scalar w.r.t. its weight W [out, in] is sum_t g_t a_t^T. A forward hook keeps a_t and
hangs a tensor hook on the output, so each backward pass hands g_t to a callback: one backward pass yields
the per-example gradients of all layers at once, each consumed layer by layer as backward reaches it.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from methods.shared.adapter import lora_layers
from methods.base import ConfigError

SUBSETS = ("all", "last_layer")


def _block(name: str) -> str:
    """The transformer block a module belongs to: its name up to the last numeric component."""
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[: idx[-1] + 1]) if idx else name


def in_subset(named: list, subset: str) -> list:
    """The modules of `named` (in model order) that `subset` keeps: all, or those of the last block."""
    if subset == "last_layer" and named:
        last = _block(named[-1][0])
        return [(n, m) for n, m in named if _block(n) == last]
    return named


def posterior_layers(model, subset: str = "all") -> list[tuple[str, nn.Linear]]:
    """(module name, nn.Linear) of every lora_A and lora_B in `subset`, in model order."""
    mods = lora_layers(model)
    if not mods:
        raise ConfigError("the model has no LoRA layers; laplace_lora needs a trained LoRA adapter")
    out = []
    for name, m in in_subset(mods, subset):
        active = [a for a in m.active_adapters if a in m.lora_A]
        if len(active) != 1:
            raise ConfigError(f"{name} has active LoRA adapters {active}; laplace_lora needs exactly one")
        ad = active[0]
        if ad in getattr(m, "lora_variant", {}):
            raise ConfigError(f"{name} uses a LoRA variant (e.g. DoRA); laplace_lora supports plain LoRA only")
        out += [(f"{name}.lora_A.{ad}", m.lora_A[ad]), (f"{name}.lora_B.{ad}", m.lora_B[ad])]
    return out


def row_examples(batch) -> torch.Tensor:
    """[R] the example each input row belongs to. A row may hold one choice or (packed loglik scoring)
    all K choices of one example; either way it belongs to exactly one example."""
    score_row = getattr(batch, "score_row", None)
    if score_row is None or score_row.numel() == 0:  # one row per scored (example, choice)
        return batch.row_example
    out = torch.zeros(batch.input_ids.shape[0], dtype=torch.long, device=score_row.device)
    out[score_row] = batch.row_example
    return out


def per_example_grads(a: torch.Tensor, g: torch.Tensor, row_example: torch.Tensor, n: int) -> torch.Tensor:
    """[n, out, in]: sum over an example's rows and positions of g_t a_t^T (fp32, whatever autocast used)."""
    per_row = torch.einsum("rto,rti->roi", g.float(), a.float())
    if per_row.shape[0] == n and torch.equal(row_example, torch.arange(n, device=row_example.device)):
        return per_row
    return per_row.new_zeros(n, *per_row.shape[1:]).index_add_(0, row_example, per_row)


class Capture:
    """Context: forward hooks on `layers` keep each input; backward passes call `on_grad(name, a, g)`.

    Inside it the LoRA weights require grad (a loaded adapter has them frozen), so the outputs carry a
    graph; `backward(logits, v)` then runs one pass with d loss/d logits = v, computing nothing for the
    frozen base weights.
    """

    def __init__(self, layers: list[tuple[str, nn.Linear]]):
        self.layers = layers
        self.inputs: dict[str, torch.Tensor] = {}
        self.on_grad: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None

    def __enter__(self):
        self._flags = [m.weight.requires_grad for _, m in self.layers]
        for _, m in self.layers:
            m.weight.requires_grad_(True)
        self._handles = [m.register_forward_hook(partial(self._forward, n)) for n, m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        for (_, m), flag in zip(self.layers, self._flags):
            m.weight.requires_grad_(flag)
            m.weight.grad = None
        self.inputs.clear()

    def reset(self) -> None:
        """Call before each forward: a layer seen twice in one forward would make its gradient a sum."""
        self.inputs.clear()

    def _forward(self, name, module, args, out):
        if name in self.inputs:
            raise RuntimeError(f"{name} ran twice in one forward; per-example gradients assume one call")
        self.inputs[name] = args[0].detach()
        if out.requires_grad:
            out.register_hook(partial(self._backward, name))

    def _backward(self, name, g):
        if self.on_grad is not None:
            self.on_grad(name, self.inputs[name], g.detach())

    def backward(self, logits: torch.Tensor, v: torch.Tensor, retain_graph: bool = True) -> None:
        weights = [m.weight for _, m in self.layers]
        torch.autograd.backward(logits, v, inputs=weights, retain_graph=retain_graph)
        for w in weights:  # the weight gradients are a by-product; only the hooks' g_t are used
            w.grad = None
