"""Building blocks of `laplace_lora` (Yang et al., ICLR 2024): hooks on the LoRA layers, Kronecker factors
(full or low-rank), the per-layer Gaussian posterior, and the linearised / sampled predictive.

Written here rather than taken from laplace-torch: laplace-torch has no low-rank Kronecker factors, and its
GLM predictive builds Jacobians with torch.func, measured 14x slower than the per-example gradients that
forward/backward hooks on the LoRA layers give for the price of K backward passes.
"""
