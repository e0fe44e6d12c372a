"""`egmf-bench`: measure what the two-stage design buys, against the ways people do it today (issue 6).

Five benchmarks, one function each, each returning a dict:
  1 bench_cache_vs_media       one training epoch reading the cache against the same epoch decoding and encoding
                               every clip of every batch (demo corpus)
  2 bench_storage              the cache against an MMSA-style float32 pickle and plain .npy files (synthetic
                               MOSEI-sized features): open + first batch, full scan, size on disk, peak memory
  3 bench_extraction_speed     egmf-extract against a naive per-clip loop, same encoders and clips
  4 bench_extraction_memory    peak RSS of egmf-extract for few and for ten times more clips
  5 bench_input_pipeline       the share of training step time spent waiting for data
A result holds its checks (value, target, passed), the raw measurements, and, where a target is missed, what
bounds it. Ratios carry over between machines; absolute times stay in the JSON for reference. Memory is measured
in fresh subprocesses, so each number is one reader's or one run's alone.

Heavy libraries are imported inside the functions that use them: the memory probes run in fresh subprocesses
that should load only what they measure.
"""
from __future__ import annotations

import datetime as dt
import json
import operator
import os
import pickle
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import typer

from egmf.cache.mmsa import SOURCES as MMSA_KEYS
from egmf.cache.mmsa import SPLITS as MMSA_SPLITS

REPORT_FORMAT = 1
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
MOSEI = {"audio": (500, 74), "visual": (375, 35), "text": (50, 768)}  # (T, D) of MMSA's unaligned_50 features
MB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark runs. FULL is what the README reports; QUICK only shows that the code works."""

    encoders: str  # encoder preset of every extraction
    model: str  # model preset of every training epoch
    demo_clips: int  # benchmarks 1 and 5: the demo corpus
    extract_clips: int  # benchmark 3: clips both extractors process
    memory_clips: tuple[int, int]  # benchmark 4: a small and a ten times larger extraction
    mosei_rows: dict  # benchmark 2: rows per MMSA split (train / valid / test)
    repeats: int  # timed runs of benchmarks 2 and 3; the fastest counts, since the machine may be shared
    batch_size: int = 8  # training batch: TrainConfig's default
    first_batch: int = 32  # benchmark 2: rows of the first batch


FULL = Sizes("offline", "tiny", 280, 100, (100, 1000), {"train": 16326, "valid": 1871, "test": 4659}, 2)
QUICK = Sizes("tiny", "tiny", 28, 14, (14, 28), {"train": 96, "valid": 16, "test": 16}, 1)


# --- results -----------------------------------------------------------------------------------------------------

COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


def check(name: str, value: float, target: float | None, compare: str = ">=", unit: str = "x") -> dict:
    """One measured number against its target; target None = reported, no target."""
    passed = None if target is None else bool(COMPARE[compare](value, target))
    return {"name": name, "value": float(value), "target": target, "compare": compare, "unit": unit,
            "passed": passed}


def result(title: str, setup: str, checks: list[dict], measured: dict, bound: list[str]) -> dict:
    """A benchmark's answer; `bound` (what limits the numbers) is kept only when a target is missed."""
    missed = any(c["passed"] is False for c in checks)
    return {"title": title, "setup": setup, "checks": checks, "passed": not missed, "measured": measured,
            "bound": bound if missed else []}


def machine_info() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    packages = ("egmf", "torch", "numpy", "zarr", "numcodecs", "transformers", "open_clip_torch", "av")
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "ram_gib": round(_proc_kib("/proc/meminfo", "MemTotal") / (1 << 20), 1),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": {p: _version(p) for p in packages}}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.readlines()
    except OSError:
        return []


def _proc_kib(path: str, key: str) -> int:
    return next((int(line.split()[1]) for line in _lines(path) if line.startswith(key + ":")), 0)


