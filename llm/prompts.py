"""Task prompts per language, answer formats, and the token ids the LLM reads and writes.

A prompt is `[specials][K pseudo tokens][<turn> <earlier transcript>\n ...]<head> <transcript><question>` and
the answer follows it (the earlier turns are those of the same dialogue, on dialogue corpora only; a transcript
starts with its speaker's name when the corpus names speakers and the model was trained with them):

    en  [tokens]Before: Where were you?\nTranscript: I can't believe it!\nEmotion (neutral, surprise, ...): joy
    en  [tokens]Before: Ross: Where were you?\nTranscript: Rachel: I can't believe it!\nEmotion (...): joy
    zh  [tokens]文本：真是太好了\n情绪（愤怒、厌恶、...）：高兴
    en  [tokens]Transcript: not bad at all\nSentiment score from -3.0 to 3.0: 1.2

Prompts are short on purpose: every position costs LLM compute in each training step. Each piece is
tokenised on its own and the ids are concatenated, so the pseudo tokens and the transcript never merge
with their neighbours and the answer ids are the same in training and decoding.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Protocol

PLACEHOLDER = -1  # id marking where a pseudo token goes; llm.sequences swaps in the fusion output


class LabelLike(Protocol):
    """What a prompt needs of a label (cache.schema.LabelSpec has it)."""

    name: str
    kind: str  # "class" or "score"
    classes: tuple[str, ...]
    low: float
    high: float


@dataclass(frozen=True)
class Template:
    head: str  # after the pseudo tokens (and the earlier turns), before the transcript
    turn: str  # before each earlier transcript of the dialogue; the turn ends with a newline
    speaker: str  # before a transcript whose speaker is named: {speaker}
    text_prefix: str  # joins head and transcript: a space where the language separates words
    classify: str  # the question for a class label: {name} {choices}
    score: str  # the question for a score: {name} {low} {high}
    separator: str  # between the class names listed in the question
    answer_prefix: str  # before the answer, as in ordinary text after a colon
    names: dict = field(default_factory=dict)  # label name -> word in this language; default: the name itself


TEMPLATES = {
    "en": Template(head="Transcript:", turn="Before:", speaker="{speaker}: ", text_prefix=" ",
                   classify="\n{name} ({choices}):", score="\n{name} score from {low} to {high}:", separator=", ",
                   answer_prefix=" "),
    "zh": Template(head="文本：", turn="前文：", speaker="{speaker}：", text_prefix="",
                   classify="\n{name}（{choices}）：", score="\n{name}分数（{low}到{high}）：",
                   separator="、", answer_prefix="", names={"emotion": "情绪", "sentiment": "情感"}),
}


def format_score(value: float, low: float, high: float) -> str:
    """The one-decimal answer for a score, clipped to the label's range; never "-0.0"."""
    text = f"{min(max(value, low), high):.1f}"
    return "0.0" if text == "-0.0" else text


def score_strings(low: float, high: float) -> list[str]:
    """Every well-formed answer in [low, high], step 0.1: "-3.0", "-2.9", ..., "3.0"."""
    first, last = math.ceil(round(low * 10, 6)), math.floor(round(high * 10, 6))
    return [format_score(k / 10, low, high) for k in range(first, last + 1)]


def _said(template: Template, speaker: str, text: str) -> str:
    # An empty transcript stays empty, as an earlier turn without one is left out (pipeline.data.histories).
    return template.speaker.format(speaker=speaker) + text if speaker and text else text


def _display_name(label: LabelLike, template: Template) -> str:
    name = template.names.get(label.name, label.name.replace("_", " "))
    return name[:1].upper() + name[1:]


class Prompter:
    """Token ids of prompts and answers for the model's tasks (a task = one label of one corpus)."""

    def __init__(self, tokenizer, labels: list[LabelLike], n_tokens: int, max_text_tokens: int,
                 max_history_tokens: int = 0):
        self.tokenizer, self.labels = tokenizer, labels
        self.n_tokens, self.max_text_tokens, self.max_history_tokens = n_tokens, max_text_tokens, max_history_tokens
        # Whatever the tokenizer puts before a text (a BOS for Llama- and Gemma-style ones, nothing for SmolLM2).
        self.specials = tokenizer.encode("", add_special_tokens=True)
        self._fixed: dict[tuple[int, str], tuple[list[int], list[int], list[list[int]]]] = {}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _template(self, language: str) -> Template:
        if language not in TEMPLATES:
            raise ValueError(f"no prompt template for language {language!r}; known: {sorted(TEMPLATES)}. "
                             f"Fix: add one to TEMPLATES in llm/prompts.py")
        return TEMPLATES[language]

    def answers(self, task: int) -> list[str]:
        """The valid answers of a task, in value order: class names by class index, or every score string."""
        label = self.labels[task]
        return list(label.classes) if label.kind == "class" else score_strings(label.low, label.high)

    def _pieces(self, task: int, language: str):
        """(head ids, question ids, ids of every answer) for a task in a language, tokenised once."""
        key = (task, language)
        if key not in self._fixed:
            label, template = self.labels[task], self._template(language)
            name = _display_name(label, template)
            if label.kind == "class":
                question = template.classify.format(name=name, choices=template.separator.join(label.classes))
            else:
                question = template.score.format(name=name, low=f"{label.low:.1f}", high=f"{label.high:.1f}")
            answers = [self._encode(template.answer_prefix + a) for a in self.answers(task)]
            self._fixed[key] = (self._encode(template.head), self._encode(question), answers)
        return self._fixed[key]

    def prompt(self, task: int, language: str, text: str, history: list[tuple[str, str]] = (),
               speaker: str = "") -> list[int]:
        """The prompt's ids with PLACEHOLDER where the K pseudo tokens go; the transcript (said by speaker, ""
        = unnamed) is cut to max_text_tokens, and history ((speaker, transcript) of earlier turns, oldest first)
        keeps its most recent turns that fit in max_history_tokens."""
        head, question, _ = self._pieces(task, language)
        template = self._template(language)
        transcript = self._encode(template.text_prefix + _said(template, speaker, text))[: self.max_text_tokens]
        earlier: list[int] = []
        for who, turn in reversed(history):
            ids = self._encode(f"{template.turn}{template.text_prefix}{_said(template, who, turn)}\n")
            if len(earlier) + len(ids) > self.max_history_tokens:
                break
            earlier = ids + earlier
        return self.specials + [PLACEHOLDER] * self.n_tokens + earlier + head + transcript + question

    def answer_ids(self, task: int, language: str) -> list[list[int]]:
        """Token ids of every valid answer, in the order of answers(task)."""
        return self._pieces(task, language)[2]

    def target_index(self, task: int, target) -> int:
        """Which answer a training target is: the class index, or the index of its one-decimal string."""
        label = self.labels[task]
        if label.kind == "class":
            if not isinstance(target, numbers.Integral) or not 0 <= target < len(label.classes):
                raise ValueError(f"task {label.name!r}: target {target!r} is not a class index in "
                                 f"[0, {len(label.classes)}); unlabelled rows must be left out of training batches")
            return int(target)
        if not isinstance(target, numbers.Real) or not math.isfinite(target):
            raise ValueError(f"task {label.name!r}: target {target!r} is not a score; unlabelled rows must be "
                             f"left out of training batches")
        return self.answers(task).index(format_score(float(target), label.low, label.high))

    def parse(self, task: int, answer: str):
        """An answer string back to its value (class index or float); None when it is not a valid answer."""
        answers = self.answers(task)
        if answer not in answers:
            return None
        return answers.index(answer) if self.labels[task].kind == "class" else float(answer)
