"""What every benchmark shares: the run sizes, a result and its checks, the machine, timing and memory probes, and
the scratch data of one run (the demo corpora and the demo cache, each made once)."""
from __future__ import annotations

import operator
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from multiprocessing import get_context
from pathlib import Path

from .realsize import ClipSize

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
    real_encoders: str = "hub-sized"  # benchmark 1's second row: the hub preset's architectures, random weights
    real_clips: int = 16  # ... on this many clips of real size (two batches: affordable on 2 cores)
    real_clip: ClipSize = ClipSize()  # 1280x720, 30 fps, 3-8 s, 48 kHz stereo
    step_model: str = "offline"  # benchmark 6: the LLM whose step is broken down (SmolLM2-135M)
    step_steps: int = 10  # ... timed steps per variant
    step_batch_size: int = 16  # ... the batch of the README's MELD runs


FULL = Sizes("offline", "tiny", 280, 100, (100, 1000), {"train": 16326, "valid": 1871, "test": 4659}, 2)
QUICK = Sizes("tiny", "tiny", 28, 14, (14, 28), {"train": 96, "valid": 16, "test": 16}, 1, real_encoders="tiny",
              real_clips=3, real_clip=ClipSize(320, 180, 10, 16000, 2, 1.0, 1.5), step_model="tiny", step_steps=2,
              step_batch_size=8)


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
            "ram_gib": round(proc_kib("/proc/meminfo", "MemTotal") / (1 << 20), 1),
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


def proc_kib(path: str, key: str) -> int:
    return next((int(line.split()[1]) for line in _lines(path) if line.startswith(key + ":")), 0)


def peak_rss() -> int:
    """Bytes: the high-water resident set of this process. VmHWM rather than ru_maxrss, which a spawned child
    starts at its parent's size (exec records the replaced address space's peak)."""
    import resource

    return proc_kib("/proc/self/status", "VmHWM") * 1024 or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, *args) -> tuple:
    """(fn(*args), wall seconds, CPU seconds of this process in all its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def in_subprocess(fn, *args):
    """fn(*args) in a fresh interpreter (spawned, not forked: nothing of this process's memory comes along)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


class Workspace:
    """Scratch data the benchmarks of one run share: demo corpora and the demo cache, each made once."""

    def __init__(self, root: Path, sizes: Sizes, seed: int = 0, progress: bool = True, step_cache: str | None = None):
        self.root, self.sizes, self.seed, self.progress = Path(root), sizes, seed, progress
        self.step_cache = step_cache  # benchmark 6's cache (default: the demo cache)
        self.extraction_seconds: float | None = None  # making the demo cache, when this run made it

    def say(self, message: str) -> None:
        if self.progress:
            print(f"[egmf-bench] {message}", file=sys.stderr, flush=True)

    def demo(self, n_clips: int):
        """(root, corpus) of the demo corpus with n_clips clips, generated on first use."""
        from ...extract.api import get

        root = self.root / f"demo-{n_clips}"
        return root, get("demo").load(root, n_clips=n_clips, seed=self.seed, progress=self.progress)

    def extract_config(self, n_clips: int, out: Path, limit: int | None = None):
        from ...extract.api import ExtractConfig

        return ExtractConfig("demo", self.root / f"demo-{n_clips}", str(out), preset=self.sizes.encoders,
                             limit=limit, progress=False,
                             dataset_options={"n_clips": n_clips, "seed": self.seed, "progress": False})

    def encoders(self, corpus, preset: str | None = None) -> dict:
        """The preset's encoders (default: the run's), loaded once per process and shared with egmf-extract's
        own runs."""
        from ...extract.api import main_language, preset_encoders

        return preset_encoders(preset or self.sizes.encoders, main_language(corpus))

    def demo_cache(self) -> str:
        from ...extract.api import extract

        url = self.root / "demo-cache"
        if not url.exists():
            self.demo(self.sizes.demo_clips)
            self.say(f"extracting the demo corpus ({self.sizes.demo_clips} clips, {self.sizes.encoders} encoders)")
            self.extraction_seconds = extract(self.extract_config(self.sizes.demo_clips, url)).seconds
        return str(url)
