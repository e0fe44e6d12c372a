"""Where frozen weights come from: one model-reference resolver for both stages (reference.py).

A leaf like cache/: it imports nothing of egmf, so extract (encoders) and llm (the causal LM) both use it.
"""
from .quiet import quiet_loaders
from .reference import (ModelSource, RandomModel, build_random, file_sha256, hub_revision, models_home, resolve,
                        weights_identity, weights_sha256)

__all__ = ["ModelSource", "RandomModel", "build_random", "file_sha256", "hub_revision", "models_home",
           "quiet_loaders", "resolve", "weights_identity", "weights_sha256"]
