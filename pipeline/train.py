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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from egmf.cache.reader import Cache
from egmf.cache.schema import CacheError
from egmf.pipeline import plots
from egmf.pipeline.data import BatchStream, load_split, task_of
from egmf.pipeline.evaluate import headline, plot_predictions, predict_split, primary_score, split_metrics
from egmf.pipeline.model import EGMF
from egmf.pipeline.precision import autocast, use_bf16
from egmf.pipeline.presets import model_config
from egmf.pipeline.runfolder import RunFolder


@dataclass
class TrainConfig:
    caches: list[str]
    out: str
    preset: str = "offline"  # model preset: which LLM, fusion size (pipeline/presets.py)
    modalities: list[str] | None = None  # default: every modality all caches have
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (quick runs)
    batch_size: int = 8
    lr: float = 1e-3  # the fusion and the LoRA weights start from scratch: a higher rate than full fine-tuning
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of all steps
    grad_clip: float = 1.0
    patience: int = 3  # epochs without a better dev score before stopping
    lora_r: int | None = None  # None: the preset's
    context_turns: int = 4  # preceding dialogue turns given to the global context expert
    eval_batch_size: int = 16
    checkpoint_every: int = 50  # steps
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on CUDA and on CPUs with native bf16, else fp32 (pipeline/precision.py)
    progress: bool = True
    overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"fusion": {"n_tokens": 8}}


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.device = pick_device(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        self.caches = [Cache.open(c) for c in cfg.caches]
        self.tasks = [task_of(c) for c in self.caches]
        self.modalities = shared_modalities(self.caches, cfg.modalities)
        self.run = RunFolder(Path(cfg.out))
        self.run.check_caches(self.caches)  # refuses a run folder made from other caches

    def _splits(self, split: str):
        return [load_split(c, split, self.modalities, t, k, self.cfg.context_turns)
                for k, (c, t) in enumerate(zip(self.caches, self.tasks))]

    def fit(self) -> dict:
        cfg = self.cfg
        seed_everything(cfg.seed)
        train, dev = self._splits("train"), self._splits("dev")
        dims = {m: self.caches[0].encoders[m].dim for m in self.modalities}
        mcfg = model_config(cfg.preset, dims, self.tasks, lora_r=cfg.lora_r, **cfg.overrides)
        model = EGMF(mcfg).to(self.device)
        stream = BatchStream(train, cfg.batch_size, shuffle=True, seed=cfg.seed, rank=self.rank, world=self.world)
        steps_per_epoch = len(stream)
        total = min(cfg.max_steps or math.inf, steps_per_epoch * cfg.epochs)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup * total), int(total))
        wrapped = torch.nn.parallel.DistributedDataParallel(model) if self.world > 1 else model
        state = self.run.resume(model, opt, sched) or {"step": 0, "epoch": 0, "history": [], "best": -math.inf,
                                                        "bad_epochs": 0}
        if self.rank == 0:
            self.run.write_config(cfg, mcfg, self.caches, self.tasks, self.modalities)
        bar = tqdm(total=int(total), initial=state["step"], desc="train", unit="step",
                   disable=not cfg.progress or self.rank != 0)
        t0, data_wait, step_time = time.perf_counter(), 0.0, 0.0  # waiting for batches, within whole steps
        while state["epoch"] < cfg.epochs and state["step"] < total and state["bad_epochs"] < cfg.patience:
            stream.epoch = state["epoch"]
            skip = state["step"] - state["epoch"] * steps_per_epoch  # batches done before a resume
            if skip == 0:
                state["epoch_losses"] = {"loss": [], "lm": [], "aux": []}
            # In the checkpointed state, so that an epoch resumed half-way reports the means over all its steps.
            losses, lm, aux = (state["epoch_losses"][k] for k in ("loss", "lm", "aux"))
            model.train()
            tick = time.perf_counter()
            for k, batch in enumerate(stream):
                if k < skip:
                    continue
                batch = batch.to(self.device)
                data_wait += time.perf_counter() - tick
                with autocast(self.device, self.bf16):
                    out = wrapped(batch)
                if not torch.isfinite(out.loss):
                    self._diverged("loss", out.loss, state)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                # A finite loss can still overflow in the backward pass; the update would then make the weights NaN
                # and the epoch's end would evaluate and checkpoint them.
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if not torch.isfinite(norm):
                    self._diverged("gradient norm", norm, state)
                opt.step()
                sched.step()
                state["step"] += 1
                losses.append(out.loss.item())
                lm.append(out.lm_loss.item())
                aux.append(out.aux_loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                step_time += time.perf_counter() - tick
                epoch_ends = state["step"] >= min(total, (state["epoch"] + 1) * steps_per_epoch)
                # Not at an epoch's last step: its checkpoint follows the dev evaluation, and one taken here would
                # resume into an epoch with no step left to run and no record of it.
                if state["step"] % cfg.checkpoint_every == 0 and self.rank == 0 and not epoch_ends:
                    self.run.save_checkpoint(model, opt, sched, state)
                if state["step"] >= total:
                    break
                tick = time.perf_counter()
            finished_epoch = state["step"] >= (state["epoch"] + 1) * steps_per_epoch
            record = {"epoch": state["epoch"] + 1, "step": state["step"],
                      "train_loss": float(np.mean(losses)) if losses else None,
                      "train_lm_loss": float(np.mean(lm)) if lm else None,
                      "train_aux_loss": float(np.mean(aux)) if aux else None}
            record.update(self._evaluate(model, dev, "dev"))
            score = float(np.mean([primary_score(t, record["dev"][t.name]) for t in self.tasks]))
            record["dev_score"] = score
            state["history"].append(record)
            if self.rank == 0:
                bar.write(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}; dev "
                          + "; ".join(f"{t.name} {headline(t, record['dev'][t.name])}" for t in self.tasks))
            if score > state["best"]:
                state["best"], state["bad_epochs"] = score, 0
                if self.rank == 0:
                    self.run.save_model(model)
            else:
                state["bad_epochs"] += 1
            if finished_epoch:
                state["epoch"] += 1
            if self.rank == 0:
                self.run.save_checkpoint(model, opt, sched, state)
            if not finished_epoch:
                break
        bar.close()
        elapsed = time.perf_counter() - t0
        best = max(state["history"], key=lambda h: h["dev_score"])
        summary = {"steps": state["step"], "epochs": len(state["history"]), "best_epoch": best["epoch"],
                   "best_dev_score": state["best"],
                   "best_dev": {t: _scalars(m) for t, m in best["dev"].items()},
                   "seconds": elapsed, "data_wait_fraction": data_wait / max(step_time, 1e-9),
                   "trainable_parameters": sum(p.numel() for p in params)}
        if self.rank == 0:
            self.run.write_history(state["history"], summary)
            self._plot_history(state["history"])
        if self.world > 1:
            dist.barrier()
        return summary

    def _diverged(self, what: str, value: torch.Tensor, state: dict):
        raise FloatingPointError(
            f"{what} became {value.item()} at step {state['step']} (epoch {state['epoch'] + 1}); the run stops here "
            f"before the weights take it, the last good checkpoint stays in {self.run.path}. Fix: lower --lr "
            f"(now {self.cfg.lr}) or check the cache with `egmf-cache verify`")

    @torch.no_grad()
    def _evaluate(self, model, splits, name: str) -> dict:
        out = {}
        for data, task in zip(splits, self.tasks):
            with autocast(self.device, self.bf16):
                pred = predict_split(model, data, task, self.cfg.eval_batch_size, self.device)
            out[task.name] = split_metrics(pred)
        return {name: out}

    def _plot_history(self, history):
        for t in self.tasks:
            key = "Weighted_F1" if t.is_classification else "MAE"
            rows = [{"epoch": h["epoch"], "train_loss": h["train_loss"], key: h["dev"][t.name][key]}
                    for h in history]
            plots.plot_learning_curves(rows, self.run.plots / f"learning-curves-{t.name.replace('/', '-')}.png",
                                       metric=key, losses=("train_loss",))


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def train_seeds(cfg: TrainConfig, seeds: list[int]) -> dict:
    """One run, or one run per seed in OUT/seed-N with the mean and std of their best dev metrics."""
    if len(seeds) == 1:
        return Trainer(replace(cfg, seed=seeds[0])).fit()
    runs = {s: Trainer(replace(cfg, seed=s, out=f"{cfg.out}/seed-{s}")).fit() for s in seeds}
    aggregate = {}
    for task in runs[seeds[0]]["best_dev"]:
        for key in runs[seeds[0]]["best_dev"][task]:
            values = [runs[s]["best_dev"][task][key] for s in seeds]
            aggregate.setdefault(task, {})[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    result = {"seeds": seeds, "dev": aggregate, "runs": {str(s): r for s, r in runs.items()}}
    RunFolder(Path(cfg.out)).write_json("seeds.json", result)
    return result


def evaluate_run(run_dir: str, cache_url: str, split: str, batch_size: int = 16, device: str = "auto") -> dict:
    """egmf-eval: the best model of a run on one split of a cache; metrics JSON and plots into the run folder."""
    run = RunFolder(Path(run_dir))
    cache = Cache.open(cache_url)
    run.check_features(cache)
    model = run.load_model().to(pick_device(device))
    task_index = run.task_index(cache)
    task = model.config.tasks[task_index]
    data = load_split(cache, split, run.modalities, task, task_index, run.config["train"]["context_turns"])
    with autocast(pick_device(device), use_bf16("auto", pick_device(device))):
        pred = predict_split(model, data, task, batch_size, pick_device(device))
    metrics = split_metrics(pred)
    result = {"cache": cache.url, "fingerprint": cache.fingerprint, "split": split, "task": task.name,
              "metrics": metrics}
    run.write_json(f"metrics-{split}.json", result)
    plot_predictions(pred, metrics, run.plots, split)
    return result
