"""The extraction run: a corpus in, a feature cache out, in shard-aligned blocks that resume after a kill.

Each block (the rows of one shard) is decoded, encoded and written by one worker, its clips decoded by a
thread pool (PyAV releases the GIL while decoding). In a single process the next block is decoded while the
encoders run on this one, so the encoders do not wait on decoding; a dask worker decodes a block and then
encodes it (process_block), and the overlap comes from running several workers. Those run through
dask.distributed: a LocalCluster by default, or an existing cluster given by its scheduler address.
"""
from __future__ import annotations

import csv
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..cache.layout import is_url
from ..cache.schema import MODALITIES, CacheError
from ..cache.writer import CacheWriter
from . import datasets
from .encoders import build_encoder
from .lock import store_lock
from .media import decode_clip
from .presets import load_preset
from .records import Corpus, Utterance
from .released import ReleasedFeatures

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 3


@dataclass
class ExtractConfig:
    dataset: str
    root: Path
    out: str  # store path or fsspec URL
    preset: str = "offline"
    modalities: tuple[str, ...] = MODALITIES
    device: str = "auto"
    batch_size: int = 16  # clips per encoder call
    workers: int = 1  # dask worker processes; 1 = this process only
    scheduler: str | None = None  # address of a running dask scheduler (tcp://host:8786)
    limit: int | None = None  # first N utterances only (quick looks, tests)
    rows_per_shard: int = 64  # rows per shard = per block of work
    decode_threads: int = 2
    # torch threads per worker (default: cores / workers). Features are bit-identical for equal values; across
    # different values they agree to float16 rounding, since the kernels' summation order follows the threads.
    threads: int | None = None
    dataset_options: dict = field(default_factory=dict)  # passed to the adapter's load()
    progress: bool = True


@dataclass
class Summary:
    store: str
    rows: int
    already_done: int  # rows done by an earlier run and not recomputed
    extracted: int  # rows written by this run
    missing: dict  # modality -> rows where it is missing, over the whole store
    report: Path | None  # CSV of clip, modality, reason
    seconds: float

    @property
    def clips_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if any(self.missing.values()) else EXIT_OK

    def text(self) -> str:
        miss = ", ".join(f"{m} {n}" for m, n in self.missing.items() if n) or "none"
        out = (f"{self.rows} rows in {self.store}: {self.extracted} extracted now, {self.already_done} already "
               f"done; {self.seconds:.1f} s, {self.clips_per_second:.1f} clips/s; modality missing: {miss}")
        return out + (f"; skipped clips listed in {self.report}" if self.report else "")


