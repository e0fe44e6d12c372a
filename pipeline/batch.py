"""The unit stage two works on: a padded batch of cached features with its prompts' inputs and targets."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cache.schema import LabelSpec


@dataclass(frozen=True)
class TaskSpec:
    """One thing the model answers: a label of one cache (several caches = several tasks, one model)."""

    name: str  # "<dataset>/<label>", e.g. "meld/emotion", "sims-v2/sentiment"
    label: LabelSpec  # class names, or the score range

    @property
    def is_classification(self) -> bool:
        return self.label.kind == "class"


@dataclass
class Batch:
    features: dict[str, torch.Tensor]  # modality -> (B, T_m, D_m) float32, zero beyond each row's length
    masks: dict[str, torch.Tensor]  # modality -> (B, T_m) bool, True = real step; all False = modality missing
    context: dict[str, torch.Tensor]  # modality -> (B, C, D_m): mean-pooled features of the C preceding turns
    context_mask: torch.Tensor  # (B, C) bool, True = a real preceding utterance (dialogue corpora only)
    texts: list[str]  # transcripts
    languages: list[str]  # "en" | "zh": prompt language per row
    task: torch.Tensor  # (B,) long: index into the model's task list
    targets: list  # class index (int) or score (float) per row
    rows: torch.Tensor  # (B,) long: row indices in the cache, for reports
    # Per row: (speaker, transcript) of the preceding turns of its dialogue, oldest first (empty outside dialogues).
    history: list[list[tuple[str, str]]] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)  # who speaks in each row ("" = unnamed); [] = no names

    def __len__(self) -> int:
        return len(self.texts)

    def to(self, device) -> "Batch":
        move = lambda d: {k: v.to(device) for k, v in d.items()}
        return Batch(move(self.features), move(self.masks), move(self.context), self.context_mask.to(device),
                     self.texts, self.languages, self.task.to(device), self.targets, self.rows, self.history,
                     self.speakers)
