"""The fusion network: three experts over cached modality features, hierarchical gating, pseudo tokens.

Pure torch: it knows nothing of caches or LLMs beyond the sizes it is given.
"""
from .config import FusionConfig
from .network import EXPERTS, FusionNetwork, FusionOutput

__all__ = ["EXPERTS", "FusionConfig", "FusionNetwork", "FusionOutput"]
