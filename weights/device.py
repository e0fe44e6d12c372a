"""The one device picker of both stages: where the encoders, the LLM and the fusion network run."""
from __future__ import annotations

from collections.abc import Mapping

import torch


def pick_device(device: str = "auto", env: Mapping[str, str] | None = None) -> torch.device:
    """auto = CUDA when there is one, else the CPU; a CUDA device asked for where torch sees none is refused.
    env: the process environment under torchrun, where a CUDA device without an index is the process's own
    GPU, cuda:LOCAL_RANK (one GPU per process)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU. Fix: use --device cpu or auto")
    if chosen.type == "cuda" and chosen.index is None and env and int(env.get("WORLD_SIZE", 1)) > 1:
        return torch.device("cuda", int(env.get("LOCAL_RANK", 0)))
    return chosen
