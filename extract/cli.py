"""`egmf-extract`: run the frozen encoders over a corpus once and write a feature cache."""
from __future__ import annotations

from pathlib import Path

import typer

from ..cache.schema import MODALITIES, CacheError
from . import datasets
from ..weights import quiet_loaders
from .records import DatasetError
from .run import EXIT_FAILED, ExtractConfig, extract

quiet_loaders()

app = typer.Typer(add_completion=False)


def _options(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise typer.BadParameter(f"{p!r}: expected KEY=VALUE, e.g. --opt language=zh")
        out[key.replace("-", "_")] = int(value) if value.lstrip("-").isdigit() else value
    return out


@app.command(help="Decode a corpus once, run the frozen encoders, and write a Zarr feature cache. Re-running the "
                  "same command continues an interrupted run. Exit status: 0 all extracted, 3 some clips had a "
                  "modality missing (listed in STORE-skipped.csv), 1 the run failed.")
def main(
    dataset: str = typer.Option(..., help=f"Corpus adapter: {', '.join(datasets.ADAPTERS)}"),
    root: Path = typer.Option(None, help="Corpus folder (default: data/<dataset>; the demo generates it there)"),
    out: str = typer.Option(None, help="Store path or fsspec URL (default: cache/<dataset>)"),
    preset: str = typer.Option("offline", help="Encoder preset: hub (real hub weights), offline (packaged and "
                                               "local weights), tiny (small random models, for tests)"),
    modalities: str = typer.Option(",".join(MODALITIES), help="Comma-separated subset of audio,visual,text; "
                                                             "text alone needs no media"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    batch_size: int = typer.Option(16, help="Clips per encoder call"),
    workers: int = typer.Option(1, help="Worker processes (a dask LocalCluster when > 1)"),
    threads: int = typer.Option(None, help="Torch threads per worker (default: cores / workers)"),
    scheduler: str = typer.Option(None, help="Use a running dask cluster, e.g. tcp://10.0.0.5:8786. Its workers "
                                             "write the store and read the clips themselves: --out and --root must "
                                             "be paths (or URLs) that every worker sees"),
    limit: int = typer.Option(None, help="Only the first N utterances"),
    rows_per_shard: int = typer.Option(64, help="Rows per shard: the unit of parallel work and of resume"),
    part: str = typer.Option(None, help="sims-v2: supervised, unsupervised or all"),
    opt: list[str] = typer.Option([], help="Adapter option KEY=VALUE (repeatable), e.g. csv=labels.csv, "
                                           "language=zh, n_clips=280, seed=0"),
):
    options = _options(opt)
    if part:
        options["part"] = part
    cfg = ExtractConfig(dataset=dataset, root=root or Path("data") / dataset, out=out or f"cache/{dataset}",
                        preset=preset, modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()),
                        device=device, batch_size=batch_size, workers=workers, threads=threads, scheduler=scheduler,
                        limit=limit, rows_per_shard=rows_per_shard, dataset_options=options)
    try:
        summary = extract(cfg)
    except (DatasetError, CacheError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(summary.text())
    raise typer.Exit(summary.exit_code)
