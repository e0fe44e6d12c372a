"""EGMF: the fusion network's pseudo tokens spliced into a task prompt of a LoRA-tuned causal LM.

forward() gives the training loss (LM loss on the answer tokens + the expert gate's balance loss);
predict() answers by constrained decoding, so every answer is a valid class name or score string.
A saved model is its trainable weights only (peft adapter + fusion state dict) and model.json: the model's
whole config (every setting that changes what it reads or answers) and the frozen base LLM's reference and
sha256, from which the LLM is loaded again and checked.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
import torch.nn.functional as F
from torch import nn

from ..cache.schema import LabelSpec
from ..fuse import FusionConfig, FusionNetwork
from ..llm.decoding import AnswerTrie, greedy_tokens, score_answers, spelled_answer
from ..llm.loading import DEFAULT_LLM, llm_sha256, load_causal_lm
from ..llm.lora import ATTENTION, attach_lora, load_lora
from ..llm.prompts import Prompter, format_score
from ..llm.sequences import answer_loss, causal_mask, embed_rows, embedding_rms, positions

from .batch import Batch, TaskSpec

CONFIG_FILE, FUSION_FILE, ADAPTER_DIR = "model.json", "fusion.safetensors", "adapter"
# model.json's format: 2 added the LLM's sha256 and context_turns (format 1, unnumbered, had neither).
MODEL_FORMAT = 2
SCORE_READOUTS = ("mean", "median", "argmax")


@dataclass
class ModelConfig:
    modality_dims: dict[str, int]  # feature size per modality, read from the cache(s)
    tasks: list[TaskSpec]  # what the model answers; Batch.task indexes this list
    llm: str = DEFAULT_LLM  # a model reference (egmf.weights): hub id[@revision], path, package:, chunks:, random:
    llm_sha256: str | None = None  # of the LLM's weights: recorded when the model is built, checked when reloaded
    lora_r: int = 8  # rank of the LoRA updates
    lora_alpha: int = 16  # LoRA scale = alpha / r
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ATTENTION  # add llm.lora.MLP to adapt the feed-forward layers too
    fusion: FusionConfig = field(default_factory=FusionConfig)
    max_text_tokens: int = 64  # transcripts are cut here: prompt length drives the LLM's step time
    # Dialogue corpora: how many preceding turns the global context expert reads (their pooled features).
    context_turns: int = 4
    # Dialogue corpora: the most recent earlier transcripts of the dialogue that fit in this many tokens go in
    # the prompt too (0 = none). MELD text-only dev, 2 epochs: weighted F1 59.4 with 48, 57.9 with 0, at 1.5x the
    # step time (README, MELD section).
    max_history_tokens: int = 48
    # Regression value from the exact distribution over all score strings: its "mean", "median" or "argmax" (all
    # three are reported; this one is the answer). Measured on synthetic MOSEI-range data (tiny LM, 3 seeds,
    # held-out MAE after 300 steps): mean 0.40, median 0.41, argmax 0.44, masked greedy 0.44. The mean wins and
    # gives continuous values for Corr.
    score_readout: str = "mean"
    # Weight of an auxiliary head's loss (a linear classifier, or regressor, on the mean pseudo token) added to the
    # LM loss; 0 = none. It gives the fusion a direct gradient from the label while the LLM still learns to read
    # the tokens and generates the answer; the head is used in training only and not saved with the model.
    # RAVDESS audio-only dev accuracy, SmolLM2, 6 epochs, seeds 0-2: 73.3 +- 2.1 with weight 1, 60.2 +- 11.2
    # without (README, RAVDESS section).
    head_weight: float = 1.0
    # A regular expression whose first group, searched in each clip id, names the clip's speaker: the features
    # are then standardised per speaker over a split's clips before the fusion (pipeline.data), so the model reads
    # how a clip departs from its speaker's usual voice. RAVDESS audio-only dev (actors unseen in training): the
    # model goes from 73.3 +- 2.1 to 83.9 +- 1.5, the linear probe from 81.7 to 89.6 (README, RAVDESS section).
    # A single clip cannot be standardised alone.
    speaker_pattern: str | None = None
    # Name each transcript's speaker in the prompt ("Before: Ross: ...\nTranscript: Rachel: ..."), from the
    # cache's speaker column (MELD's Speaker); only with the text modality, like the transcripts themselves.
    speaker_names: bool = False

    def __post_init__(self):
        if self.score_readout not in SCORE_READOUTS:
            raise ValueError(f"score_readout must be one of {SCORE_READOUTS}, not {self.score_readout!r}")
        if not self.tasks:
            raise ValueError("ModelConfig needs at least one task")
        if self.head_weight > 0 and self.fusion.n_tokens == 0:
            raise ValueError("--head-weight needs pseudo tokens (the head reads them); without them (--ablate "
                             "no-tokens) pass --head-weight 0")
        if self.speaker_pattern is not None:
            try:
                re.compile(self.speaker_pattern)
            except re.error as e:
                raise ValueError(f"--speaker-pattern {self.speaker_pattern!r}: not a regular expression ({e}). Fix: "
                                 f"correct it, e.g. '-(\\d+)$' for RAVDESS ids") from e
        for option, value in (("context-turns", self.context_turns), ("history-tokens", self.max_history_tokens)):
            if value < 0:
                raise ValueError(f"--{option} {value}: must be at least 0. Fix: pass 0 for no dialogue context")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = [{"name": t.name, "label": asdict(t.label)} for t in self.tasks]
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "model config") -> "ModelConfig":
        d = dict(d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{where}: unknown settings {sorted(unknown)}, written by a newer egmf. Fix: upgrade "
                             f"egmf to read it")
        d["tasks"] = [TaskSpec(t["name"], LabelSpec.from_dict(t["label"])) for t in d["tasks"]]
        d["fusion"] = FusionConfig(**d["fusion"])
        d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)


@dataclass
class ModelOutput:
    loss: torch.Tensor  # (): what the optimiser minimises
    lm_loss: torch.Tensor  # (): cross-entropy of the answer tokens
    aux_loss: torch.Tensor  # (): weighted load-balance loss of the expert gate
    head_loss: torch.Tensor  # (): the auxiliary head's loss, unweighted (0 without a head)
    expert_weights: torch.Tensor  # (B, 3) in fuse.EXPERTS order
    modality_gates: torch.Tensor  # (B, 3, M)


@dataclass
class Prediction:
    answers: list[str]  # what the LLM answered: a class name or a one-decimal score
    values: list  # class index (int) or score (float) per row
    expert_weights: torch.Tensor  # (B, 3)
    modality_weights: torch.Tensor  # (B, M): each modality's share in the pseudo tokens
    parse_failures: int  # answers that are not a valid label or in-range number (0 by construction)
    free_answers: list[int | None]  # per row: the answer free greedy generation spells (its index), None = invalid
    readings: dict[str, list[float]]  # scores only: every readout of the distribution (SCORE_READOUTS)


class AnswerHeads(nn.ModuleList):
    """The auxiliary heads: per task, a LayerNorm + linear classifier (or regressor) on the mean pseudo token.

    Its own LayerNorm: the pseudo tokens are as small as word embeddings (SmolLM2: RMS ~0.02-0.05), and a linear
    head on them would start with near-zero outputs and teach the fusion nothing for many epochs.
    """

    def __init__(self, tasks: list[TaskSpec], width: int):
        super().__init__([nn.Sequential(nn.LayerNorm(width), nn.Linear(width, len(t.label.classes)
                                                                        if t.is_classification else 1))
                          for t in tasks])
        self.tasks = tasks

    def _outputs(self, tokens: torch.Tensor, batch: Batch):
        """(task, rows, outputs) per task in the batch; outputs (rows, classes) or (rows, 1)."""
        pooled = tokens.float().mean(1)  # (B, H)
        for t in batch.task.unique().tolist():
            rows = (batch.task == t).nonzero().squeeze(1).tolist()
            yield t, rows, self[t](pooled[rows])

    def loss(self, tokens: torch.Tensor, batch: Batch, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over rows of the cross-entropy (classes) or squared error in half-ranges (scores); weights (B,):
        each row's share, as in answer_loss."""
        losses = []
        for t, rows, out in self._outputs(tokens, batch):
            label = self.tasks[t].label
            if label.kind == "class":
                target = torch.tensor([batch.targets[i] for i in rows], device=out.device)
                row_loss = F.cross_entropy(out, target, reduction="none")
            else:
                target = torch.tensor([batch.targets[i] for i in rows], device=out.device, dtype=out.dtype)
                half = (label.high - label.low) / 2
                row_loss = ((out.squeeze(1) - target) / half) ** 2
            losses.append((row_loss if weights is None else row_loss * weights[rows]).sum())
        return torch.stack(losses).sum() / len(batch.targets)

    @torch.no_grad()
    def predict(self, tokens: torch.Tensor, batch: Batch) -> list:
        """Per row: the class index, or the score clipped to the label's range."""
        values = [None] * len(batch.targets)
        for t, rows, out in self._outputs(tokens, batch):
            label = self.tasks[t].label
            row_values = (out.argmax(1).tolist() if label.kind == "class"
                          else out.squeeze(1).clamp(label.low, label.high).tolist())
            for i, v in zip(rows, row_values):
                values[i] = v
        return values