def peak_rss() -> int:
    """Bytes: the high-water resident set of this process. VmHWM rather than ru_maxrss, which a spawned child
    starts at its parent's size (exec records the replaced address space's peak)."""
    import resource

    return _proc_kib("/proc/self/status", "VmHWM") * 1024 or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, *args) -> tuple:
    """(fn(*args), wall seconds, CPU seconds of this process in all its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def in_subprocess(fn, *args):
    """fn(*args) in a fresh interpreter (spawned, not forked: nothing of this process's memory comes along)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# --- shared scratch data -----------------------------------------------------------------------------------------

class Workspace:
    """Scratch data the benchmarks of one run share: demo corpora and the demo cache, each made once."""

    def __init__(self, root: Path, sizes: Sizes, seed: int = 0, progress: bool = True):
        self.root, self.sizes, self.seed, self.progress = Path(root), sizes, seed, progress
        self.extraction_seconds: float | None = None  # making the demo cache, when this run made it

    def say(self, message: str) -> None:
        if self.progress:
            print(f"[egmf-bench] {message}", file=sys.stderr, flush=True)

    def demo(self, n_clips: int):
        """(root, corpus) of the demo corpus with n_clips clips, generated on first use."""
        from egmf.extract.datasets import demo

        root = self.root / f"demo-{n_clips}"
        return root, demo.load(root, n_clips=n_clips, seed=self.seed, progress=self.progress)

    def extract_config(self, n_clips: int, out: Path, limit: int | None = None):
        from egmf.extract.run import ExtractConfig

        return ExtractConfig("demo", self.root / f"demo-{n_clips}", str(out), preset=self.sizes.encoders,
                             limit=limit, progress=False,
                             dataset_options={"n_clips": n_clips, "seed": self.seed, "progress": False})

    def encoders(self, corpus) -> dict:
        """The preset's encoders, loaded once per process and shared with egmf-extract's own runs."""
        from egmf.extract.presets import load_preset
        from egmf.extract.run import cached_encoder, main_language

        configs = load_preset(self.sizes.encoders).encoders(main_language(corpus))
        return {m: cached_encoder(c, "auto") for m, c in configs.items()}

    def demo_cache(self) -> str:
        from egmf.extract.run import extract

        url = self.root / "demo-cache"
        if not url.exists():
            self.demo(self.sizes.demo_clips)
            self.say(f"extracting the demo corpus ({self.sizes.demo_clips} clips, {self.sizes.encoders} encoders)")
            self.extraction_seconds = extract(self.extract_config(self.sizes.demo_clips, url)).seconds
        return str(url)


# --- 1 and 5: training epochs ------------------------------------------------------------------------------------

def fresh_model(cache, task, preset: str, seed: int):
    from egmf.pipeline.model import EGMF
    from egmf.pipeline.presets import model_config
    from egmf.pipeline.train import seed_everything

    seed_everything(seed)
    return EGMF(model_config(preset, {m: e.dim for m, e in cache.encoders.items()}, [task]))


def train_epochs(runs: dict) -> dict:
    """Optimiser steps as the Trainer makes them over each run's batches, one step of each run in turn, so that
    all runs see the same background load (the machine may be shared). runs: name -> (model, batches).
    Returns per run the seconds of its own steps, the part of them spent waiting for a batch, and the steps."""
    import torch

    from egmf.pipeline.train import TrainConfig

    live, out = {}, {}
    for name, (model, batches) in runs.items():
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=TrainConfig.lr, weight_decay=TrainConfig.weight_decay)
        model.train()
        live[name] = (model, params, opt, iter(batches))
        out[name] = {"seconds": 0.0, "data_seconds": 0.0, "steps": 0}
    while live:
        for name, (model, params, opt, batches) in list(live.items()):
            tick = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                del live[name]
                continue
            out[name]["data_seconds"] += time.perf_counter() - tick
            loss = model(batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, TrainConfig.grad_clip)
            opt.step()
            out[name]["seconds"] += time.perf_counter() - tick
            out[name]["steps"] += 1
    return out


def load_train_split(url: str, context_turns: int):
    """(cache, task, split data) of the training rows; the time it takes is part of a cache epoch."""
    from egmf.cache.reader import Cache
    from egmf.pipeline.data import load_split, task_of

    cache = Cache.open(url)
    task = task_of(cache)
    return cache, task, load_split(cache, "train", list(cache.modalities), task, 0, context_turns)


def padded(rows: list, spec) -> tuple[np.ndarray, np.ndarray]:
    """Encoder outputs (T_i, D) or None, zero-padded to the cache's (n, T, D) float16 layout, with lengths."""
    out = np.zeros((len(rows), spec.max_steps, spec.dim), np.float16)  # (n, T, D)
    lengths = np.zeros(len(rows), np.int32)
    for i, x in enumerate(rows):
        if x is not None:
            out[i, : len(x)], lengths[i] = x, len(x)
    return out, lengths


def media_batches(utts: list, encoders: dict, task, batch_size: int, context_turns: int, timings: dict):
    """Batches made the way a pipeline without a cache makes them: every clip of every batch decoded (a thread
    pool, as egmf-extract decodes) and run through the encoders (batched), then padded and collated like the
    cache's rows. timings accumulates seconds per stage: decode and each modality."""
    from egmf.extract.run import ExtractConfig, encode_block, submit_decodes
    from egmf.pipeline.data import SplitData, collate

    with ThreadPoolExecutor(ExtractConfig.decode_threads) as pool:
        for a in range(0, len(utts), batch_size):
            chunk = utts[a: a + batch_size]
            n = len(chunk)
            tick = time.perf_counter()
            clips = [d.result() if d is not None else None for d in submit_decodes(pool, chunk, encoders)]
            timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - tick
            features, lengths = {}, {}
            for m, enc in encoders.items():
                tick = time.perf_counter()
                rows = encode_block(chunk, clips, {m: enc}, batch_size)[0][m]
                timings[m] = timings.get(m, 0.0) + time.perf_counter() - tick
                features[m], lengths[m] = padded(rows, enc.spec)
            data = SplitData(features, lengths, np.full((n, context_turns), -1, np.int64),
                             [u.text for u in chunk], [u.language for u in chunk],
                             [u.labels[task.label.name] for u in chunk], np.arange(n), 0)
            yield collate(data, np.arange(n), data.pooled())


