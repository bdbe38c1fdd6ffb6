"""Machinery shared by several methods: loading peft adapters (adapter.py), the post-hoc base class
(posthoc.py), batch-expanded posterior sampling (sampling.py) and the shared training loop (training.py).
The interface itself is methods/base.py, the registry methods/registry.py, typed settings methods/settings.py."""
