"""`egmf-train`, `egmf-eval`, `egmf-predict`: thin typer commands over pipeline.train / pipeline.predict."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ..cache.schema import CacheError
from ..weights import quiet_loaders
from .metrics import format_table, scalar_metrics

quiet_loaders()

train_app = typer.Typer(add_completion=False)
eval_app = typer.Typer(add_completion=False)
predict_app = typer.Typer(add_completion=False)


def _fail(e: Exception):
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1) from None


def _seeds(seed: int, seeds: str | None) -> list[int]:
    return [int(s) for s in seeds.split(",")] if seeds else [seed]


@train_app.command(help="Train the expert fusion, the gates, the projection and the LoRA weights from feature "
                        "caches (several --cache = one unified model over their tasks). Resumes from OUT's "
                        "checkpoint when OUT holds an interrupted run. Also runs under torchrun (DDP).")
def train(
    cache: list[str] = typer.Option(..., help="Feature cache path or URL (repeatable)"),
    out: str = typer.Option(None, help="Run folder (default: runs/<first cache's name>)"),
    preset: str = typer.Option("offline", help="Model preset: offline (SmolLM2-135M GGUF, packaged), hub "
                                               "(Qwen2.5-0.5B-Instruct), tiny (random, for tests)"),
    epochs: int = typer.Option(10),
    max_steps: int = typer.Option(None, help="Stop after this many optimiser steps (default: no limit)"),
    modalities: str = typer.Option(None, help="Comma-separated subset, e.g. text or audio,visual"),
    lr: float = typer.Option(1e-3, help="Learning rate of the fusion and the LoRA weights"),
    lora_r: int = typer.Option(None, help="LoRA rank (default: the preset's)"),
    history_tokens: int = typer.Option(None, help="Dialogue corpora: token budget for the earlier turns' "
                                                  "transcripts in the prompt, 0 = none (default: 48)"),
    batch_size: int = typer.Option(8),
    patience: int = typer.Option(3, help="Early stopping: epochs without a better dev score"),
    checkpoint_every: int = typer.Option(50, help="Steps between checkpoints a killed run resumes from; 0 = only "
                                                  "the one after each epoch"),
    seed: int = typer.Option(0),
    seeds: str = typer.Option(None, help="Several seeds, e.g. 1,2,3: one run each in OUT/seed-N, then mean ± std"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    precision: str = typer.Option("auto", help="auto (bf16 on CUDA and bf16-capable CPUs), fp32 or bf16"),
):
    from .train import ConfigError, TrainConfig, train_seeds

    out = out or f"runs/{Path(cache[0].rstrip('/')).name}"
    try:
        cfg = TrainConfig(caches=cache, out=out, preset=preset, epochs=epochs, max_steps=max_steps,
                          modalities=modalities.split(",") if modalities else None, lr=lr, lora_r=lora_r,
                          batch_size=batch_size, patience=patience, checkpoint_every=checkpoint_every, seed=seed,
                          device=device, precision=precision,
                          overrides={} if history_tokens is None else {"max_history_tokens": history_tokens})
        result = train_seeds(cfg, _seeds(seed, seeds))
    except (ConfigError, CacheError, FileNotFoundError, OSError, FloatingPointError) as e:
        _fail(e)
    typer.echo(json.dumps(result, indent=2))


@eval_app.command(help="Evaluate a run's best model on a split of a cache: the field's metrics (MMSA conventions, "
                       "both Acc2 variants) and the parse-failure rate, into RUN/metrics-<split>.json and a table.")
def evaluate(
    run: str = typer.Option(..., help="Run folder written by egmf-train"),
    cache: str = typer.Option(..., help="Feature cache path or URL (same encoders as the run's)"),
    split: str = typer.Option("test"),
    device: str = typer.Option("auto"),
):
    from .train import evaluate_run

    try:
        result = evaluate_run(run, cache, split, device=device)
    except (CacheError, FileNotFoundError, OSError) as e:
        _fail(e)
    metrics = scalar_metrics(result["metrics"])
    typer.echo(f"{result['task']} on {split} ({result['cache']})")
    typer.echo(format_table(metrics))
    typer.echo(f"metrics: {Path(run) / f'metrics-{split}.json'}; plots: {Path(run) / 'plots'}")


@predict_app.command(help="Extract one clip with the run's encoders and print the generated answer and the "
                          "expert-gate weights.")
def predict(
    clip: Path = typer.Argument(..., help="Video clip (mp4)"),
    run: str = typer.Option(..., help="Run folder written by egmf-train"),
    text: str = typer.Option("", help="Transcript of the clip (empty: the text modality is missing)"),
    language: str = typer.Option("en", help="Prompt language: en or zh"),
    task: int = typer.Option(0, help="Task index for unified models (see RUN/config.json)"),
    device: str = typer.Option("auto"),
):
    from .predict import predict_clip

    try:
        answer = predict_clip(run, clip, text, language, task, device)
    except (CacheError, FileNotFoundError, OSError, ValueError) as e:
        _fail(e)
    gates = ", ".join(f"{k} {v:.2f}" for k, v in answer["expert_weights"].items())
    typer.echo(f"{answer['task']}: {answer['answer']}   (expert gates: {gates})")
    for m, reason in answer["missing"].items():
        typer.echo(f"note: {m} missing ({reason})")