def bench_cache_vs_media(ws: Workspace) -> dict:
    """1: one training epoch on the demo corpus reading the cache, against the same epoch from raw media."""
    from egmf.cache.schema import features_fingerprint
    from egmf.extract.datasets.demo import DemoConfig
    from egmf.pipeline.data import BatchStream
    from egmf.pipeline.train import TrainConfig

    s, context, clip = ws.sizes, TrainConfig.context_turns, DemoConfig()
    url = ws.demo_cache()
    _, corpus = ws.demo(s.demo_clips)
    encoders = ws.encoders(corpus)

    tick = time.perf_counter()
    cache, task, data = load_train_split(url, context)
    stream = BatchStream([data], s.batch_size, shuffle=False)
    load_seconds = time.perf_counter() - tick
    if features_fingerprint({m: e.spec for m, e in encoders.items()}) != cache.features_fingerprint:
        raise RuntimeError(f"{url}: the demo cache was not made by the {s.encoders} encoders this run loaded")
    by_id = {u.id: u for u in corpus.utterances}
    utts = [by_id[i] for i in cache.meta["id"][data.rows]]
    warm_up(utts[: s.batch_size], encoders, s.batch_size)
    train_epochs({"warm-up": (fresh_model(cache, task, s.model, ws.seed), [next(iter(stream))])})

    ws.say("1: an epoch from the cache and the same epoch decoding and encoding every clip, step by step in turn")
    stages: dict[str, float] = {}
    epochs = train_epochs({"cache": (fresh_model(cache, task, s.model, ws.seed), stream),
                           "media": (fresh_model(cache, task, s.model, ws.seed),
                                     media_batches(utts, encoders, task, s.batch_size, context, stages))})
    from_cache, from_media = epochs["cache"], epochs["media"]
    cache_seconds = load_seconds + from_cache["seconds"]

    steps = from_cache["steps"]
    model_seconds = from_cache["seconds"] - from_cache["data_seconds"]  # optimiser steps alone
    media_input = from_media["data_seconds"]
    speedup = from_media["seconds"] / cache_seconds
    measured = {"clips": len(utts), "steps": steps, "batch_size": s.batch_size,
                "cache_epoch_seconds": cache_seconds, "cache_load_seconds": load_seconds, "cache_epoch": from_cache,
                "media_epoch_seconds": from_media["seconds"], "media_epoch": from_media,
                "media_input_seconds": stages, "demo_extraction_seconds": ws.extraction_seconds}
    if ws.extraction_seconds is not None and from_media["seconds"] > cache_seconds:
        # Extracting once pays for itself after this many epochs.
        measured["break_even_epochs"] = ws.extraction_seconds / (from_media["seconds"] - cache_seconds)
    step_ms, input_ms = model_seconds / steps * 1000, media_input / steps * 1000
    per_batch = ", ".join(f"{k} {v / steps * 1000:.0f}" for k, v in stages.items())
    bound = [f"The model step itself takes {step_ms:.0f} ms per batch of {s.batch_size} "
             f"({model_seconds / cache_seconds:.0%} of the cache epoch), while decoding and encoding add "
             f"{input_ms:.0f} ms per batch ({per_batch}); so even if reading the cache cost nothing, the speed-up "
             f"could not exceed 1 + {input_ms:.0f}/{step_ms:.0f} = {1 + input_ms / step_ms:.1f}x.",
             f"The ratio grows with the encoders' cost per clip: the {s.encoders} preset's encoders are small "
             f"models sized for CPU tests, and the demo clips are short and small ({clip.min_seconds:g}-"
             f"{clip.max_seconds:g} s, {clip.size}x{clip.size} px)."]
    setup = (f"demo corpus, {len(utts)} training clips, batch {s.batch_size}; model preset {s.model}; "
             f"encoder preset {s.encoders}; cache epoch includes opening the cache and loading the split")
    return result("Stage two: an epoch from the cache vs from raw media", setup,
                  [check("speed-up from the cache", speedup, 100)], measured, bound)


def bench_input_pipeline(ws: Workspace) -> dict:
    """5: the share of training step time spent waiting for data, and whether the Trainer's own number says so."""
    from egmf.pipeline.data import BatchStream
    from egmf.pipeline.train import TrainConfig, Trainer

    s = ws.sizes
    url = ws.demo_cache()
    ws.say("5: an epoch timing every wait for a batch")
    cache, task, data = load_train_split(url, TrainConfig.context_turns)
    stream = BatchStream([data], s.batch_size, shuffle=True, seed=ws.seed)
    train_epochs({"warm-up": (fresh_model(cache, task, s.model, ws.seed), [next(iter(stream))])})
    epoch = train_epochs({"cache": (fresh_model(cache, task, s.model, ws.seed), stream)})["cache"]
    fraction = epoch["data_seconds"] / epoch["seconds"]

    ws.say("5: the same epoch through the Trainer")
    summary = Trainer(TrainConfig(caches=[url], out=str(ws.root / "train-run"), preset=s.model, epochs=1,
                                  batch_size=s.batch_size, seed=ws.seed, progress=False)).fit()
    trainer_fraction, fit_seconds = summary["data_wait_fraction"], summary["seconds"]
    agrees = abs(trainer_fraction - fraction) <= max(0.005, 0.25 * fraction)
    verdict = (f"Trainer.fit's data_wait_fraction is {trainer_fraction:.2%}: {trainer_fraction * fit_seconds:.2f} s"
               f" of waiting (this loop: {epoch['data_seconds']:.2f} s) over its {fit_seconds:.1f} s of fit, "
               f"which also hold the dev evaluation and checkpoints (this loop: {epoch['seconds']:.1f} s of steps "
               "and waits). " + ("Both give the same share." if agrees else
                                 "The shares differ: the Trainer's is a share of the whole fit, not of step time."))
    measured = {"epoch": epoch, "steps": epoch["steps"], "trainer_summary_seconds": fit_seconds,
                "trainer_data_wait_fraction": trainer_fraction, "trainer_agrees": agrees,
                "trainer_check": verdict}
    bound = [f"Data waits are {epoch['data_seconds'] / epoch['steps'] * 1000:.1f} ms per batch against "
             f"{(epoch['seconds'] - epoch['data_seconds']) / epoch['steps'] * 1000:.1f} ms per step: batches are "
             "cut and padded from RAM in the training process, between steps."]
    setup = f"demo cache, model preset {s.model} (the cheapest step, the strictest test), batch {s.batch_size}"
    return result("Training input pipeline: waiting for data", setup,
                  [check("share of step time waiting for data", fraction, 0.02, "<", "fraction")], measured, bound)


