"""`lora_xs`: LoRA-XS, a trainable r x r core between frozen projections of the pretrained weight.

- method.py: the Method (settings, training, saving);
- module.py: the layer injected in place of each target nn.Linear (and its safetensors persistence);
- projections.py: the projection families (svd, wsvd, dct, random, hybrids) that fix A and B.
"""
from methods.lora_xs.method import LoRAXS, LoRAXSConfig

__all__ = ["LoRAXS", "LoRAXSConfig"]
