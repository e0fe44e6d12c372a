"""Where frozen weights come from and where models run, for both stages: the model-reference resolver
(reference.py), the device picker (device.py), quieter loaders for the command-line tools (quiet.py).

A leaf like cache/: it imports nothing of egmf, so extract (encoders), llm (the causal LM) and pipeline all use it.
"""
from .device import pick_device
from .quiet import quiet_loaders
from .reference import (ModelSource, RandomModel, build_once, build_random, file_sha256, hub_revision,
                        models_home, resolve, weights_identity, weights_sha256)

__all__ = ["ModelSource", "RandomModel", "build_once", "build_random", "file_sha256", "hub_revision",
           "models_home", "pick_device", "quiet_loaders", "resolve", "weights_identity", "weights_sha256"]
