"""The fusion network: three experts over cached modality features, hierarchical gating, pseudo tokens.

Pure torch: it knows nothing of caches or LLMs beyond the sizes it is given.
"""
from .config import EXPERTS, FusionConfig
from .network import FusionNetwork, FusionOutput

__all__ = ["EXPERTS", "FusionConfig", "FusionNetwork", "FusionOutput"]