def select_modalities(asked) -> tuple[str, ...]:
    bad = [m for m in asked if m not in MODALITIES]
    if bad:
        raise ValueError(f"unknown modalities {bad}; choose among {', '.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in asked)


def main_language(corpus: Corpus) -> str:
    return Counter(u.language for u in corpus.utterances).most_common(1)[0][0]


def threads_per_worker(cfg: ExtractConfig) -> int:
    return cfg.threads or max(1, (os.cpu_count() or 1) // max(1, cfg.workers))


def extract(cfg: ExtractConfig) -> Summary:
    t0 = time.perf_counter()
    torch.set_num_threads(threads_per_worker(cfg))
    root = Path(cfg.root).absolute() if cfg.scheduler else Path(cfg.root)  # remote workers open the clips too
    corpus = datasets.get(cfg.dataset).load(root, **cfg.dataset_options)
    utts = corpus.utterances[: cfg.limit] if cfg.limit else corpus.utterances
    modalities = select_modalities(cfg.modalities)
    preset_configs = load_preset(cfg.preset).encoders_for(main_language(corpus), modalities)
    released = {m for m in modalities if any(m in u.features for u in utts)}
    configs = {m: preset_configs[m] for m in modalities if m not in released}
    encoders = {m: cached_encoder(c, cfg.device) for m, c in configs.items()}
    for m in released:
        # Imported as the corpus ships them: the preset's encoder for this modality is not run.
        encoders[m] = ReleasedFeatures(corpus.spec.name, m, [u.features[m] for u in utts if m in u.features],
                                       preset_configs[m].max_steps)
        configs[m] = encoders[m]
    meta = {"id": [u.id for u in utts], "split": [u.split for u in utts], "text": [u.text for u in utts],
            "language": [u.language for u in utts], "dialogue": [u.dialogue for u in utts],
            "turn": [u.turn for u in utts], "speaker": [u.speaker for u in utts]}
    labels = {s.name: [u.labels.get(s.name) for u in utts] for s in corpus.spec.labels}
    with store_lock(cfg.out):
        writer = CacheWriter.create(cfg.out, corpus.spec, {m: e.spec for m, e in encoders.items()}, meta, labels,
                                    cfg.rows_per_shard)
        pending = writer.pending_blocks()
        already = int(writer.done().sum())
        jobs = [(a, utts[a:b]) for a, b in pending]
        bar = tqdm(total=sum(len(j[1]) for j in jobs), desc=f"extract {cfg.dataset}", unit="clip",
                   disable=not cfg.progress)
        if cfg.workers > 1 or cfg.scheduler:
            _run_distributed(cfg, configs, jobs, bar)
        else:
            _run_local(cfg, writer, encoders, jobs, bar)
        bar.close()
    return _summarise(cfg, utts, already, sum(len(j[1]) for j in jobs), time.perf_counter() - t0)


# --- one block ---------------------------------------------------------------------------------------------------

NOTHING_TO_ENCODE = "nothing to encode (an empty input, or a released feature file of zeros only)"
_ENCODERS: dict = {}  # per process: encoders are loaded once and reused by every block of this worker


def cached_encoder(config, device: str):
    if isinstance(config, ReleasedFeatures):
        return config
    key = (repr(config), device)
    if key not in _ENCODERS:
        _ENCODERS[key] = build_encoder(config, device)
    return _ENCODERS[key]


def _decode_params(encoders) -> dict:
    params = {}
    if "audio" in encoders:
        params["sample_rate"] = encoders["audio"].spec.params.get("sample_rate", 16000)
    if "visual" in encoders:
        p = encoders["visual"].spec.params
        params.update(fps=p["fps"], max_frames=p["max_frames"])
    return params


def _decode(u: Utterance, want_audio: bool, want_frames: bool, params: dict):
    if u.media is None:
        return None
    return decode_clip(u.media, fps=params.get("fps", 1.0), max_frames=params.get("max_frames", 1),
                       sample_rate=params.get("sample_rate", 16000), start=u.start, end=u.end,
                       want_audio=want_audio, want_frames=want_frames)


def submit_decodes(pool: ThreadPoolExecutor, utts: list[Utterance], encoders) -> list:
    encoders = {m: e for m, e in encoders.items() if not isinstance(e, ReleasedFeatures)}  # those read no media
    want_audio, want_frames = "audio" in encoders, "visual" in encoders
    if not (want_audio or want_frames):
        return [None] * len(utts)
    params = _decode_params(encoders)
    return [pool.submit(_decode, u, want_audio, want_frames, params) for u in utts]


def encode_block(utts: list[Utterance], decoded: list, encoders, batch_size: int):
    """Features and problems per modality for the rows of one block (None = modality missing)."""
    features, problems = {}, {}
    clips = [d.result() if hasattr(d, "result") else d for d in decoded]
    for m, enc in encoders.items():
        inputs, reasons = [], []
        for u, clip in zip(utts, clips):
            x, why = _input_of(u, clip, m)
            inputs.append(x)
            reasons.append(why)
        todo = [i for i, x in enumerate(inputs) if x is not None]
        out = [None] * len(utts)
        for k in range(0, len(todo), batch_size):
            idx = todo[k: k + batch_size]
            for i, f in zip(idx, enc.encode([inputs[i] for i in idx])):
                out[i] = f
                if f is None:  # an encoder found nothing in its input (the face family: no face in any frame)
                    reasons[i] = getattr(enc, "missing_reason", NOTHING_TO_ENCODE)
        features[m], problems[m] = out, reasons
    return features, problems


def _input_of(u: Utterance, clip, modality: str):
    if u.features:
        path = u.features.get(modality)
        return (path, "") if path is not None and Path(path).is_file() else (None, "feature file missing")
    if modality == "text":
        return (u.text, "") if u.text.strip() else (None, "empty transcript")
    if u.media is None:
        return None, "no media file in the corpus"
    if modality == "audio":
        return (clip.audio, "") if clip.audio is not None else (None, clip.problems.get("audio", "no audio"))
    return (clip.frames, "") if clip.frames is not None else (None, clip.problems.get("visual", "no frames"))


def _run_local(cfg: ExtractConfig, writer: CacheWriter, encoders, jobs, bar):
    with ThreadPoolExecutor(cfg.decode_threads) as pool:
        decoded = submit_decodes(pool, jobs[0][1], encoders) if jobs else []
        for k, (start, utts) in enumerate(jobs):
            # Decoding of the next block starts now, so it runs while this block is encoded.
            upcoming = submit_decodes(pool, jobs[k + 1][1], encoders) if k + 1 < len(jobs) else []
            features, problems = encode_block(utts, decoded, encoders, cfg.batch_size)
            writer.write_block(start, features, problems)
            bar.update(len(utts))
            decoded = upcoming


# --- many workers ------------------------------------------------------------------------------------------------

def process_block(url: str, start: int, utts: list[Utterance], configs: dict, device: str, batch_size: int,
                  decode_threads: int, threads: int) -> int:
    """One dask task: decode, encode and write one block. Runs in a worker process."""
    torch.set_num_threads(threads)
    encoders = {m: cached_encoder(c, device) for m, c in configs.items()}
    with ThreadPoolExecutor(decode_threads) as pool:
        features, problems = encode_block(utts, submit_decodes(pool, utts, encoders), encoders, batch_size)
    CacheWriter.open(url).write_block(start, features, problems)
    return len(utts)


def _run_distributed(cfg: ExtractConfig, configs, jobs, bar):
    from dask.distributed import Client, LocalCluster, as_completed

    if cfg.scheduler:
        client, cluster = Client(cfg.scheduler), None
    else:
        threads = str(threads_per_worker(cfg))
        cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        client = Client(cluster)
    # Workers resolve a relative path against their own working directory, on their own machine.
    url = cfg.out if is_url(cfg.out) else str(Path(cfg.out).absolute())
    try:
        futures = [client.submit(process_block, url, start, utts, configs, cfg.device, cfg.batch_size,
                                 cfg.decode_threads, threads_per_worker(cfg), pure=False) for start, utts in jobs]
        for f in as_completed(futures):
            bar.update(f.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --- the end -----------------------------------------------------------------------------------------------------

def _summarise(cfg, utts, already: int, extracted: int, seconds: float) -> Summary:
    from ..cache.reader import Cache

    cache = Cache.open(cfg.out)
    done = cache.done
    rows = []
    missing = {}
    for m in cache.modalities:
        probs = cache.problems(m)
        hit = np.flatnonzero(done & (probs != ""))
        missing[m] = len(hit)
        rows += [(cache.meta["id"][i], str(utts[i].media or ""), m, probs[i]) for i in hit]
    report = None
    if rows and not is_url(cfg.out):
        report = Path(f"{cfg.out.rstrip('/')}-skipped.csv")
        with open(report, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["clip", "media", "modality", "reason"])
            w.writerows(sorted(rows))
    if not done.all():
        raise CacheError(f"{cfg.out}: {int((~done).sum())} rows are still not done after the run")
    return Summary(cfg.out, cache.n_rows, already, extracted, missing, report, seconds)
