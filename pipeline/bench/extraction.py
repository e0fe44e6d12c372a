"""Benchmarks 3 and 4: egmf-extract against a naive per-clip loop (same encoders, same clips), and its peak memory
for few and for ten times more clips."""
from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from .common import MB, Workspace, check, in_subprocess, peak_rss, result, timed


def naive_extract(utts: list, encoders: dict, out: Path) -> dict:
    """The loop of per-clip toolkits: decode one clip, run each encoder on it alone, save one file per clip.
    Returns the seconds per clip of each stage."""
    from ...extract.api import encode_block, submit_decodes

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
    from ...extract.api import ExtractConfig, encode_block, submit_decodes

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

    from ...extract.api import extract, threads_per_worker

    s = ws.sizes
    big = max(s.memory_clips)
    _, corpus = ws.demo(big)
    utts = corpus.utterances[: s.extract_clips]
    cfg = ws.extract_config(big, ws.root / "speed", limit=s.extract_clips)
    encoders = ws.encoders(corpus)  # loaded before timing, for both: loading is not what is compared
    torch.set_num_threads(threads_per_worker(cfg))
    warm_up(utts[: cfg.batch_size], encoders, cfg.batch_size)
    # (stages per clip or a Summary, wall seconds, CPU seconds of this process)
    runs = {"naive": [], "extract": [], "extract-2-workers": []}
    two = replace(cfg, workers=2, threads=None)  # a dask LocalCluster of 2 processes, one torch thread each
    for k in range(s.repeats):  # interleaved, so that all see the same background load
        ws.say(f"3: {len(utts)} clips, naive loop, egmf-extract, egmf-extract --workers 2 (round {k + 1} of "
               f"{s.repeats})")
        runs["naive"].append(timed(naive_extract, utts, encoders, ws.root / f"naive-{k}"))
        runs["extract"].append(timed(extract, replace(cfg, out=str(ws.root / f"extract-{k}"))))
        runs["extract-2-workers"].append(timed(extract, replace(two, out=str(ws.root / f"workers-{k}"))))
        torch.set_num_threads(threads_per_worker(cfg))  # extract sets this process's threads per its workers
        for folder in (f"naive-{k}", f"extract-{k}", f"workers-{k}"):
            shutil.rmtree(ws.root / folder)
    naive, batched, workers = (min(runs[k], key=lambda r: r[1]) for k in ("naive", "extract", "extract-2-workers"))
    profile = batched_encoding(utts, encoders, cfg.batch_size)
    clips = len(utts)
    measured = {"clips": clips, **{f"{k}_seconds": [r[1] for r in v] for k, v in runs.items()},
                **{f"{k}_cpu_seconds": [r[2] for r in v] for k, v in runs.items()},
                "naive_clips_per_second": clips / naive[1], "extract_clips_per_second": clips / batched[1],
                "two_workers_clips_per_second": clips / workers[1],
                "encoder_clips_per_second": {m: 1 / t for m, t in profile.items()},
                "families": {m: enc.spec.family for m, enc in encoders.items()},
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
    checks = [check("clips per second, ratio", naive[1] / batched[1], 3),
              check("dask scaling: --workers 2 (1 thread each) vs 1 worker (2 threads), clips per second",
                    batched[1] / workers[1], None),
              *(check(f"clips per second of the {m} encoder ({enc.spec.family}, batched, decoded clips), "
                      f"{torch.get_num_threads()} threads", 1 / profile[m], None, unit="clips/s")
                for m, enc in encoders.items())]
    return result("Extraction: egmf-extract vs a naive per-clip loop", setup, checks, measured, bound)


def extract_probe(cfg) -> dict:
    """Run in a fresh process: one egmf-extract run; its time and the process's peak resident memory."""
    from ...extract.api import extract

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
