"""`bayesian_lora`: Bayesian-LoRA, LoRA factors with sparse-GP inducing variables.

- method.py: the Method (what is trained, sampled and saved; its settings and departures from the reference);
- inducing.py: one Bayesian LoRA factor W | U (sparse-GP conditional, pathwise sampling, the two KLs);
- variational.py: q(U) over one inducing matrix (diagonal or matrix-normal Gaussian, optional zuko MAF).
"""
from methods.bayesian_lora.inducing import InducingFactor
from methods.bayesian_lora.method import BayesianLoRA, BayesianLoRAConfig
from methods.bayesian_lora.variational import FAMILIES, InducingPosterior

__all__ = ["FAMILIES", "BayesianLoRA", "BayesianLoRAConfig", "InducingFactor", "InducingPosterior"]