# --- 2: storage formats ------------------------------------------------------------------------------------------

def split_ranges(rows: dict) -> dict[str, tuple[int, int]]:
    """MMSA split -> (first, stop) of its rows in the synthetic corpus, which holds train, valid, test in order."""
    out, start = {}, 0
    for split, n in rows.items():
        out[split] = (start, start + n)
        start += n
    return out


def write_synthetic_mosei(folder: Path, rows: dict, seed: int = 0) -> dict[str, Path]:
    """A MOSEI-sized corpus in three formats holding the same features: an MMSA pickle (float32), .npy files per
    split and modality (float16, what the cache returns), and a cache. Returns the paths.

    Lengths follow a log-normal utterance duration (median 6 s): 40 audio and 30 video steps per second, 2.8 word
    pieces per second plus [CLS] and [SEP], each capped at MOSEI's T, so a good part of every array is zero
    padding. Values are standard normal, so only the padding and float16 make the cache smaller; features with
    more structure may compress better.
    """
    from egmf.cache.schema import DatasetSpec, EncoderSpec, LabelSpec
    from egmf.cache.writer import CacheWriter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = sum(rows.values())
    seconds = np.clip(rng.lognormal(np.log(6.0), 0.6, n), 1.0, 40.0)
    steps = {"audio": 40 * seconds, "visual": 30 * seconds, "text": 2.8 * seconds + 2}
    lengths = {m: np.minimum(t, np.ceil(steps[m])).astype(np.int32) for m, (t, d) in MOSEI.items()}
    labels = np.round(rng.uniform(-3, 3, n), 1).astype(np.float32)
    source = {}  # the float32 features of every row, memory-mapped: the corpus never sits in RAM whole
    for m, (t, d) in MOSEI.items():
        source[m] = np.lib.format.open_memmap(folder / f"source-{m}.npy", "w+", np.float32, (n, t, d))
        for a in range(0, n, 256):
            x = rng.standard_normal((min(256, n - a), t, d), dtype=np.float32)  # (B, T, D)
            x[np.arange(t)[None, :] >= lengths[m][a: a + 256, None]] = 0.0
            source[m][a: a + len(x)] = x
    ranges = split_ranges(rows)
    ids = [f"{split}_{i:05d}" for split, (a, b) in ranges.items() for i in range(b - a)]

    pkl = folder / "unaligned_50.pkl"
    data = {split: {"id": ids[a:b], "raw_text": [""] * (b - a), "regression_labels": labels[a:b],
                    # ndarray views of the maps: pickle writes them straight from the page cache
                    **{key: np.asarray(source[m][a:b]) for m, key in MMSA_KEYS.items()},
                    "audio_lengths": lengths["audio"][a:b].tolist(), "vision_lengths": lengths["visual"][a:b].tolist()}
            for split, (a, b) in ranges.items()}
    with open(pkl, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    del data

    npy = folder / "npy"
    npy.mkdir(exist_ok=True)
    for split, (a, b) in ranges.items():
        for m in MOSEI:
            out = np.lib.format.open_memmap(npy / f"{split}_{m}.npy", "w+", np.float16, source[m][a:b].shape)
            for c in range(a, b, 256):
                out[c - a: min(c + 256, b) - a] = source[m][c: min(c + 256, b)]
            out.flush()
            np.save(npy / f"{split}_{m}_lengths.npy", lengths[m][a:b])

    store = folder / "cache"
    splits = [MMSA_SPLITS[split] for split, (a, b) in ranges.items() for _ in range(b - a)]
    meta = {"id": ids, "split": splits, "text": [""] * n, "language": ["en"] * n, "dialogue": [""] * n,
            "turn": [-1] * n}
    spec = DatasetSpec("mosei-synthetic", "1", "sentiment", (LabelSpec("sentiment", "score", low=-3.0, high=3.0),))
    encoders = {m: EncoderSpec(m, "synthetic", "standard-normal", f"seed-{seed}", d, t) for m, (t, d) in MOSEI.items()}
    writer = CacheWriter.create(store, spec, encoders, meta, {"sentiment": labels.tolist()})
    for a, b in writer.pending_blocks():
        writer.write_block(a, {m: [source[m][i, : lengths[m][i]] for i in range(a, b)] for m in MOSEI})
    del source
    for m in MOSEI:
        (folder / f"source-{m}.npy").unlink()
    return {"pickle": pkl, "npy": npy, "cache": store}


def read_probe(fmt: str, path: str, split: str, rows: int | None) -> dict:
    """Run in a fresh process: read the first `rows` rows (None: all) of one split as the format allows, and
    report the time, the bytes read into RAM and the process's peak resident memory."""
    if fmt in ("cache", "zarr"):
        from egmf.cache.reader import Cache  # imported before the clock starts, as the others need no import
    before = _proc_kib("/proc/self/status", "VmRSS") * 1024
    tick = time.perf_counter()
    if fmt == "pickle":  # the whole file, every split, before any row is there
        with open(path, "rb") as f:
            part = pickle.load(f)[split]
        features = {m: part[key][:rows] for m, key in MMSA_KEYS.items()}
    elif fmt == "npy":  # a batch through a memory map, a scan by reading the files
        files = {m: Path(path) / f"{split}_{m}.npy" for m in MOSEI}
        features = {m: np.array(np.load(f, mmap_mode="r")[:rows]) if rows else np.load(f) for m, f in files.items()}
    else:
        cache = Cache.open(path)
        index = cache.rows(MMSA_SPLITS[split])[:rows]
        if fmt == "cache":
            features = {m: cache.features(m, index, lazy=False)[0] for m in cache.modalities}
        else:  # "zarr": the store's arrays read directly, the codec's share of the cache's time
            features = {m: cache.group[f"{m}/features"][index[0]: index[-1] + 1] for m in cache.modalities}
    seconds = time.perf_counter() - tick
    return {"seconds": seconds, "rows": len(next(iter(features.values()))),
            "bytes": sum(x.nbytes for x in features.values()), "rss_before": before, "peak_rss": peak_rss()}


def folder_bytes(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def files_of(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def warm(path: Path) -> None:
    """Read the files once, so that a read is timed from the page cache."""
    for p in files_of(path):
        with open(p, "rb") as f:
            while f.read(64 * MB):
                pass


def evict(path: Path) -> None:
    """Drop the files from the page cache (theirs only, no privileges needed), so that a read is timed from disk."""
    for p in files_of(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def zstd_decode_rate(npy: Path, split: str = "train", rows: int = 64, repeats: int = 3) -> float:
    """MB/s of features one core decodes with the store's codec (zstd, as cache.layout configures it), one row
    per chunk as the store holds them: no layout of a zstd store reads faster per core."""
    import numcodecs

    from egmf.cache.layout import FEATURE_CODEC

    codec = numcodecs.Zstd(level=FEATURE_CODEC.level, checksum=FEATURE_CODEC.checksum)
    arrays = [np.load(npy / f"{split}_{m}.npy", mmap_mode="r")[:rows] for m in MOSEI]
    blobs = [codec.encode(np.ascontiguousarray(row)) for x in arrays for row in x]
    seconds = min(timed(lambda: [codec.decode(b) for b in blobs])[1] for _ in range(repeats))
    return sum(x.nbytes for x in arrays) / MB / seconds


def bench_storage(ws: Workspace) -> dict:
    """2: the cache against an MMSA-style pickle and plain .npy on synthetic MOSEI-sized features."""
    from egmf.cache.reader import Cache, available_memory

    s = ws.sizes
    n, train = sum(s.mosei_rows.values()), s.mosei_rows["train"]
    row_bytes = sum(t * d for t, d in MOSEI.values()) * 4
    need_disk = n * row_bytes * 2.5  # float32 source and pickle, float16 .npy, the cache
    free = shutil.disk_usage(ws.root).free
    if free < need_disk:
        raise OSError(f"{ws.root}: benchmark 2 needs about {need_disk / 2**30:.0f} GiB of scratch disk, "
                      f"{free / 2**30:.0f} GiB are free. Fix: pass --workdir on a larger disk, or --quick")
    if available_memory() < n * row_bytes * 1.2:
        raise MemoryError(f"benchmark 2 loads a {n * row_bytes / 2**30:.1f} GiB pickle, and only "
                          f"{available_memory() / 2**30:.1f} GiB of memory are available. Fix: close other jobs")
    folder = ws.root / "mosei"
    ws.say(f"2: writing {n} synthetic MOSEI-sized rows as pickle, .npy and cache "
           f"({n * row_bytes / 2**30:.1f} GiB as float32)")
    tick = time.perf_counter()
    paths = write_synthetic_mosei(folder, s.mosei_rows, ws.seed)
    build_seconds = time.perf_counter() - tick
    sizes = {fmt: folder_bytes(p) for fmt, p in paths.items()}
    store = Cache.open(paths["cache"])
    chunks = sum(-(-train // store.group[f"{m}/features"].chunks[0]) for m in MOSEI)  # the split's, all modalities

    def best(fmt: str, rows: int | None, cold: bool = False, repeats: int = s.repeats) -> dict:
        path = paths["cache" if fmt == "zarr" else fmt]
        runs = []
        for k in range(repeats):
            if cold:
                evict(path)
            elif k == 0:
                warm(path)
            runs.append(in_subprocess(read_probe, fmt, str(path), "train", rows))
        return min(runs, key=lambda r: r["seconds"])

    ws.say("2: reading the training split from each format")
    first = {fmt: best(fmt, s.first_batch) for fmt in ("pickle", "npy", "cache", "zarr")}
    scan = {"pickle": first["pickle"], **{fmt: best(fmt, None) for fmt in ("npy", "cache")},
            "zarr": best("zarr", None, repeats=1)}
    cold = {fmt: best(fmt, None, cold=True) for fmt in ("npy", "cache")}
    zstd_rate = zstd_decode_rate(paths["npy"])
    shutil.rmtree(folder)
    memory = {fmt: {"peak_mb": r["peak_rss"] / MB, "added_mb": (r["peak_rss"] - r["rss_before"]) / MB}
              for fmt, r in scan.items() if fmt != "zarr"}
    measured = {"rows": dict(s.mosei_rows), "build_seconds": build_seconds, "bytes_on_disk": sizes,
                "first_batch": first, "scan": scan, "scan_from_disk": cold,
                "scan_rows_per_second": {fmt: train / r["seconds"] for fmt, r in scan.items()}, "memory": memory,
                "zstd_decode_mb_per_second": zstd_rate, "chunks_in_split": chunks}
    checks = [check("open + first batch, speed-up over the pickle",
                    first["pickle"]["seconds"] / first["cache"]["seconds"], 10),
              check("full-scan throughput from the page cache, share of .npy's",
                    scan["npy"]["seconds"] / scan["cache"]["seconds"], 0.5),
              check("full-scan throughput from disk, share of .npy's",
                    cold["npy"]["seconds"] / cold["cache"]["seconds"], 0.5),
              check("size on disk, share of the pickle's", sizes["cache"] / sizes["pickle"], 0.5, "<="),
              check("peak memory reading one split, share of the pickle's",
                    memory["cache"]["added_mb"] / memory["pickle"]["added_mb"], None)]
    bound = []
    if checks[0]["passed"] is False:
        bound.append(f"The cache's first batch of {s.first_batch} rows takes {first['cache']['seconds']:.2f} s, "
                     f"yet zarr reads those rows straight from the store in {first['zarr']['seconds']:.3f} s: the "
                     "time goes to the reader (egmf.cache.reader), not to the format.")
    if checks[1]["passed"] is False or checks[2]["passed"] is False:
        zarr_seconds, split_mb = scan["zarr"]["seconds"], scan["npy"]["bytes"] / MB
        bound.append(f"Scanning {train} rows from the page cache takes the cache {scan['cache']['seconds']:.2f} s "
                     f"against .npy's {scan['npy']['seconds']:.2f} s (from disk: {cold['cache']['seconds']:.2f} s "
                     f"against {cold['npy']['seconds']:.2f} s). zarr decoding the arrays alone takes "
                     f"{zarr_seconds:.2f} s for {chunks} chunks ({chunks / zarr_seconds:.0f} per second), each "
                     "decoded and checksummed on its own inside its shard; the remaining "
                     f"{scan['cache']['seconds'] - zarr_seconds:.2f} s are the reader gathering rows into place. "
                     f"zstd itself decodes {zstd_rate:.0f} MB/s per core here, so the split's {split_mb:.0f} MB "
                     f"need {split_mb / zstd_rate:.2f} s of one core at best, where .npy only copies bytes.")
    setup = (f"synthetic MOSEI: {train} training rows of {n} (audio 500x74, visual 375x35, text 50x768, variable "
             "lengths, zero-padded, fixed seed); pickle protocol 5, float32; .npy float16 per split; first batches "
             "from the page cache; each read in a fresh process")
    return result("Storage: the cache vs an MMSA pickle and plain .npy", setup, checks, measured, bound)


# --- 3 and 4: extraction -----------------------------------------------------------------------------------------

def naive_extract(utts: list, encoders: dict, out: Path) -> dict:
    """The loop of per-clip toolkits: decode one clip, run each encoder on it alone, save one file per clip.
    Returns the seconds per clip of each stage."""
    from egmf.extract.run import encode_block, submit_decodes

    out.mkdir(parents=True, exist_ok=True)
    stages = dict.fromkeys(("decode", *encoders, "save"), 0.0)
    with ThreadPoolExecutor(1) as pool:
        for u in utts:
            tick = time.perf_counter()
            clip = submit_decodes(pool, [u], encoders)[0].result()
            stages["decode"] += time.perf_counter() - tick
            features = {}
            for m, enc in encoders.items():
                tick = time.perf_counter()
                features[m] = encode_block([u], [clip], {m: enc}, 1)[0][m][0]
                stages[m] += time.perf_counter() - tick
            tick = time.perf_counter()
            np.savez(out / f"{u.id}.npz", **{m: x for m, x in features.items() if x is not None})
            stages["save"] += time.perf_counter() - tick
    return {k: v / len(utts) for k, v in stages.items()}


def batched_encoding(utts: list, encoders: dict, batch_size: int) -> dict:
    """Seconds per clip of each encoder run in batches as egmf-extract runs them (clips decoded beforehand)."""
    from egmf.extract.run import ExtractConfig, encode_block, submit_decodes

    with ThreadPoolExecutor(ExtractConfig.decode_threads) as pool:
        clips = [d.result() if d is not None else None for d in submit_decodes(pool, utts, encoders)]
    out = {}
    for m, enc in encoders.items():
        tick = time.perf_counter()
        encode_block(utts, clips, {m: enc}, batch_size)
        out[m] = (time.perf_counter() - tick) / len(utts)
    return out


def warm_up(utts: list, encoders: dict, batch_size: int) -> None:
    """Run every encoder once on one clip and once on a batch: first calls pay one-off costs (kernel selection,
    lazy initialisation) that would otherwise land on whichever timed run comes first."""
    batched_encoding(utts[:1], encoders, 1)
    batched_encoding(utts[:batch_size], encoders, batch_size)


def bench_extraction_speed(ws: Workspace) -> dict:
    """3: egmf-extract against the naive per-clip loop: same encoders, same clips, same torch threads."""
    import torch

    from egmf.extract.run import extract, threads_per_worker

    s = ws.sizes
    big = max(s.memory_clips)
    _, corpus = ws.demo(big)
    utts = corpus.utterances[: s.extract_clips]
    cfg = ws.extract_config(big, ws.root / "speed", limit=s.extract_clips)
    encoders = ws.encoders(corpus)  # loaded before timing, for both: loading is not what is compared
    torch.set_num_threads(threads_per_worker(cfg))
    warm_up(utts[: cfg.batch_size], encoders, cfg.batch_size)
    runs = {"naive": [], "extract": []}  # (stages per clip or None, wall seconds, CPU seconds)
    for k in range(s.repeats):  # interleaved, so that both see the same background load
        ws.say(f"3: {len(utts)} clips, naive loop and egmf-extract (round {k + 1} of {s.repeats})")
        runs["naive"].append(timed(naive_extract, utts, encoders, ws.root / f"naive-{k}"))
        runs["extract"].append(timed(extract, replace(cfg, out=str(ws.root / f"extract-{k}"))))
        shutil.rmtree(ws.root / f"naive-{k}")
        shutil.rmtree(ws.root / f"extract-{k}")
    naive, batched = (min(runs[k], key=lambda r: r[1]) for k in ("naive", "extract"))
    profile = batched_encoding(utts, encoders, cfg.batch_size)
    clips = len(utts)
    measured = {"clips": clips, **{f"{k}_seconds": [r[1] for r in v] for k, v in runs.items()},
                **{f"{k}_cpu_seconds": [r[2] for r in v] for k, v in runs.items()},
                "naive_clips_per_second": clips / naive[1], "extract_clips_per_second": clips / batched[1],
                "cpu_time_ratio": naive[2] / batched[2], "naive_per_clip": naive[0],
                "batched_encoder_per_clip": profile, "torch_threads": torch.get_num_threads(),
                "batch_size": cfg.batch_size, "decode_threads": cfg.decode_threads}
    naive_ms = ", ".join(f"{k} {v * 1000:.0f}" for k, v in naive[0].items())
    gains = ", ".join(f"{m} {profile[m] * 1000:.0f} ({naive[0][m] / profile[m]:.1f}x less)" for m in encoders)
    worst = max(profile, key=profile.get)
    bound = [f"Milliseconds per clip, naive loop: {naive_ms}. Encoders in batches of {cfg.batch_size}: {gains}.",
             f"After batching, {worst} costs most ({profile[worst] / sum(profile.values()):.0%} of the batched "
             f"encoder time), and batching divides its cost by only {naive[0][worst] / profile[worst]:.1f}x. "
             f"CPU time (all threads) is {naive[2] / batched[2]:.1f}x less with egmf-extract."]
    setup = (f"{clips} demo clips, encoder preset {s.encoders}, encoders loaded beforehand; egmf-extract: one "
             f"process, {cfg.decode_threads} decode threads, batch {cfg.batch_size}; naive: one .npz per clip; "
             f"best of {s.repeats}")
    return result("Extraction: egmf-extract vs a naive per-clip loop", setup,
                  [check("clips per second, ratio", naive[1] / batched[1], 3)], measured, bound)


def extract_probe(cfg) -> dict:
    """Run in a fresh process: one egmf-extract run; its time and the process's peak resident memory."""
    from egmf.extract.run import extract

    summary = extract(cfg)
    return {"clips": summary.extracted, "seconds": summary.seconds, "peak_rss": peak_rss()}


def bench_extraction_memory(ws: Workspace) -> dict:
    """4: peak RSS of egmf-extract for few and for ten times more clips, each run in a fresh process."""
    s = ws.sizes
    small, large = s.memory_clips
    ws.demo(large)
    runs = {}
    for n in (small, large):
        ws.say(f"4: extracting {n} clips in a fresh process")
        runs[n] = in_subprocess(extract_probe, ws.extract_config(large, ws.root / f"memory-{n}", limit=n))
        shutil.rmtree(ws.root / f"memory-{n}")
    growth = runs[large]["peak_rss"] / runs[small]["peak_rss"] - 1
    measured = {str(n): {**r, "peak_mb": r["peak_rss"] / MB} for n, r in runs.items()}
    extra = runs[large]["peak_rss"] - runs[small]["peak_rss"]
    bound = [f"Peak RSS grows from {runs[small]['peak_rss'] / MB:.0f} MB to {runs[large]['peak_rss'] / MB:.0f} MB, "
             f"{extra / (large - small) / 1024:.0f} KB per additional clip."]
    setup = f"demo clips, encoder preset {s.encoders}, one process (egmf-extract's default), fresh per run"
    return result("Extraction memory: few vs many clips", setup,
                  [check(f"peak RSS growth from {small} to {large} clips", growth, 0.15, "<", "fraction")],
                  measured, bound)


BENCHMARKS = {1: bench_cache_vs_media, 2: bench_storage, 3: bench_extraction_speed, 4: bench_extraction_memory,
              5: bench_input_pipeline}


# --- the run, the JSON and the README table ----------------------------------------------------------------------

@dataclass
class BenchConfig:
    out: Path = Path("bench-results")  # bench.json and README-table.md go here
    only: tuple[int, ...] = tuple(BENCHMARKS)
    quick: bool = False  # tiny sizes (tests): the numbers only show that the code works
    readme: Path | None = Path("README.md")  # its bench section is regenerated (never by a quick run)
    workdir: Path | None = None  # scratch space (default: the system's temp dir); emptied at the end
    seed: int = 0
    progress: bool = True


def run_benchmarks(cfg: BenchConfig) -> dict:
    bad = [n for n in cfg.only if n not in BENCHMARKS]
    if bad:
        raise ValueError(f"no benchmark {bad}: they are numbered {min(BENCHMARKS)} to {max(BENCHMARKS)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"format": REPORT_FORMAT, "quick": cfg.quick, "machine": machine_info(), "benchmarks": {}}
    report["benchmarks"] = _earlier_results(out / "bench.json", report)
    with tempfile.TemporaryDirectory(prefix="egmf-bench-", dir=cfg.workdir) as scratch:
        ws = Workspace(Path(scratch), QUICK if cfg.quick else FULL, cfg.seed, cfg.progress)
        for n in cfg.only:
            tick, load = time.perf_counter(), os.getloadavg()[0]
            res = BENCHMARKS[n](ws)
            # The 1-minute load average before and after: other jobs on the machine skew the timings.
            res.update(seconds=time.perf_counter() - tick, load_average=[load, os.getloadavg()[0]],
                       date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
            report["benchmarks"][str(n)] = res
            # Written after every benchmark: a later failure keeps what was measured.
            (out / "bench.json").write_text(json.dumps(dict(sorted(report.items())), indent=2, default=str))
    table = markdown_table(report)
    (out / "README-table.md").write_text(table)
    if cfg.readme is not None and not cfg.quick and Path(cfg.readme).is_file():
        update_readme(Path(cfg.readme), table)
    return report


def _earlier_results(path: Path, report: dict) -> dict:
    """Benchmarks of an earlier run on this machine at the same size, kept when --only re-measures others."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = (earlier.get("format") == REPORT_FORMAT and earlier.get("quick") == report["quick"]
            and {k: earlier.get("machine", {}).get(k) for k in ("cpu", "cores", "ram_gib")}
            == {k: report["machine"][k] for k in ("cpu", "cores", "ram_gib")})
    return dict(earlier.get("benchmarks", {})) if same else {}


def format_value(c: dict) -> str:
    if c["unit"] == "fraction":
        return f"{c['value']:.1%}"
    return f"{c['value']:.2f}x" if c["value"] < 10 else f"{c['value']:.0f}x"


def markdown_table(report: dict) -> str:
    m = report["machine"]
    lines = ["| # | What is compared | Measured | Target | |", "|---|---|---|---|---|"]
    notes = []
    for n, res in sorted(report["benchmarks"].items(), key=lambda kv: int(kv[0])):
        for c in res["checks"]:
            target = ("reported" if c["target"] is None
                      else f"{c['compare']} {format_value({**c, 'value': c['target']})}")
            verdict = {True: "met", False: "**missed**", None: ""}[c["passed"]]
            lines.append(f"| {n} | {res['title']}: {c['name']} | {format_value(c)} | {target} | {verdict} |")
        notes += [f"- **{n}** ({res['setup']}). " + " ".join(res["bound"])] if res["bound"] else []
    dates = sorted({res["date"][:10] for res in report["benchmarks"].values()})
    loads = [x for res in report["benchmarks"].values() for x in res["load_average"]]
    busy = " (above the core count: other jobs were taking CPU time)" if max(loads) > m["cores"] else ""
    lines += ["", f"Measured by `egmf-bench` on {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, "
              f"{m['torch_threads']} torch threads, torch {m['versions']['torch']}, zarr {m['versions']['zarr']}; "
              f"{', '.join(dates)}; load average {min(loads):.1f} to {max(loads):.1f}{busy}. Ratios; the absolute "
              "times are in bench-results/bench.json."]
    if notes:
        lines += ["", "What bounds the missed targets:", "", *notes]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, table: str) -> None:
    """Replace what lies between the bench markers of readme with table; the rest stays as it is."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no '{README_START}' ... '{README_END}' section. Fix: add the two markers "
                         "where the benchmark table belongs")
    readme.write_text(text[: start + len(README_START)] + "\n" + table + text[end:], encoding="utf-8")


bench_app = typer.Typer(add_completion=False)


@bench_app.command(help="Measure what the feature cache buys on this machine: stage two from the cache vs from "
                        "raw media (1), the cache vs an MMSA pickle and .npy (2), extraction speed (3) and memory "
                        "(4) vs a naive loop, and the training input pipeline (5). Writes OUT/bench.json and "
                        "regenerates the benchmark table in the README. The full run takes about 20 minutes on "
                        "2 cores and needs ~25 GiB of scratch disk and ~10 GiB of RAM for benchmark 2.")
def main(
    out: Path = typer.Option(Path("bench-results"), help="Folder for bench.json and README-table.md"),
    only: str = typer.Option(None, help="Comma-separated benchmark numbers, e.g. 1,3 (default: all five)"),
    quick: bool = typer.Option(False, help="Tiny sizes, a minute or two: checks that the benchmarks run; the "
                                           "numbers mean nothing and the README is left alone"),
    readme: Path = typer.Option(Path("README.md"), help="README whose bench section is regenerated"),
    workdir: Path = typer.Option(None, help="Scratch folder (default: the system's temp dir)"),
):
    try:
        numbers = tuple(int(x) for x in only.split(",")) if only else tuple(BENCHMARKS)
    except ValueError:
        raise typer.BadParameter(f"--only {only!r}: give benchmark numbers, e.g. 1,3") from None
    try:
        report = run_benchmarks(BenchConfig(out, numbers, quick, readme, workdir))
    except (ValueError, OSError, MemoryError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(markdown_table(report))
    if not quick and not readme.is_file():
        typer.echo(f"note: {readme} not found; the table is in {out / 'README-table.md'}")
