"""Batches for stage two, read from one or more caches: features in RAM, padded per batch.

A split of a cache is read once (one bulk read per shard); batches are then cut from memory, so a training
step never waits on storage. For dialogue corpora each row also gets the mean-pooled features of the
preceding turns of its dialogue (the global context expert's input) and their transcripts (the prompt's).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..cache.reader import Cache
from ..cache.schema import CacheError
from .batch import Batch, TaskSpec


def task_of(cache: Cache) -> TaskSpec:
    spec = cache.dataset.label(cache.dataset.task)
    return TaskSpec(f"{cache.dataset.name}/{spec.name}", spec)


@dataclass
class SplitData:
    """The rows of one split of one cache, in memory."""

    features: dict[str, np.ndarray]  # modality -> (n, T, D) float16
    lengths: dict[str, np.ndarray]  # modality -> (n,) int32
    context: np.ndarray  # (n, C) int: indices (into this split) of the preceding turns, -1 = none
    texts: list[str]
    languages: list[str]
    targets: list  # class index or score; rows without a label are dropped at load
    rows: np.ndarray  # (n,) rows in the cache
    task: int  # index of the cache's task in the model's task list
    # Who speaks in each row, named in the prompt ([] = no names); not the speakers of speakers_of, which are
    # groups of clips for standardisation.
    speaker_names: list[str] = field(default_factory=list)
    _pooled: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def has_context(self) -> bool:
        """Whether any row has a preceding turn (a dialogue corpus, and context_turns > 0)."""
        return bool((self.context >= 0).any())

    def speaker_name(self, i: int) -> str:
        return self.speaker_names[i] if self.speaker_names else ""

    def pooled(self) -> dict[str, np.ndarray]:
        """modality -> (n, D) float32 mean over each row's valid steps (zeros where missing): the preceding turns'
        features. Computed on first use, once per split; only splits with context need it."""
        if self._pooled is None:
            self._pooled = {m: pool_steps(x, self.lengths[m]) for m, x in self.features.items()}
        return self._pooled


def pool_steps(x: np.ndarray, lengths: np.ndarray, with_std: bool = False, rows: int = 256) -> np.ndarray:
    """(n, T, D) features, (n,) lengths -> (n, D) float32 means over the valid steps, or with_std (n, 2D) the means
    then the standard deviations; zeros where a row has no step. A block of rows at a time (a float32 copy of a
    whole split can take gigabytes)."""
    out = np.empty((len(x), (2 if with_std else 1) * x.shape[2]), np.float32)
    for a in range(0, len(x), rows):
        block, n = x[a: a + rows].astype(np.float32), lengths[a: a + rows]
        steps = (np.arange(x.shape[1])[None, :] < n[:, None])[..., None]  # (r, T, 1)
        count = np.maximum(n, 1)[:, None]  # (r, 1)
        mean = (block * steps).sum(1) / count  # (r, D)
        if with_std:
            std = np.sqrt((((block - mean[:, None]) * steps) ** 2).sum(1) / count)  # (r, D)
            mean = np.concatenate([mean, std], 1)
        out[a: a + rows] = mean
    return out


def _step_sums(x: np.ndarray, n: np.ndarray, rows: int = 256) -> tuple:
    """Sum, sum of squares (each (D,) float64) and count of the valid steps of rows x (r, T, D) with lengths n."""
    total, square, count = 0.0, 0.0, 0
    for a in range(0, len(x), rows):
        block = x[a: a + rows].astype(np.float64)
        steps = (np.arange(x.shape[1])[None, :] < n[a: a + rows, None])[..., None]  # (r, T, 1)
        total = total + (block * steps).sum((0, 1))
        square = square + (block ** 2 * steps).sum((0, 1))
        count += int(steps.sum())
    return total, square, count


def _mean_std(total, square, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 from step sums. A dimension that barely varies keeps a floor of 1% of the mean std, so
    it is not blown up into noise elsewhere."""
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(square / max(count, 1) - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 0.01 * std.mean() + 1e-6).astype(np.float32)


def feature_statistics(splits: list[SplitData], rows: int = 256) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """modality -> (mean, std), each (D,) float32, over every valid step of every row of the splits (the training
    splits: what the fusion standardises its input with)."""
    stats = {}
    for m in splits[0].features:
        sums = [_step_sums(s.features[m], s.lengths[m], rows) for s in splits]
        stats[m] = _mean_std(*(sum(v) for v in zip(*sums)))
    return stats