class EGMF(nn.Module):
    def __init__(self, config: ModelConfig, adapter: Path | None = None):
        """A fresh model, or with adapter: the LoRA weights saved in that directory."""
        super().__init__()
        base, self.tokenizer = load_causal_lm(config.llm)
        sha256 = llm_sha256(config.llm)
        if config.llm_sha256 not in (None, sha256):
            raise ValueError(f"LLM {config.llm!r}: its weights here have sha256 {sha256[:16]}..., the model was "
                             f"trained on {config.llm_sha256[:16]}... Fix: install the LLM weights the model was "
                             f"trained with (the same package version or hub revision)")
        self.config = config = replace(config, llm_sha256=sha256)
        table = base.get_input_embeddings().weight  # (V, H)
        self.fusion = FusionNetwork(config.fusion, config.modality_dims, table.shape[1], len(config.tasks),
                                    out_scale=embedding_rms(base))
        # Registered before the LLM: the trainer's parameter groups (fusion side, then LoRA) keep the model's order.
        self.heads = AnswerHeads(config.tasks, table.shape[1]) if config.head_weight > 0 else None
        self.llm = (load_lora(base, adapter) if adapter is not None else
                    attach_lora(base, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets))
        self.prompter = Prompter(self.tokenizer, [t.label for t in config.tasks], config.fusion.n_tokens,
                                 config.max_text_tokens, config.max_history_tokens)
        ids = (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0)
        self.filler = next(i for i in ids if i is not None)  # any real id: padding is masked, placeholders replaced
        self._tries: dict[tuple[int, str], AnswerTrie] = {}
        # Per task: a training loss weight per class (pipeline.train.class_weights), None = every row counts once.
        # Training only, so neither saved nor part of the config.
        self.class_weights: list[torch.Tensor | None] = [None] * len(config.tasks)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _prompts(self, batch: Batch) -> list[list[int]]:
        history = batch.history or [[] for _ in batch.texts]
        speakers = batch.speakers or [""] * len(batch.texts)
        return [self.prompter.prompt(t, lang, text, earlier, speaker) for t, lang, text, earlier, speaker
                in zip(batch.task.tolist(), batch.languages, batch.texts, history, speakers)]

    def _answers(self, batch: Batch) -> list[list[int]]:
        """The target answer's tokens per row."""
        return [self.prompter.answer_ids(t, lang)[self.prompter.target_index(t, y)]
                for t, lang, y in zip(batch.task.tolist(), batch.languages, batch.targets)]

    def row_lengths(self, batch: Batch) -> list[int]:
        """Tokens each row of a training batch puts through the LLM: its prompt and its answer."""
        return [len(p) + len(a) for p, a in zip(self._prompts(batch), self._answers(batch))]

    def row_weights(self, batch: Batch) -> torch.Tensor | None:
        """(B,) each row's weight in the training losses from its task's class weights; None when no task has any."""
        if all(w is None for w in self.class_weights):
            return None
        return torch.tensor([1.0 if self.class_weights[t] is None else float(self.class_weights[t][y])
                             for t, y in zip(batch.task.tolist(), batch.targets)], device=batch.task.device)

    def forward(self, batch: Batch) -> ModelOutput:
        fused = self.fusion(batch.features, batch.masks, batch.context, batch.context_mask, batch.task)
        answers = self._answers(batch)
        rows = [prompt + answer for prompt, answer in zip(self._prompts(batch), answers)]
        embeds, valid = embed_rows(self.llm, rows, fused.tokens, self.filler)  # (B, L, H), (B, L)
        logits = self.llm(inputs_embeds=embeds, attention_mask=causal_mask(valid), position_ids=positions(valid),
                          logits_to_keep=max(map(len, answers)) + 1, use_cache=False).logits  # (B, A + 1, V)
        weights = self.row_weights(batch)
        lm_loss = answer_loss(logits, answers, weights)
        head_loss = (fused.tokens.new_zeros(()) if self.heads is None
                     else self.heads.loss(fused.tokens, batch, weights))
        return ModelOutput(lm_loss + fused.aux_loss + self.config.head_weight * head_loss, lm_loss, fused.aux_loss,
                           head_loss, fused.expert_weights, fused.modality_gates)

    def _trie(self, task: int, language: str) -> AnswerTrie:
        key = (task, language)
        if key not in self._tries:
            self._tries[key] = AnswerTrie.build(self.prompter.answer_ids(task, language))
        return self._tries[key]

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        was_training = self.training
        self.eval()
        fused = self.fusion(batch.features, batch.masks, batch.context, batch.context_mask, batch.task)
        embeds, valid = embed_rows(self.llm, self._prompts(batch), fused.tokens, self.filler)
        tasks = batch.task.tolist()
        tries = [self._trie(t, lang) for t, lang in zip(tasks, batch.languages)]
        answer_ids = [self.prompter.answer_ids(t, lang) for t, lang in zip(tasks, batch.languages)]
        free = greedy_tokens(self.llm, embeds, valid, max(len(a) for ids in answer_ids for a in ids)).tolist()
        answers, values, failures, readings = [], [], 0, {}
        for task, scores in zip(tasks, score_answers(self.llm, embeds, valid, tries, self.filler)):
            answer, value, read = self._read(task, scores)
            failures += self.prompter.parse(task, answer) is None
            answers.append(answer)
            values.append(value)
            for name, v in read.items():
                readings.setdefault(name, []).append(v)
        self.train(was_training)
        return Prediction(answers, values, fused.expert_weights, fused.modality_weights, failures,
                          [spelled_answer(f, ids) for f, ids in zip(free, answer_ids)], readings)

    def _read(self, task: int, scores: torch.Tensor) -> tuple[str, int | float, dict[str, float]]:
        """Answer, value and (scores) every readout's value from the log-likelihoods (C,) of a task's answers."""
        choices, label = self.prompter.answers(task), self.config.tasks[task].label
        best = int(scores.argmax())
        if label.kind == "class":
            return choices[best], best, {}
        values = [float(c) for c in choices]  # ascending
        p = torch.softmax(scores.float(), -1)  # (C,)
        median = int(torch.searchsorted(p.cumsum(0), torch.tensor([0.5], device=p.device)).clamp(max=len(p) - 1))
        mean = float((p * torch.tensor(values, device=p.device)).sum())
        read = {"mean": mean, "median": values[median], "argmax": values[best]}
        value = read[self.config.score_readout]
        return format_score(value, label.low, label.high), value, read

    def save(self, directory) -> Path:
        """Write the trainable weights and model.json to directory; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.llm.save_pretrained(directory / ADAPTER_DIR)
        save_file({k: v.detach().contiguous() for k, v in self.fusion.state_dict().items()}, directory / FUSION_FILE)
        saved = {"format": MODEL_FORMAT, **self.config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(saved, indent=2, ensure_ascii=False))
        return directory

    @classmethod
    def load(cls, directory, upgrade: dict | None = None) -> "EGMF":
        """The model saved in directory, with its base LLM loaded from the reference in model.json and checked
        against its sha256. upgrade: for a model.json of format 1, the settings it did not hold yet (a run
        folder's training config had context_turns)."""
        directory = Path(directory)
        missing = [n for n in (CONFIG_FILE, FUSION_FILE, ADAPTER_DIR) if not (directory / n).exists()]
        if missing:
            raise FileNotFoundError(f"{directory}: not a saved EGMF model, {missing} missing. Fix: point to a "
                                    f"directory written by EGMF.save (a run folder's model)")
        where = directory / CONFIG_FILE
        saved = json.loads(where.read_text())
        version = saved.pop("format", 1)
        if version > MODEL_FORMAT:
            raise ValueError(f"{where}: model format {version}, this egmf reads up to {MODEL_FORMAT}. Fix: upgrade "
                             f"egmf")
        if version == 1:
            saved = {**(upgrade or {}), **saved}
        model = cls(ModelConfig.from_dict(saved, str(where)), directory / ADAPTER_DIR)
        state = load_file(directory / FUSION_FILE)
        # A model saved before input standardisation has no statistics: it was trained on raw features, which the
        # identity statistics the network starts with reproduce.
        for name, buffer in model.fusion.state_dict().items():
            if name.startswith(("projection.mean_", "projection.std_")):
                state.setdefault(name, buffer)
        try:
            model.fusion.load_state_dict(state)
        except RuntimeError as error:
            problem = " ".join(str(error).split())[:300].rstrip(". ")  # torch's message spans several lines
            raise ValueError(f"{directory / FUSION_FILE} does not fit the network model.json describes (a model "
                             f"saved by an earlier egmf?): {problem}. Fix: train it again") from error
        return model
