"""`laplace_lora` (Yang et al., ICLR 2024): method.py is the Method; the rest is its machinery, shared with
`l_lora_xs`: hooks on the LoRA layers (hooks.py), Kronecker factors, full or low-rank (factors.py,
curvature.py), the per-layer Gaussian posterior (posterior.py), the prior's precision (prior.py), and the
linearised / sampled predictive (predictive.py).

Written here rather than taken from laplace-torch: laplace-torch has no low-rank Kronecker factors, and its
GLM predictive builds Jacobians with torch.func, measured 14x slower than the per-example gradients that
forward/backward hooks on the LoRA layers give for the price of K backward passes.
"""
from methods.laplace_lora.method import LaplaceLoRA, LaplaceLoRAConfig  # noqa: E402

__all__ = ["LaplaceLoRA", "LaplaceLoRAConfig"]