def speakers_of(ids, pattern: str, where: str) -> np.ndarray:
    """Each clip's speaker: the first group of `pattern` (or its whole match) searched in the clip id."""
    try:
        regex, speakers = re.compile(pattern), []
    except re.error as e:
        raise CacheError(f"speaker pattern {pattern!r}: not a regular expression ({e}). Fix: correct it, e.g. "
                         f"'-(\\d+)$' for RAVDESS ids") from e
    for clip in ids:
        match = regex.search(clip)
        if match is None:
            raise CacheError(f"{where}: clip id {clip!r} does not match the speaker pattern {pattern!r}. Fix: give a "
                             f"regular expression whose first group names the speaker in every id of the cache "
                             f"(RAVDESS: '-(\\d+)$', the actor)")
        speakers.append(match.group(1) if regex.groups else match.group(0))
    return np.array(speakers)


def standardise_per_speaker(features: dict[str, np.ndarray], lengths: dict[str, np.ndarray],
                            speakers: np.ndarray) -> None:
    """In place: each speaker's valid steps standardised with that speaker's own mean and standard deviation over
    its rows, so that what is left is how a clip differs from the speaker's usual voice (or face, or wording)."""
    for m, x in features.items():
        n = lengths[m]
        for who in np.unique(speakers):
            rows = np.flatnonzero(speakers == who)
            block = x[rows].astype(np.float32)
            total, square, count = _step_sums(block, n[rows])
            if count == 0:  # the modality is missing in every clip of this speaker
                continue
            mean, std = _mean_std(total, square, count)
            steps = (np.arange(x.shape[1])[None, :] < n[rows, None])[..., None]
            x[rows] = np.where(steps, (block - mean) / std, 0).astype(x.dtype)


def check_extracted(cache: Cache, split: str) -> None:
    """Refuse a split with rows not extracted yet: training or scoring the done rows alone would silently report
    a number for a subset (an interrupted extraction marks rows done shard by shard)."""
    missing = np.flatnonzero((cache.meta["split"] == split) & ~cache.done)
    if len(missing):
        ids = ", ".join(cache.meta["id"][missing[:5]].tolist()) + (", ..." if len(missing) > 5 else "")
        modalities = ",".join(cache.modalities)
        raise CacheError(
            f"{cache.url}: {len(missing)} of {int((cache.meta['split'] == split).sum())} rows of split '{split}' are "
            f"not extracted yet (rows {missing[0]}..{missing[-1]}: {ids}). Fix: finish the extraction by running "
            f"its command again, e.g. `egmf-extract --dataset {cache.dataset.name} --root <corpus folder> "
            f"--modalities {modalities} --out {cache.url}` with the same preset; it writes only the missing rows")


def load_split(cache: Cache, split: str, modalities, task: TaskSpec, task_index: int,
               context_turns: int = 0, speaker_pattern: str | None = None, speaker_names: bool = False) -> SplitData:
    """The labelled rows of a split in memory; with speaker_pattern (speakers_of), each speaker's features are
    standardised over its rows of the split (standardise_per_speaker); with speaker_names, each row carries the
    name of its speaker from the cache for the prompt."""
    check_extracted(cache, split)
    rows = cache.rows(split)
    label = cache.labels[task.label.name][rows]
    keep = label >= 0 if task.is_classification else ~np.isnan(label)
    rows, label = rows[keep], label[keep]
    if len(rows) == 0:
        raise CacheError(f"{cache.url}: no labelled rows in split '{split}' for {task.name}. Fix: check the split "
                         f"names with `egmf-cache info {cache.url}` (it has {cache.split_counts()})")
    # Refused before the features are read: a split of video features can take gigabytes.
    names = named_speakers(cache, split, rows) if speaker_names and "text" in modalities else []
    feats, lengths = {}, {}
    for m in modalities:
        feats[m], lengths[m] = cache.features(m, rows, lazy=False)
    if speaker_pattern is not None:
        standardise_per_speaker(feats, lengths, speakers_of(cache.meta["id"][rows], speaker_pattern, cache.url))
    targets = [int(v) for v in label] if task.is_classification else [float(v) for v in label]
    # The transcript reaches the LLM through the prompt too: without the text modality it is left out there
    # as well, so a model trained on audio or visual alone really sees nothing of the words.
    texts = cache.meta["text"][rows].tolist() if "text" in modalities else [""] * len(rows)
    return SplitData(feats, lengths, _preceding_turns(cache, rows, context_turns), texts,
                     cache.meta["language"][rows].tolist(), targets, rows, task_index, names)


def named_speakers(cache: Cache, split: str, rows: np.ndarray) -> list[str]:
    """Each row's speaker as the cache names it ("" where it does not); refuses a split that names none."""
    names = cache.meta["speaker"][rows].tolist()
    if not any(names):
        raise CacheError(f"{cache.url}: no row of split '{split}' names its speaker, so --speaker-names has no names "
                         f"to put in the prompt (a store written before speakers were stored, or a corpus that does "
                         f"not name them). Fix: extract the corpus into a new store (egmf-extract ... --out NEW_STORE "
                         f"stores MELD's Speaker column and a folder corpus' speaker column), or train without "
                         f"--speaker-names")
    return names


