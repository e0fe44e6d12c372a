"""Stage two: train the fusion, the gates, the projection and the LoRA weights from one or more caches.

One trainer for every corpus and backbone: several caches give one unified model over their tasks. AdamW with
warmup + cosine, gradient clipping, bf16 autocast where native, early stopping on the dev score, a checkpoint (written
atomically) after every epoch and every `checkpoint_every` steps, from which a killed run resumes to the same
result. Under torchrun, processes split the batches and average gradients (DDP, gloo on CPU).
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..cache.reader import Cache
from ..cache.schema import CacheError
from ..weights import pick_device
from . import plots
from .averaging import WeightAverage
from .data import BatchStream, SplitData, feature_statistics, histories, load_split, task_of
from .evaluate import EVAL_BATCH_SIZE, headline, primary_score, score_split
from .metrics import scalar_metrics
from .model import EGMF
from .precision import PRECISIONS, autocast, use_bf16
from .presets import model_config
from .runfolder import RunFolder, trainable_by_name


class ConfigError(ValueError):
    """A training option out of range; egmf-train prints it without a traceback."""


@dataclass
class TrainConfig:
    caches: list[str]
    out: str
    preset: str = "offline"  # model preset: which LLM, fusion size (pipeline/presets.py)
    modalities: list[str] | None = None  # default: every modality all caches have
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (quick runs); None = no limit
    batch_size: int = 8
    lr: float = 1e-3  # the fusion and the LoRA weights start from scratch: a higher rate than full fine-tuning
    fusion_lr: float | None = None  # the fusion's (and auxiliary head's) own rate; None = lr for everything
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of all steps
    grad_clip: float = 1.0
    patience: int = 3  # epochs without a better dev score before stopping
    eval_batch_size: int = EVAL_BATCH_SIZE
    checkpoint_every: int = 50  # steps between mid-epoch checkpoints; 0 = only the one after each epoch
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on CUDA and on CPUs with native bf16, else fp32 (pipeline/precision.py)
    # Batches of rows with like prompt lengths (data.BatchStream): MELD text-only pads 28% of the LLM's tokens in
    # random batches, 1% bucketed. One epoch, seed 0: dev weighted F1 56.7 bucketed against 56.3 in random batches,
    # 34.7 against 42.4 minutes of steps (README, MELD).
    bucket_by_length: bool = True
    # Epochs of the fusion network and the auxiliary head trained alone (no LLM) before the model's epochs, so
    # that the LLM learns to read pseudo tokens that already carry the label; needs the head. It runs at
    # fusion_lr, or at lr when fusion_lr is None or 0: with fusion_lr 0 the LLM then reads a fusion frozen as the
    # warm-up left it.
    fusion_warmup: int = 0
    # Training loss weight of a class = (its share of the training rows / the mean share) ** -class_weighting,
    # scaled so that the training rows' mean weight is 1: 0 = every row counts once, 1 = inverse frequency,
    # 0.5 its square root. Classification tasks only.
    class_weighting: float = 0.0
    # Decay per step of an exponential moving average of the trainable weights (pipeline/averaging.py), which is
    # then what each epoch's dev evaluation scores and what the run saves as its model; 0 = the trained weights.
    ema_decay: float = 0.0
    progress: bool = True
    # ModelConfig fields over the preset's, e.g. {"lora_r": 16, "context_turns": 2, "fusion": {"n_tokens": 8}}
    overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        # option: (value, lowest allowed, the fix)
        limits = {"epochs": (self.epochs, 1, "train for 1 epoch or more"),
                  "max-steps": (self.max_steps, 1, "leave --max-steps out for no limit"),
                  "batch-size": (self.batch_size, 1, "use 1 or more rows per batch"),
                  "patience": (self.patience, 1, "stop after 1 or more epochs without a better dev score"),
                  "checkpoint-every": (self.checkpoint_every, 0, "pass 0 for a checkpoint only after each epoch"),
                  "eval-batch-size": (self.eval_batch_size, 1, "use 1 or more rows per batch"),
                  "fusion-warmup": (self.fusion_warmup, 0, "pass 0 to train the fusion with the LLM from the "
                                                           "start"),
                  "class-weighting": (self.class_weighting, 0, "pass 0 for unweighted classes, 1 for inverse "
                                                               "class frequency")}
        for option, (value, lowest, fix) in limits.items():
            if value is not None and value < lowest:
                raise ConfigError(f"--{option} {value}: must be at least {lowest}. Fix: {fix}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema-decay {self.ema_decay}: must be at least 0 and below 1. Fix: pass 0 to keep "
                              f"the trained weights, or e.g. 0.99 to average over the last ~100 steps")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision}: unknown. Fix: choose one of {', '.join(PRECISIONS)}")


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shared_modalities(caches: list[Cache], asked) -> list[str]:
    common = [m for m in caches[0].modalities if all(m in c.modalities for c in caches)]
    if asked is None:
        return common
    missing = [m for m in asked if m not in common]
    if missing:
        raise CacheError(f"--modalities {','.join(asked)}: {missing} not in every cache (they share "
                         f"{','.join(common) or 'none'}). Fix: choose among those")
    return [m for m in common if m in asked]


def feature_dims(caches: list[Cache], modalities: list[str]) -> dict[str, int]:
    """The feature size of each modality, which every cache must share: one model reads one size per modality."""
    dims = {}
    for m in modalities:
        sizes = [(c.url, c.encoders[m].dim) for c in caches]
        if len({d for _, d in sizes}) > 1:
            raise CacheError(f"--cache: the {m} features differ in size ({', '.join(f'{u}: {d}' for u, d in sizes)}"
                             f"); one model reads one size per modality. Fix: extract every corpus with the same "
                             f"--preset, or leave {m} out with --modalities")
        dims[m] = sizes[0][1]
    return dims


def parameter_groups(model: EGMF, lr: float, fusion_lr: float | None) -> list[dict]:
    """The trainable parameters in model order: one group, or with fusion_lr the fusion side then the LoRA weights
    (EGMF registers its fusion and heads before the LLM, so the order a checkpoint records stays the same)."""
    named = list(trainable_by_name(model).items())
    if fusion_lr is None:
        return [{"params": [p for _, p in named]}]
    return [{"params": [p for n, p in named if not n.startswith("llm.")], "lr": fusion_lr},
            {"params": [p for n, p in named if n.startswith("llm.")], "lr": lr}]


def standardise_inputs(fusion, train: list[SplitData]) -> None:
    """The fusion standardises each feature dimension with the training split's mean and standard deviation."""
    fusion.projection.set_statistics({m: tuple(map(torch.from_numpy, v)) for m, v in feature_statistics(train).items()})


