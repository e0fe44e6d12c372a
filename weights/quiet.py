"""Quieter model loading for the command-line tools."""
from __future__ import annotations

import warnings


def quiet_loaders() -> None:
    """The tools' own tqdm bars report progress, so the per-file bars of transformers' loaders are noise at every
    start; and peft 0.21 still calls an attribute that transformers 5 deprecates, a warning nothing a user can
    act on."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
