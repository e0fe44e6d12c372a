"""`egmf-cache`: inspect, verify and import feature caches."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from . import inspect
from .mmsa import RANGES, import_mmsa
from .reader import Cache
from .schema import CacheError
from .writer import CacheWriter

app = typer.Typer(help="Inspect, verify and import EGMF feature caches (Zarr v3 stores; local paths or fsspec "
                       "URLs such as http://host/cache/sims or s3://bucket/sims).", no_args_is_help=True)


def _open(store: str) -> Cache:
    try:
        return Cache.open(store)
    except CacheError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _human(n: int | None) -> str:
    if n is None:
        return "unknown (the filesystem cannot list)"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@app.command()
def info(store: str = typer.Argument(..., help="Store path or URL"),
         as_json: bool = typer.Option(False, "--json", help="Print the report as JSON")):
    """Dataset, rows per split, per-modality shapes and encoders, fingerprint, size, rows not done."""
    report = inspect.info(_open(store))
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    typer.echo(f"store        {report['store']}")
    typer.echo(f"dataset      {report['dataset']} (adapter v{report['adapter_version']}), task {report['task']}")
    typer.echo(f"rows         {report['rows']} ({report['rows_not_done']} not done); per split: "
               + ", ".join(f"{k} {v}" for k, v in report["rows_per_split"].items()))
    speakers = report["speakers"]
    typer.echo(f"speakers     {speakers['distinct']} named in {speakers['named_rows']} rows"
               if speakers["named_rows"] else "speakers     none named")
    for m, d in report["modalities"].items():
        typer.echo(f"{m:<12} {tuple(d['shape'])} float16  {d['family']}:{d['model']}  "
                   f"weights {d['weights'][:12]}  missing in {d['missing_rows']} rows")
    typer.echo(f"fingerprint  {report['fingerprint']}")
    typer.echo(f"size         {_human(report['size_bytes'])}")


@app.command()
def verify(store: str = typer.Argument(..., help="Store path or URL"),
           repair: bool = typer.Option(False, help="Mark failing blocks not done, so that the next egmf-extract "
                                                   "run with the same command rewrites them")):
    """Read every done row: decodable, finite, lengths within bounds. Exit 1 and list the failing rows otherwise."""
    cache = _open(store)
    report = inspect.verify(cache)
    if report.ok:
        typer.echo(f"ok: {report.checked_rows} rows verified in {cache.url}")
        return
    for f in report.failures:
        typer.echo(f"FAILED rows {f.rows[0]}..{f.rows[1] - 1} {f.modality}: {f.reason}", err=True)
    if repair:
        CacheWriter.open(store).invalidate(report.failed_blocks)
        typer.echo(f"marked {len(report.failed_blocks)} blocks not done; re-run egmf-extract to rewrite them",
                   err=True)
    raise typer.Exit(1)


@app.command("import-mmsa")
def import_mmsa_cmd(pkl: Path = typer.Argument(..., exists=True, dir_okay=False,
                                               help="MMSA aligned_50.pkl or unaligned_50.pkl"),
                    out: str = typer.Option(..., "--out", help="Store to write"),
                    dataset: str = typer.Option(..., help=f"The corpus the pickle holds: {', '.join(RANGES)} "
                                                          "(never guessed: MOSI and MOSEI share a label range, "
                                                          "as do SIMS v1 and v2)")):
    """Import MMSA-style pre-extracted features into a feature cache.

    The pickle is read as data only: anything in it but numpy arrays and plain containers is refused unrun.
    NaN, infinite values and values beyond float16 in the features are set to 0 (as MMSA's loaders do) and counted.
    """
    try:
        report = import_mmsa(pkl, out, dataset)
    except (ValueError, CacheError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"imported {report.rows} rows into {out} ({report.per_split})")
    for where, kinds in report.cleaned.items():
        typer.echo(f"set to 0 in {where}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items()))
    if not report.cleaned:
        typer.echo("no NaN, infinite or out-of-float16 values in the features")
