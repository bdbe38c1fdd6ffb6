"""`tfb`: Training-Free Bayesianization of a trained LoRA adapter.

- method.py: the Method (SVD reparametrisation, noise on A', the anchor-set degradation and its variants);
- sigma_search.py: the one-dimensional search for sigma_q (reference bisection, or interpolation).
"""
from methods.tfb.method import TFB, TFBConfig

__all__ = ["TFB", "TFBConfig"]
