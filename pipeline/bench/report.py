"""The run: the chosen benchmarks in turn, their JSON (kept per machine across partial runs) and the README
table."""
from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import FULL, QUICK, Workspace, machine_info
from .extraction import bench_extraction_memory, bench_extraction_speed
from .steptime import bench_step_time
from .storage import bench_storage
from .training import bench_cache_vs_media, bench_input_pipeline

REPORT_FORMAT = 1
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
BENCHMARKS = {1: bench_cache_vs_media, 2: bench_storage, 3: bench_extraction_speed, 4: bench_extraction_memory,
              5: bench_input_pipeline, 6: bench_step_time}


@dataclass
class BenchConfig:
    out: Path = Path("bench-results")  # bench.json and README-table.md go here
    only: tuple[int, ...] = tuple(BENCHMARKS)
    quick: bool = False  # tiny sizes (tests): the numbers only show that the code works
    readme: Path | None = Path("README.md")  # its bench section is regenerated (never by a quick run)
    workdir: Path | None = None  # scratch space (default: the system's temp dir); emptied at the end
    seed: int = 0
    progress: bool = True
    step_cache: str | None = None  # benchmark 6 reads this cache (default: the demo cache)


def run_benchmarks(cfg: BenchConfig) -> dict:
    bad = [n for n in cfg.only if n not in BENCHMARKS]
    if bad:
        raise ValueError(f"no benchmark {bad}: they are numbered {min(BENCHMARKS)} to {max(BENCHMARKS)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"format": REPORT_FORMAT, "quick": cfg.quick, "machine": machine_info(), "benchmarks": {}}
    report["benchmarks"] = _earlier_results(out / "bench.json", report)
    with tempfile.TemporaryDirectory(prefix="egmf-bench-", dir=cfg.workdir) as scratch:
        ws = Workspace(Path(scratch), QUICK if cfg.quick else FULL, cfg.seed, cfg.progress, cfg.step_cache)
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
    if c["unit"] != "x":
        return f"{c['value']:.3g} {c['unit']}"
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
