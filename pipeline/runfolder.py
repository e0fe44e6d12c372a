"""A run folder describes itself: config, the caches it was trained on, the trained weights only, metrics, plots.

    RUN/config.json         the resolved training and model config, tasks, modalities
    RUN/caches.json         url, dataset, fingerprint and feature fingerprint of every training cache
    RUN/model/              the best model: peft adapter + fusion weights + model config (EGMF.save)
    RUN/checkpoint.pt       the last training state (trainable weights, optimiser, schedule, RNG, history), read
                            with torch.load(weights_only=True): tensors and plain containers only, never code
    RUN/metrics.json        per-epoch history and the run summary; RUN/metrics-<split>.json from egmf-eval
    RUN/plots/*.png         learning curves, confusion matrices, expert-gate weights per class
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..cache.reader import Cache
from ..cache.schema import CacheError

# 2: RNG states as tensors and plain numbers. 1 (still resumed): numpy's RNG state as its own tuple with an array.
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
CHECKPOINT_PARTS = ("model", "optimizer", "scheduler", "state", "rng")
# What a format-1 checkpoint needs beyond torch's weights-only types: numpy's uint32 key array of the RNG state (the
# project has always pinned numpy 2, which pickles it under numpy._core). Rebuilding an array runs no code.
FORMAT_1_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


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

    def save_checkpoint(self, model, opt, sched, state: dict, average=None) -> None:
        names = trainable_by_name(model)
        trainable = {k: v for k, v in model.state_dict().items() if k in names}
        blob = {"format": CHECKPOINT_FORMAT, "model": trainable, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "state": state, "rng": _rng_state()}
        if average is not None:
            blob["average"] = average.state_dict()
        tmp = self.path / "checkpoint.pt.tmp"
        torch.save(blob, tmp)
        os.replace(tmp, self.path / "checkpoint.pt")  # atomic: the previous checkpoint stays until this one is whole

    def resume(self, model, opt, sched, like: dict | None = None, average=None) -> dict | None:
        """The training state of the checkpoint, its weights, optimiser, schedule and RNG states restored (and
        the weight average's, with one); None when there is none. like: a fresh training state, whose keys and
        value types the saved one must have."""
        f = self.path / "checkpoint.pt"
        if not f.exists():
            return None
        blob = read_checkpoint(f)
        wrong = [k for k, v in (like or {}).items()
                 if not isinstance(blob["state"].get(k), (int, float) if isinstance(v, float) else type(v))]
        if wrong:
            raise RunError(f"{f}: a damaged checkpoint (its training state lacks or mistypes {', '.join(wrong)}). "
                             f"{_REFUSED_FIX.format(f=f)}")
        shapes = {n: tuple(p.shape) for n, p in trainable_by_name(model).items()}
        saved = {n: tuple(v.shape) for n, v in blob["model"].items()}
        missing, extra = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
        resized = [f"{n} {saved[n]} here {shapes[n]}" for n in sorted(shapes.keys() & saved) if saved[n] != shapes[n]]
        if missing or extra or resized:
            problem = (f"missing {missing[:3]}" if missing else f"not in this model {extra[:3]}" if extra else
                       f"other shapes: {'; '.join(resized[:3])}")
            raise RunError(f"{f} does not fit this model ({problem}...). Fix: resume with the same --preset and "
                           "options (e.g. --lora-r), or train into a new --out")
        groups = blob.get("optimizer", {}).get("param_groups") if isinstance(blob.get("optimizer"), dict) else None
        if isinstance(groups, list) and len(groups) != len(opt.param_groups):
            was, now = (("with", "without") if len(groups) > len(opt.param_groups) else ("without", "with"))
            raise RunError(f"{f}: the run was trained {was} --fusion-lr and is resumed {now} it (the optimiser "
                           f"keeps {len(groups)} parameter group(s), this run has {len(opt.param_groups)}). Fix: "
                           "resume with the options the run started with (its config.json), or train into a new --out")
        if (average is None) != ("average" not in blob):
            was, now = (("with", "without") if average is None else ("without", "with"))
            raise RunError(f"{f}: the run was trained {was} --ema-decay and is resumed {now} it. Fix: resume with "
                           "the options the run started with (its config.json), or train into a new --out")
        if average is not None:
            shadow = blob["average"]
            if not isinstance(shadow, dict) or {n: tuple(v.shape) for n, v in shadow.items()
                                                if isinstance(v, torch.Tensor)} != shapes:
                raise RunError(f"{f}: a damaged checkpoint (its weight average does not match its weights). "
                               f"{_REFUSED_FIX.format(f=f)}")
            average.load_state_dict(shadow)
        model.load_state_dict(blob["model"], strict=False)
        try:
            opt.load_state_dict(blob["optimizer"])
            sched.load_state_dict(blob["scheduler"])
            _set_rng_state(blob["rng"])
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
            raise RunError(f"{f}: a damaged checkpoint (its optimiser, schedule or RNG state: "
                             f"{type(e).__name__}: {e}). {_REFUSED_FIX.format(f=f)}") from None
        return blob["state"]


_REFUSED_FIX = ("Fix: train into a new --out, or delete {f} to train this run again from its start; take run "
                "folders only from people you trust")


def read_checkpoint(f: Path) -> dict:
    """A checkpoint's parts, read as data only: a run folder may come from someone else, and a full unpickle
    runs whatever code the file names. A crafted, damaged or foreign file is refused naming it."""
    fix = _REFUSED_FIX.format(f=f)
    try:
        with torch.serialization.safe_globals(FORMAT_1_GLOBALS):
            blob = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: torch raises zip, pickle and storage errors of many types
        refused = _weights_only_refusal(str(e))
        if refused:
            raise RunError(f"{f}: refused to load: it holds more than tensors and plain data ({refused}); "
                             f"nothing in it was run. {fix}") from None
        cause = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))  # without torch's advice around it
        raise RunError(f"{f}: not a readable checkpoint ({type(e).__name__}: "
                         f"{cause[1] if cause else e}). {fix}") from None
    if not isinstance(blob, dict):
        raise RunError(f"{f}: a damaged checkpoint (it holds a {type(blob).__name__}, not egmf's dict). {fix}")
    if blob.get("format") not in READABLE_FORMATS:
        raise RunError(f"{f}: checkpoint format {blob.get('format')}, this egmf writes {CHECKPOINT_FORMAT}. {fix}")
    missing = [k for k in CHECKPOINT_PARTS if not isinstance(blob.get(k), dict)]
    if missing:
        raise RunError(f"{f}: a damaged checkpoint (no {', '.join(missing)}). {fix}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob["model"].items()):
        raise RunError(f"{f}: a damaged checkpoint (its weights are not all named tensors). {fix}")
    return blob


def _weights_only_refusal(message: str) -> str | None:
    """What torch's weights-only loader refused to call or build, or None when the file is merely damaged.

    torch wraps the cause ("... unsupported GLOBAL posix.system ...") in advice to load with weights_only=False,
    exactly what must not be done with such a file: only the cause is kept."""
    called = re.search(r"GLOBAL ([\w.]+)", message)
    if called:
        return f"it calls {called[1]}"
    built = re.search(r"Can only build [^\n]+", message)
    return built[0] if built else None


def trainable_by_name(model) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters by name, in the order the trainer hands them to the optimiser."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict:
    """Every generator's state as tensors and plain numbers: what a weights-only load reads."""
    _, mt, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),  # (int, tuple of ints, float or None): plain data already
             "numpy": {"key": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: the trainer sets it to its rank's GPU
    return state


def _set_rng_state(s: dict) -> None:
    numpy_state = s["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = ("MT19937", numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["gauss"])
    random.setstate(s["python"])
    np.random.set_state(numpy_state)  # a format-1 checkpoint holds the tuple np.random.get_state() returns
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])
