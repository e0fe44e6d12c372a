"""LoRA adapters on the LLM's projections via peft; every base weight stays frozen."""
from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")  # Llama-family names; SmolLM2, Qwen and Mistral share them
MLP = ("gate_proj", "up_proj", "down_proj")
GROUPS = {"attention": ATTENTION, "mlp": MLP}


def lora_targets(spec: str) -> tuple[str, ...]:
    """Module names from a comma-separated spec of names and the groups attention / mlp, e.g. "attention,mlp"."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--lora-targets {spec!r} names no module. Fix: e.g. attention, attention,mlp or "
                         f"q_proj,v_proj")
    return tuple(dict.fromkeys(m for n in names for m in GROUPS.get(n, (n,))))


def attach_lora(model, r: int, alpha: int, dropout: float, targets: tuple[str, ...]) -> PeftModel:
    """Wrap model with fresh LoRA weights on the modules named in targets."""
    # peft adapts whichever names match and drops the rest silently, so a misspelt one would go unnoticed.
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    if missing := [t for t in targets if t not in linear]:
        raise ValueError(f"--lora-targets: the LLM has no linear module named {', '.join(missing)}. Fix: choose among "
                         f"{', '.join(sorted(linear))} or the groups attention, mlp")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return get_peft_model(model, config)


def load_lora(model, directory) -> PeftModel:
    """Wrap model with the adapter saved in directory by PeftModel.save_pretrained, frozen (for inference)."""
    return PeftModel.from_pretrained(model, directory)