def optimiser(params, lr: float, total: float, weight_decay: float = TrainConfig.weight_decay,
              warmup: float = TrainConfig.warmup):
    """AdamW and its schedule over `total` steps: linear warm-up for a `warmup` fraction, then cosine decay."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, get_cosine_schedule_with_warmup(opt, int(warmup * total), int(total))


def fit_fusion_alone(network, heads, stream: BatchStream, epochs: int, lr: float, device=torch.device("cpu"),
                     row_weights=None, after_epoch=None, progress: bool = True,
                     weight_decay: float = TrainConfig.weight_decay, warmup: float = TrainConfig.warmup,
                     average: WeightAverage | None = None) -> None:
    """Train a fusion network and its auxiliary heads without the LLM, with egmf-train's optimiser, schedule and
    clipping: the head's loss on the pseudo tokens + the expert gate's balance loss. row_weights(batch): the
    rows' loss weights (class weighting); after_epoch(epoch) runs after each epoch; average: updated after each
    step. Under torchrun, every
    process trains on its own batches and the gradients are averaged, as DDP does for the whole model."""
    params = [*network.parameters(), *heads.parameters()]
    opt, sched = optimiser(params, lr, len(stream) * epochs, weight_decay, warmup)
    world = dist.get_world_size() if dist.is_initialized() else 1
    for epoch in tqdm(range(epochs), desc="fusion alone", unit="epoch", disable=not progress):
        for batch in stream:
            batch = batch.to(device)
            fused = network(batch.features, batch.masks, batch.context, batch.context_mask, batch.task)
            loss = heads.loss(fused.tokens, batch, None if row_weights is None else row_weights(batch))
            opt.zero_grad(set_to_none=True)
            (loss + fused.aux_loss).backward()
            if world > 1:
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            torch.nn.utils.clip_grad_norm_(params, TrainConfig.grad_clip)
            opt.step()
            sched.step()
            if average is not None:
                average.update()
        if after_epoch is not None:
            after_epoch(epoch)


def class_weights(data: SplitData, task, power: float) -> torch.Tensor | None:
    """(C,) the loss weight of each class of a classification task from its training rows (TrainConfig.
    class_weighting); None for a score task or power 0. A class without training rows gets weight 0."""
    if power == 0 or not task.is_classification:
        return None
    counts = np.bincount(np.asarray(data.targets, dtype=np.int64), minlength=len(task.label.classes))
    seen = counts > 0
    weights = np.zeros(len(counts))
    weights[seen] = (counts[seen] / counts[seen].mean()) ** -power
    return torch.tensor(weights * counts.sum() / (weights * counts).sum(), dtype=torch.float32)


def llm_tokens(model: EGMF, data: SplitData) -> np.ndarray:
    """(n,) tokens each row of a split puts through the LLM, prompt and answer: the key of length bucketing."""
    p = model.prompter
    return np.array([len(p.prompt(data.task, data.languages[i], data.texts[i], earlier, data.speaker_name(i)))
                     + len(p.answer_ids(data.task, data.languages[i])[p.target_index(data.task, data.targets[i])])
                     for i, earlier in enumerate(histories(data, data.context))])


@dataclass
class Progress:
    """How far training has come: all a checkpoint needs besides the weights, optimiser, schedule and RNG states
    (saved as a plain dict, so a weights-only load reads it)."""

    step: int = 0
    epoch: int = 0  # finished epochs
    history: list = field(default_factory=list)  # one record per evaluated epoch
    best: float = -math.inf  # the best finished epoch's dev score
    bad_epochs: int = 0  # finished epochs since the best one (early stopping)
    # The running epoch's losses per step, so that an epoch resumed half-way reports the means over all its steps.
    epoch_losses: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Progress":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class _Fit:
    """What one Trainer.fit works with, across its epochs: the model and its optimiser, the data, and how far it
    has come."""

    model: EGMF
    wrapped: torch.nn.Module  # the model, inside DDP under torchrun
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    stream: BatchStream
    steps_per_epoch: int
    total: float  # the step to stop at: --max-steps, or the end of the last epoch
    bar: tqdm
    progress: Progress
    average: WeightAverage | None  # what is scored and saved, with --ema-decay
    data_wait: float = 0.0  # seconds waiting for batches,
    step_time: float = 0.0  # within whole steps

    def checkpoint(self, run: RunFolder) -> None:
        run.save_checkpoint(self.model, self.opt, self.sched, self.progress.to_dict(), self.average)

    def scored(self):
        """The weights that are evaluated and saved in the block: the average with --ema-decay."""
        return nullcontext() if self.average is None else self.average.swapped_in()


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.device = pick_device(cfg.device, os.environ)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.bf16 = use_bf16(cfg.precision, self.device)
        self.caches = [Cache.open(c) for c in cfg.caches]
        self.tasks = [task_of(c) for c in self.caches]
        self.modalities = shared_modalities(self.caches, cfg.modalities)
        self.dims = feature_dims(self.caches, self.modalities)
        self.run = RunFolder(Path(cfg.out))
        self.run.check_caches(self.caches)  # refuses a run folder made from other caches

    def _splits(self, split: str, mcfg):
        return [load_split(c, split, self.modalities, t, k, mcfg.context_turns, mcfg.speaker_pattern,
                           mcfg.speaker_names)
                for k, (c, t) in enumerate(zip(self.caches, self.tasks))]

    def fit(self) -> dict:
        cfg = self.cfg
        seed_everything(cfg.seed)
        try:
            mcfg = model_config(cfg.preset, self.dims, self.tasks, **cfg.overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--preset {cfg.preset} with {cfg.overrides}: {e}") from e
        if cfg.fusion_warmup and mcfg.head_weight == 0:
            raise ConfigError("--fusion-warmup trains the fusion through the auxiliary head, and this model has none "
                              "(--head-weight 0, or --ablate no-tokens). Fix: leave --fusion-warmup out or give the "
                              "head a weight")
        if mcfg.speaker_names and "text" not in self.modalities:
            raise ConfigError(f"--speaker-names names the speakers of the transcripts, and this model reads no text "
                              f"(--modalities {','.join(self.modalities)}). Fix: add text to --modalities or leave "
                              f"--speaker-names out")
        train, dev = self._splits("train", mcfg), self._splits("dev", mcfg)
        model = EGMF(mcfg)
        standardise_inputs(model.fusion, train)
        model.class_weights = [class_weights(d, self.tasks[d.task], cfg.class_weighting) for d in train]
        model = model.to(self.device)
        lengths = [llm_tokens(model, d) for d in train] if cfg.bucket_by_length else None
        stream = BatchStream(train, cfg.batch_size, shuffle=True, seed=cfg.seed, rank=self.rank, world=self.world,
                             lengths=lengths)
        steps_per_epoch = len(stream)
        total = min(math.inf if cfg.max_steps is None else cfg.max_steps, steps_per_epoch * cfg.epochs)
        opt, sched = optimiser(parameter_groups(model, cfg.lr, cfg.fusion_lr), cfg.lr, total, cfg.weight_decay,
                               cfg.warmup)
        wrapped = self._wrap(model)
        fresh = Progress().to_dict()
        del fresh["epoch_losses"]  # a checkpoint taken between epochs may have none
        average = self._average(model)
        saved = self.run.resume(model, opt, sched, like=fresh, average=average)
        state = Progress.from_dict(saved) if saved else Progress()
        if cfg.fusion_warmup and not saved:  # a resumed run's checkpoint holds the warmed-up fusion
            fit_fusion_alone(model.fusion, model.heads, stream, cfg.fusion_warmup, cfg.fusion_lr or cfg.lr,
                             self.device, model.row_weights, progress=cfg.progress and self.rank == 0,
                             weight_decay=cfg.weight_decay, warmup=cfg.warmup)
            average = self._average(model)  # averaging starts from the warmed-up fusion
        if self.rank == 0:
            self.run.write_config(cfg, model.config, self.caches, self.tasks, self.modalities)
        bar = tqdm(total=int(total), initial=state.step, desc="train", unit="step",
                   disable=not cfg.progress or self.rank != 0)
        f = _Fit(model, wrapped, opt, sched, stream, steps_per_epoch, total, bar, state, average)
        t0 = time.perf_counter()
        while state.epoch < cfg.epochs and state.step < total and state.bad_epochs < cfg.patience:
            finished = self._train_epoch(f)
            self._end_epoch(f, dev, finished)
            if self.rank == 0:
                f.checkpoint(self.run)
            if not finished:
                break
        bar.close()
        # The best finished epoch; a run stopped by --max-steps inside its first epoch has only that record.
        best = max([h for h in state.history if h.get("finished", True)] or state.history,
                   key=lambda h: h["dev_score"])
        summary = {"steps": state.step, "epochs": len(state.history), "best_epoch": best["epoch"],
                   "best_dev_score": best["dev_score"],
                   "best_dev": {t: scalar_metrics(m) for t, m in best["dev"].items()},
                   "seconds": time.perf_counter() - t0, "data_wait_fraction": f.data_wait / max(f.step_time, 1e-9),
                   "trainable_parameters": model.trainable_parameters(),
                   "class_weights": {t.name: dict(zip(t.label.classes, map(float, w)))
                                     for t, w in zip(self.tasks, model.class_weights) if w is not None}}
        if self.rank == 0:
            self.run.write_history(state.history, summary)
            self._plot_history(state.history)
        if self.world > 1:
            dist.barrier()
        return summary

    def _average(self, model: EGMF) -> WeightAverage | None:
        if not self.cfg.ema_decay:
            return None
        return WeightAverage(trainable_by_name(model), self.cfg.ema_decay)

    def _wrap(self, model: EGMF) -> torch.nn.Module:
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _train_epoch(self, f: _Fit) -> bool:
        """The steps of epoch f.progress.epoch not done yet, up to f.total; True when the epoch is finished."""
        cfg, state = self.cfg, f.progress
        f.stream.epoch = state.epoch
        skip = state.step - state.epoch * f.steps_per_epoch  # batches done before a resume
        if skip == 0:
            state.epoch_losses = {}
        # setdefault: a checkpoint from before the auxiliary head has no "head" list
        losses, lm, aux, head = (state.epoch_losses.setdefault(k, []) for k in ("loss", "lm", "aux", "head"))
        params = [p for p in f.model.parameters() if p.requires_grad]
        f.model.train()
        tick = time.perf_counter()
        for k, batch in enumerate(f.stream):
            if k < skip:
                continue
            batch = batch.to(self.device)
            f.data_wait += time.perf_counter() - tick
            with autocast(self.device, self.bf16):
                out = f.wrapped(batch)
            if not torch.isfinite(out.loss):
                self._diverged("loss", out.loss, state)
            f.opt.zero_grad(set_to_none=True)
            out.loss.backward()
            # A finite loss can still overflow in the backward pass; the update would then make the weights NaN
            # and the epoch's end would evaluate and checkpoint them.
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if not torch.isfinite(norm):
                self._diverged("gradient norm", norm, state)
            f.opt.step()
            f.sched.step()
            if f.average is not None:
                f.average.update()
            state.step += 1
            losses.append(out.loss.item())
            lm.append(out.lm_loss.item())
            aux.append(out.aux_loss.item())
            head.append(out.head_loss.item())
            f.bar.update(1)
            f.bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            f.step_time += time.perf_counter() - tick
            epoch_ends = state.step >= min(f.total, (state.epoch + 1) * f.steps_per_epoch)
            # Not at an epoch's last step: its checkpoint follows the dev evaluation, and one taken here would
            # resume into an epoch with no step left to run and no record of it.
            if (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and self.rank == 0
                    and not epoch_ends):
                f.checkpoint(self.run)
            if state.step >= f.total:
                break
            tick = time.perf_counter()
        return state.step >= (state.epoch + 1) * f.steps_per_epoch

    def _end_epoch(self, f: _Fit, dev, finished: bool) -> None:
        """Evaluate on dev, record the epoch and keep the best model.

        Only finished epochs move the best score and early stopping. An epoch cut short by --max-steps is
        recorded too (its model is saved while no finished epoch has one, so the run has a model to evaluate),
        and the same epoch, resumed and finished, replaces its record.
        """
        mean = lambda values: float(np.mean(values)) if values else None
        state = f.progress
        losses = state.epoch_losses
        record = {"epoch": state.epoch + 1, "step": state.step, "finished": finished,
                  "train_loss": mean(losses["loss"]), "train_lm_loss": mean(losses["lm"]),
                  "train_aux_loss": mean(losses["aux"]), "train_head_loss": mean(losses.get("head", []))}
        with f.scored():
            record.update(self._evaluate(f.model, dev, "dev"))
        record["dev_score"] = float(np.mean([primary_score(t, record["dev"][t.name]) for t in self.tasks]))
        state.history = [h for h in state.history if h["epoch"] != record["epoch"]] + [record]
        if self.rank == 0:
            f.bar.write(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}; dev "
                        + "; ".join(f"{t.name} {headline(t, record['dev'][t.name])}" for t in self.tasks))
        if finished:
            state.epoch += 1
            better = record["dev_score"] > state.best
            state.best = max(state.best, record["dev_score"])
            state.bad_epochs = 0 if better else state.bad_epochs + 1
        else:
            better = state.best == -math.inf  # no finished epoch has saved a model yet
        if better and self.rank == 0:
            with f.scored():
                self.run.save_model(f.model)

    def _diverged(self, what: str, value: torch.Tensor, state: Progress):
        raise FloatingPointError(
            f"{what} became {value.item()} at step {state.step} (epoch {state.epoch + 1}); the run stops here "
            f"before the weights take it, the last good checkpoint stays in {self.run.path}. Fix: lower --lr "
            f"(now {self.cfg.lr}) or check the cache with `egmf-cache verify`")

    @torch.no_grad()
    def _evaluate(self, model, splits, name: str) -> dict:
        return {name: {task.name: score_split(model, data, task, self.cfg.eval_batch_size, self.device, self.bf16)[1]
                       for data, task in zip(splits, self.tasks)}}

    def _plot_history(self, history):
        for t in self.tasks:
            key = "Weighted_F1" if t.is_classification else "MAE"
            rows = [{"epoch": h["epoch"], "train_loss": h["train_loss"], key: h["dev"][t.name][key]}
                    for h in history]
            plots.plot_learning_curves(rows, self.run.plots / f"learning-curves-{t.name.replace('/', '-')}.png",
                                       metric=key)


def train_seeds(cfg: TrainConfig, seeds: list[int]) -> dict:
    """One run, or one run per seed in OUT/seed-N with the mean and std of their best dev metrics."""
    if len(seeds) == 1:
        return Trainer(replace(cfg, seed=seeds[0])).fit()
    runs = {s: Trainer(replace(cfg, seed=s, out=f"{cfg.out}/seed-{s}")).fit() for s in seeds}
    aggregate = {}
    for task, first in runs[seeds[0]]["best_dev"].items():
        for key in first:  # a metric undefined in one seed's best epoch (Corr of constant answers) is left out
            values = [runs[s]["best_dev"][task].get(key) for s in seeds]
            if None not in values:
                aggregate.setdefault(task, {})[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    result = {"seeds": seeds, "dev": aggregate, "runs": {str(s): r for s, r in runs.items()}}
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every process gets here
        RunFolder(Path(cfg.out)).write_json("seeds.json", result)
    return result