def _preceding_turns(cache: Cache, rows: np.ndarray, c: int) -> np.ndarray:
    """(n, c) positions in `rows` of the c turns before each row in its dialogue, most recent last; -1 = none."""
    out = np.full((len(rows), c), -1, np.int64)
    if c == 0:
        return out
    dialogue, turn = cache.meta["dialogue"][rows], cache.meta["turn"][rows]
    by_dialogue: dict[str, list[int]] = {}
    for pos in np.argsort(turn, kind="stable"):
        if dialogue[pos]:
            by_dialogue.setdefault(dialogue[pos], []).append(int(pos))
    for members in by_dialogue.values():
        for k, pos in enumerate(members):
            before = members[max(0, k - c): k]
            if before:
                out[pos, c - len(before):] = before
    return out


def histories(data: SplitData, ctx: np.ndarray) -> list[list[tuple[str, str]]]:
    """Per row of ctx (B, C), (speaker, transcript) of its preceding turns that have a transcript, oldest first."""
    return [[(data.speaker_name(j), data.texts[j]) for j in turns if j >= 0 and data.texts[j]] for turns in ctx]


def collate(data: SplitData, index: np.ndarray) -> Batch:
    """Cut rows `index` of a split into a Batch, padded to the longest row of the batch per modality."""
    features, masks, context = {}, {}, {}
    ctx = data.context[index]  # (B, C)
    pooled = data.pooled() if data.has_context else None
    for m, x in data.features.items():
        lengths = data.lengths[m][index]
        t = max(1, int(lengths.max()))
        features[m] = torch.from_numpy(x[index, :t].astype(np.float32))  # (B, t, D)
        masks[m] = torch.arange(t)[None, :] < torch.from_numpy(lengths)[:, None]  # (B, t)
        # Context: the pooled features of the preceding turns; absent turns are zeros behind a False mask.
        if pooled is None:
            context[m] = torch.zeros(len(index), ctx.shape[1], x.shape[2])  # (B, C, D)
        else:
            context[m] = torch.from_numpy(np.where(ctx[..., None] >= 0, pooled[m][np.maximum(ctx, 0)], 0.0)
                                          .astype(np.float32))  # (B, C, D)
    history = histories(data, ctx)
    return Batch(features, masks, context, torch.from_numpy(ctx >= 0),
                 [data.texts[i] for i in index], [data.languages[i] for i in index],
                 torch.full((len(index),), data.task, dtype=torch.long), [data.targets[i] for i in index],
                 torch.from_numpy(data.rows[index]), history, [data.speaker_name(i) for i in index])


# Rows sorted together by length-bucketed batching: enough for batches of like length, few enough that a batch's
# rows still come from anywhere in the split (64 batches of 16 = 1,024 rows).
BUCKET_POOL = 64


class BatchStream:
    """Batches over one or more splits (several caches = several tasks), shuffled per epoch when asked.

    With lengths (per split, the tokens each row puts through the LLM), shuffled batches are length-bucketed:
    each pool of BUCKET_POOL batches' worth of shuffled rows is sorted by length before it is cut, so a batch
    pads its rows to about their own length instead of the longest of a random draw (MELD text-only: 28% of the
    LLM's tokens were padding, 1% bucketed). Batches are still shuffled, and every row comes once per epoch.
    With rank/world (DDP), each process takes every world-th batch of the same global order.
    """

    def __init__(self, splits: list[SplitData], batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world: int = 1, lengths: list[np.ndarray] | None = None):
        self.splits, self.batch_size, self.shuffle, self.seed = splits, batch_size, shuffle, seed
        self.rank, self.world, self.lengths = rank, world, lengths
        self.epoch = 0

    def _plan(self) -> list[tuple[int, np.ndarray]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        plan = []
        for k, s in enumerate(self.splits):
            order = rng.permutation(len(s)) if self.shuffle else np.arange(len(s))
            if self.shuffle and self.lengths is not None:
                pool = self.batch_size * BUCKET_POOL
                order = np.concatenate([p[np.argsort(self.lengths[k][p], kind="stable")]
                                        for p in np.split(order, range(pool, len(order), pool))])
            plan += [(k, order[i: i + self.batch_size]) for i in range(0, len(s), self.batch_size)]
        if self.shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        if self.world > 1:
            # DDP steps every rank together, so every rank takes as many batches: the plan is cut to a multiple of
            # world, or repeated when there are fewer batches than ranks (a rank without one would hang the rest).
            steps = len(plan) - len(plan) % self.world or self.world
            plan = [plan[i % len(plan)] for i in range(steps)][self.rank:: self.world]
        return plan

    def __len__(self) -> int:
        return len(self._plan())

    def __iter__(self):
        for k, index in self._plan():
            yield collate(self.splits[k], index)
        self.epoch += 1
