"""The LoRA-XS layer and its persistence.

peft has no LoRA-XS, so the layer is written here: `XSLinear` wraps a frozen base nn.Linear and adds
scale * B R A x, with A, B and R each a plain bias-free nn.Linear. Keeping R an nn.Linear is what lets
`l_lora_xs` reuse the Laplace machinery of `laplace_lora` unchanged: its hooks see R's input (A x, r-dim)
and output gradient exactly as they see a LoRA factor's.

Saved as `lora_xs.json` (rank, scale, module names and shapes, how A and B were made) plus
`lora_xs.safetensors` (A, R, B of every module): A and B are saved rather than recomputed because `wsvd`
depends on training activations and `unfreeze_ab` trains them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from methods.base import ConfigError

MARKER = "lora_xs.json"


class XSLinear(nn.Module):
    def __init__(self, base: nn.Linear, A: torch.Tensor, B: torch.Tensor, scale: float):
        super().__init__()
        r, d_in = A.shape
        self.base, self.scale = base, scale
        self.xs_A = nn.Linear(d_in, r, bias=False, device=base.weight.device)
        self.xs_R = nn.Linear(r, r, bias=False, device=base.weight.device)
        self.xs_B = nn.Linear(r, B.shape[0], bias=False, device=base.weight.device)
        with torch.no_grad():
            self.xs_A.weight.copy_(A)
            self.xs_B.weight.copy_(B)
            self.xs_R.weight.zero_()
        self.xs_A.weight.requires_grad_(False)
        self.xs_B.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.xs_B(self.xs_R(self.xs_A(x)))


def target_linears(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    out = [(n, m) for n, m in model.named_modules()
           if n.rsplit(".", 1)[-1] in targets and isinstance(m, nn.Linear)]
    if not out:
        have = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"no nn.Linear named {', '.join(targets)} in this model; it has {', '.join(have[:12])}")
    return out


def xs_modules(model: nn.Module) -> list[tuple[str, XSLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, XSLinear)]


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@torch.no_grad()
def input_covariances(model, scorer, backbone, modules, examples, batch_size: int, n_batches: int) -> dict:
    """{name: E[x x^T]} of each module's inputs over the real (unpadded) positions of a few training batches."""
    sums = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in modules}
    count = {"n": 0, "mask": None}

    def hook(name, _module, args, _out):
        x = args[0][count["mask"]].double().cpu()
        sums[name] += x.T @ x

    handles = [m.register_forward_hook(lambda mod, a, o, n=n: hook(n, mod, a, o)) for n, m in modules]
    try:
        for i in range(0, min(len(examples), batch_size * n_batches), batch_size):
            batch = scorer.encode(examples[i:i + batch_size]).to(backbone.device)
            count["mask"] = batch.attention_mask.bool()
            count["n"] += int(count["mask"].sum())
            with backbone.autocast():
                scorer.class_logits(model, batch)
    finally:
        for h in handles:
            h.remove()
    return {n: s / max(count["n"], 1) for n, s in sums.items()}


def save(model: nn.Module, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    mods = xs_modules(model)
    tensors = {f"{n}.{part}": getattr(m, f"xs_{part}").weight.detach().float().cpu().contiguous()
               for n, m in mods for part in "ARB"}
    save_file(tensors, str(path / "lora_xs.safetensors"))
    layers = [{"name": n, "d_in": m.xs_A.in_features, "d_out": m.xs_B.out_features} for n, m in mods]
    (path / MARKER).write_text(json.dumps({**meta, "scale": mods[0][1].scale, "layers": layers}, indent=1))


def read_meta(path: Path) -> dict:
    """What the adapter says about itself, without the per-layer list (save() writes that anew)."""
    meta = json.loads((Path(path) / MARKER).read_text())
    return {k: v for k, v in meta.items() if k not in ("layers", "scale")}


def load(backbone, path: Path) -> nn.Module:
    """Inject the saved LoRA-XS layers into `backbone.model`; a clear error for an adapter of another model."""
    from safetensors.torch import load_file
    path = Path(path)
    if not (path / MARKER).is_file():
        raise ConfigError(f"{path} is not a lora_xs adapter (no {MARKER}); point --adapter at the artifacts "
                          "of a lora_xs fit (<results>/fits/<fit id>/artifacts), or leave it out to reuse the "
                          "matching lora_xs fit")
    meta = json.loads((path / MARKER).read_text())
    t = load_file(str(path / "lora_xs.safetensors"))
    model, mods = backbone.model, dict(backbone.model.named_modules())
    for layer in meta["layers"]:
        base = mods.get(layer["name"])
        if isinstance(base, XSLinear):
            base = base.base
        if not isinstance(base, nn.Linear) or (base.out_features, base.in_features) != (layer["d_out"], layer["d_in"]):
            raise ConfigError(f"lora_xs adapter at {path} does not fit this backbone: module {layer['name']} "
                              f"({layer['d_out']}x{layer['d_in']}) is missing or has another shape; "
                              "it was trained on another model")
        m = XSLinear(base, t[f"{layer['name']}.A"], t[f"{layer['name']}.B"], meta["scale"])
        with torch.no_grad():
            m.xs_R.weight.copy_(t[f"{layer['name']}.R"])
        m.requires_grad_(False)
        m.base.requires_grad_(False)
        replace(model, layer["name"], m)
    model.eval()
    return model
