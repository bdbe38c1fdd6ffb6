"""Building blocks of `bayesian_lora` (methods/bayesian_lora.py).

- variational.py: q(U) over one inducing matrix (diagonal or matrix-normal Gaussian, optional zuko MAF);
- inducing.py: one Bayesian LoRA factor W | U (sparse-GP conditional, pathwise sampling, the two KLs).
"""
from methods.bayesian_lora_parts.inducing import InducingFactor
from methods.bayesian_lora_parts.variational import FAMILIES, InducingPosterior

__all__ = ["FAMILIES", "InducingFactor", "InducingPosterior"]
