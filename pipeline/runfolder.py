"""A run folder describes itself: config, the caches it was trained on, the trained weights only, metrics, plots.

    RUN/config.json         the resolved training and model config, tasks, modalities
    RUN/caches.json         url, dataset, fingerprint and feature fingerprint of every training cache
    RUN/model/              the best model: peft adapter + fusion weights + model config (EGMF.save)
    RUN/checkpoint.pt       the last training state (trainable weights, optimiser, schedule, RNG, history)
    RUN/metrics.json        per-epoch history and the run summary; RUN/metrics-<split>.json from egmf-eval
    RUN/plots/*.png         learning curves, confusion matrices, expert-gate weights per class
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..cache.reader import Cache
from ..cache.schema import CacheError

CHECKPOINT_FORMAT = 1


class RunError(Exception):
    """A run folder that cannot be used as asked; the message names the folder and the fix."""


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
    os.replace(tmp, path)


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.plots = self.path / "plots"

    @property
    def config(self) -> dict:
        f = self.path / "config.json"
        if not f.exists():
            raise RunError(f"{self.path}: not a run folder (no config.json). Fix: pass the --out of an "
                           "egmf-train run")
        return json.loads(f.read_text())

    @property
    def modalities(self) -> list[str]:
        return self.config["modalities"]

    def caches_json(self) -> list[dict]:
        f = self.path / "caches.json"
        return json.loads(f.read_text()) if f.exists() else []

    def check_caches(self, caches: list[Cache]) -> None:
        """Refuse to continue a run on caches other than those it was trained on."""
        recorded = self.caches_json()
        if not recorded:
            return
        now = [c.fingerprint for c in caches]
        before = [r["fingerprint"] for r in recorded]
        if now != before:
            trained_on = ", ".join(f"{r['url']} ({r['fingerprint'][:12]})" for r in recorded)
            raise CacheError(
                f"{self.path} was trained on {trained_on}; these caches have fingerprints "
                f"{', '.join(f[:12] for f in now)}. Fix: train into a new --out, or delete {self.path} to start over")

    def check_features(self, cache: Cache) -> None:
        """A model reads only features made by the encoders it was trained on."""
        known = {r["features_fingerprint"] for r in self.caches_json()}
        if cache.features_fingerprint not in known:
            raise CacheError(
                f"{cache.url} holds features from other encoders than {self.path} was trained on "
                f"({', '.join(f'{m}: {e.family}:{e.model_id}' for m, e in cache.encoders.items())}). Fix: extract "
                f"the corpus with the run's preset (see {self.path / 'caches.json'})")

    def task_index(self, cache: Cache) -> int:
        names = [t["name"] for t in self.config["tasks"]]
        name = f"{cache.dataset.name}/{cache.dataset.task}"
        if name not in names:
            raise CacheError(f"{self.path} answers {names}, not {name}. Fix: evaluate on a cache of one of those")
        return names.index(name)

    def write_config(self, train_cfg, model_cfg, caches: list[Cache], tasks, modalities) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_json(self.path / "config.json", {
            "train": asdict(train_cfg), "model": model_cfg.to_dict(), "modalities": list(modalities),
            "tasks": [{"name": t.name, "label": asdict(t.label)} for t in tasks]})
        _atomic_json(self.path / "caches.json", [
            {"url": c.url, "dataset": c.dataset.name, "fingerprint": c.fingerprint,
             "features_fingerprint": c.features_fingerprint,
             "encoders": {m: asdict(e) for m, e in c.encoders.items()}} for c in caches])

    def write_json(self, name: str, obj) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_json(self.path / name, obj)
        return self.path / name

    def write_history(self, history: list[dict], summary: dict) -> None:
        self.write_json("metrics.json", {"history": history, "summary": summary})

    # --- weights --------------------------------------------------------------------------------------------------

    def save_model(self, model) -> None:
        """The best model, swapped in whole: a kill while saving leaves the previous one in place."""
        tmp, final, old = self.path / "model.tmp", self.path / "model", self.path / "model.old"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)  # left by a save killed after its swap: final is the whole one
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def load_model(self):
        from .model import EGMF

        # A model.json of format 1 had no context_turns: it was a training option then.
        upgrade = {k: v for k, v in self.config["train"].items() if k == "context_turns"}
        for name in ("model", "model.old"):  # model.old: a kill fell between the two renames of save_model
            if (self.path / name).exists():
                return EGMF.load(self.path / name, upgrade)
        raise RunError(f"{self.path}: no trained model saved yet. Fix: run egmf-train --out {self.path}")

    def save_checkpoint(self, model, opt, sched, state: dict) -> None:
        names = _trainable(model)
        trainable = {k: v for k, v in model.state_dict().items() if k in names}
        blob = {"format": CHECKPOINT_FORMAT, "model": trainable, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "state": state, "rng": _rng_state()}
        tmp = self.path / "checkpoint.pt.tmp"
        torch.save(blob, tmp)
        os.replace(tmp, self.path / "checkpoint.pt")  # atomic: the previous checkpoint stays until this one is whole

    def resume(self, model, opt, sched) -> dict | None:
        f = self.path / "checkpoint.pt"
        if not f.exists():
            return None
        blob = torch.load(f, map_location="cpu", weights_only=False)
        if blob.get("format") != CHECKPOINT_FORMAT:
            raise RunError(f"{f}: checkpoint format {blob.get('format')}, this egmf writes {CHECKPOINT_FORMAT}. "
                           f"Fix: train into a new --out")
        shapes = {n: tuple(p.shape) for n, p in _trainable(model).items()}
        saved = {n: tuple(v.shape) for n, v in blob["model"].items()}
        missing, extra = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
        resized = [f"{n} {saved[n]} here {shapes[n]}" for n in sorted(shapes.keys() & saved) if saved[n] != shapes[n]]
        if missing or extra or resized:
            problem = (f"missing {missing[:3]}" if missing else f"not in this model {extra[:3]}" if extra else
                       f"other shapes: {'; '.join(resized[:3])}")
            raise RunError(f"{f} does not fit this model ({problem}...). Fix: resume with the same --preset and "
                           "options (e.g. --lora-r), or train into a new --out")
        model.load_state_dict(blob["model"], strict=False)
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        _set_rng_state(blob["rng"])
        return blob["state"]


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters by name, in the order the trainer hands them to the optimiser."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: the trainer sets it to its rank's GPU
    return state


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])
