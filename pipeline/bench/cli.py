"""`egmf-bench`: the typer app."""
from __future__ import annotations

from pathlib import Path

import typer

from .report import BENCHMARKS, BenchConfig, markdown_table, run_benchmarks


bench_app = typer.Typer(add_completion=False)


@bench_app.command(help="Measure what the feature cache buys on this machine: stage two from the cache vs from "
                        "raw media, on demo clips and on real-sized clips with the hub preset's architectures (1), "
                        "the cache vs an MMSA pickle and .npy (2), extraction speed (3) and memory (4) vs a naive "
                        "loop, the training input pipeline (5), and where a training step's time goes (6). Writes OUT/bench.json and regenerates the "
                        "benchmark table in the README. The full run takes about 30 minutes on 2 quiet cores and "
                        "needs ~25 GiB of scratch disk, ~10 GiB of RAM for benchmark 2, and ~2.4 GiB under "
                        "$EGMF_HOME for benchmark 1's random hub-sized encoders.")
def main(
    out: Path = typer.Option(Path("bench-results"), help="Folder for bench.json and README-table.md"),
    only: str = typer.Option(None, help="Comma-separated benchmark numbers, e.g. 1,3 (default: all six)"),
    quick: bool = typer.Option(False, help="Tiny sizes, a minute or two: checks that the benchmarks run; the "
                                           "numbers mean nothing and the README is left alone"),
    readme: Path = typer.Option(Path("README.md"), help="README whose bench section is regenerated"),
    workdir: Path = typer.Option(None, help="Scratch folder (default: the system's temp dir)"),
    step_cache: str = typer.Option(None, help="Benchmark 6 trains on this cache's train split (default: the demo "
                                              "cache); the README's row uses the MELD text cache"),
):
    try:
        numbers = tuple(int(x) for x in only.split(",")) if only else tuple(BENCHMARKS)
    except ValueError:
        raise typer.BadParameter(f"--only {only!r}: give benchmark numbers, e.g. 1,3") from None
    try:
        report = run_benchmarks(BenchConfig(out, numbers, quick, readme, workdir, step_cache=step_cache))
    except (ValueError, OSError, MemoryError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(markdown_table(report))
    if not quick and not readme.is_file():
        typer.echo(f"note: {readme} not found; the table is in {out / 'README-table.md'}")
