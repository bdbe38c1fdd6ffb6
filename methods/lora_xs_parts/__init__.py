"""Building blocks of `lora_xs`: the projection families that fix A and B, and the module that holds the
trainable r x r core R between them (injected in place of each target nn.Linear, saved as safetensors)."""
