"""Benchmarks 1 and 5: a training epoch from the cache against the same epoch from raw media, and the share of
step time spent waiting for data."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .common import Workspace, check, result
from .extraction import warm_up


def fresh_model(cache, task, preset: str, seed: int, **overrides):
    from ..model import EGMF
    from ..presets import model_config
    from ..train import seed_everything

    seed_everything(seed)
    return EGMF(model_config(preset, {m: e.dim for m, e in cache.encoders.items()}, [task], **overrides))


def train_epochs(runs: dict, bf16: bool = False) -> dict:
    """Optimiser steps as the Trainer makes them over each run's batches (bf16: under its autocast), one step of
    each run in turn, so that all runs see the same background load (the machine may be shared).
    runs: name -> (model, batches). Returns per run the seconds of its own steps, of them the seconds waiting for
    a batch, in the forward pass, the backward pass and the optimiser, and the steps."""
    import torch

    from ..precision import autocast
    from ..train import TrainConfig

    live, out = {}, {}
    for name, (model, batches) in runs.items():
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=TrainConfig.lr, weight_decay=TrainConfig.weight_decay)
        model.train()
        live[name] = (model, params, opt, iter(batches))
        out[name] = dict.fromkeys(("seconds", "data_seconds", "forward_seconds", "backward_seconds",
                                   "optimiser_seconds"), 0.0) | {"steps": 0}
    while live:
        for name, (model, params, opt, batches) in list(live.items()):
            tick = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                del live[name]
                continue
            times = [tick, time.perf_counter()]
            with autocast(torch.device("cpu"), bf16):
                loss = model(batch).loss
            times.append(time.perf_counter())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            times.append(time.perf_counter())
            torch.nn.utils.clip_grad_norm_(params, TrainConfig.grad_clip)
            opt.step()
            times.append(time.perf_counter())
            for key, a, b in zip(("data_seconds", "forward_seconds", "backward_seconds", "optimiser_seconds"),
                                 times, times[1:]):
                out[name][key] += b - a
            out[name]["seconds"] += times[-1] - tick
            out[name]["steps"] += 1
    return out


def load_train_split(url: str, context_turns: int):
    """(cache, task, split data) of the training rows; the time it takes is part of a cache epoch."""
    from ...cache.reader import Cache
    from ..data import load_split, task_of

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
    from ...extract.api import ExtractConfig, encode_block, submit_decodes
    from ..data import SplitData, collate

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
            yield collate(data, np.arange(n))


def epochs_cache_vs_media(ws: Workspace, url: str, corpus, encoders: dict) -> dict:
    """A training epoch over the cache at url (opening it and loading the split included) against the same epoch
    decoding and encoding every clip of corpus with encoders, step by step in turn. Returns what was measured,
    with the speed-up, the model's ms per step and the media input's ms per batch."""
    from ...cache.schema import features_fingerprint
    from ..data import BatchStream
    from ..model import ModelConfig

    s, context = ws.sizes, ModelConfig.context_turns
    tick = time.perf_counter()
    cache, task, data = load_train_split(url, context)
    stream = BatchStream([data], s.batch_size, shuffle=False)
    load_seconds = time.perf_counter() - tick
    if features_fingerprint({m: e.spec for m, e in encoders.items()}) != cache.features_fingerprint:
        raise RuntimeError(f"{url}: the cache was not made by the encoders this run loaded")
    by_id = {u.id: u for u in corpus.utterances}
    utts = [by_id[i] for i in cache.meta["id"][data.rows]]
    warm_up(utts[: s.batch_size], encoders, s.batch_size)
    train_epochs({"warm-up": (fresh_model(cache, task, s.model, ws.seed), [next(iter(stream))])})

    stages: dict[str, float] = {}
    epochs = train_epochs({"cache": (fresh_model(cache, task, s.model, ws.seed), stream),
                           "media": (fresh_model(cache, task, s.model, ws.seed),
                                     media_batches(utts, encoders, task, s.batch_size, context, stages))})
    from_cache, from_media = epochs["cache"], epochs["media"]
    cache_seconds = load_seconds + from_cache["seconds"]
    steps = from_cache["steps"]
    model_seconds = from_cache["seconds"] - from_cache["data_seconds"]  # optimiser steps alone
    return {"clips": len(utts), "steps": steps, "batch_size": s.batch_size,
            "cache_epoch_seconds": cache_seconds, "cache_load_seconds": load_seconds, "cache_epoch": from_cache,
            "media_epoch_seconds": from_media["seconds"], "media_epoch": from_media, "media_input_seconds": stages,
            "speedup": from_media["seconds"] / cache_seconds, "step_ms": model_seconds / steps * 1000,
            "input_ms": from_media["data_seconds"] / steps * 1000, "model_share": model_seconds / cache_seconds}


def real_sized_epochs(ws: Workspace) -> dict:
    """Benchmark 1 at the cost of real use: clips of a real corpus's size (realsize.py), extracted with the
    hub-sized encoders (the hub preset's architectures and sizes, random weights), then the epoch comparison."""
    from ...extract.api import ExtractConfig, extract, get
    from .realsize import write_corpus

    s = ws.sizes
    root, url = ws.root / "real-sized", ws.root / "real-sized-cache"
    ws.say(f"1: writing {s.real_clips} clips of real size and extracting them ({s.real_encoders} encoders)")
    clips = write_corpus(root, s.real_clips, s.real_clip, ws.seed, ws.progress)
    corpus = get("folder").load(root)
    encoders = ws.encoders(corpus, s.real_encoders)  # loaded before extract: its time is the extraction's alone
    summary = extract(ExtractConfig("folder", root, str(url), preset=s.real_encoders, progress=False))
    ws.say("1: an epoch from that cache and the same epoch decoding and encoding every clip")
    measured = epochs_cache_vs_media(ws, str(url), corpus, encoders)
    return {**measured, "media": clips, "encoders": s.real_encoders, "extraction_seconds": summary.seconds,
            "extraction_clips_per_second": s.real_clips / summary.seconds,
            "break_even_epochs": summary.seconds / max(1e-9, measured["media_epoch_seconds"]
                                                       - measured["cache_epoch_seconds"])}


def bench_cache_vs_media(ws: Workspace) -> dict:
    """1: one training epoch reading the cache, against the same epoch from raw media: on the demo corpus with
    the run's encoders, and on clips of real size with the hub-sized encoders."""
    from ...extract.api import DemoConfig

    s, clip = ws.sizes, DemoConfig()
    url = ws.demo_cache()
    _, corpus = ws.demo(s.demo_clips)
    ws.say("1: an epoch from the cache and the same epoch decoding and encoding every clip, step by step in turn")
    demo = epochs_cache_vs_media(ws, url, corpus, ws.encoders(corpus))
    demo["demo_extraction_seconds"] = ws.extraction_seconds
    if ws.extraction_seconds is not None and demo["media_epoch_seconds"] > demo["cache_epoch_seconds"]:
        # Extracting once pays for itself after this many epochs.
        demo["break_even_epochs"] = ws.extraction_seconds / (demo["media_epoch_seconds"]
                                                             - demo["cache_epoch_seconds"])
    real = real_sized_epochs(ws)
    measured = {**demo, "real_sized": real}
    checks = [check(f"speed-up from the cache, {s.encoders} encoders on demo clips", demo["speedup"], None),
              check(f"speed-up from the cache, {s.real_encoders} encoders on real-sized clips", real["speedup"],
                    100)]
    bound = [epoch_bound(real, s.batch_size)]
    setup = (f"model preset {s.model}, batch {s.batch_size}; an epoch from the cache includes opening it and "
             f"loading the split. Demo row: {demo['clips']} training clips of the demo corpus "
             f"({clip.min_seconds:g}-{clip.max_seconds:g} s, {clip.size}x{clip.size} px), encoder preset "
             f"{s.encoders}, whose small CPU-sized encoders bound it at "
             f"1 + {demo['input_ms']:.0f}/{demo['step_ms']:.0f} = {1 + demo['input_ms'] / demo['step_ms']:.1f}x. "
             f"Real-sized row: {real['clips']} generated clips ({real['media']['size']}, "
             f"{s.real_clip.min_seconds:g}-{s.real_clip.max_seconds:g} s, mean {real['media']['mean_seconds']:.1f} s, "
             f"H.264 at {real['media']['megabits_per_second']:.1f} Mbit/s), encoder preset {s.real_encoders} (the "
             "hub preset's architectures and sizes with random weights)")
    return result("Stage two: an epoch from the cache vs from raw media", setup, checks, measured, bound)


def epoch_bound(m: dict, batch_size: int) -> str:
    """What limits an epoch comparison: the model step against decoding and encoding a batch."""
    per_batch = ", ".join(f"{k} {v / m['steps'] * 1000:.0f}" for k, v in m["media_input_seconds"].items())
    return (f"The model step itself takes {m['step_ms']:.0f} ms per batch of {batch_size} ({m['model_share']:.0%} "
            f"of the cache epoch), while decoding and encoding add {m['input_ms']:.0f} ms per batch ({per_batch}); "
            "so even if reading the cache cost nothing, the speed-up could not exceed "
            f"1 + {m['input_ms']:.0f}/{m['step_ms']:.0f} = {1 + m['input_ms'] / m['step_ms']:.1f}x.")


def bench_input_pipeline(ws: Workspace) -> dict:
    """5: the share of training step time spent waiting for data, and whether the Trainer's own number says so."""
    from ..data import BatchStream
    from ..model import ModelConfig
    from ..train import TrainConfig, Trainer

    s = ws.sizes
    url = ws.demo_cache()
    ws.say("5: an epoch timing every wait for a batch")
    cache, task, data = load_train_split(url, ModelConfig.context_turns)
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
