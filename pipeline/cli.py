"""`egmf-train`, `egmf-eval`, `egmf-predict`: thin typer commands over pipeline.train / evaluate / predict.

Their defaults are the dataclasses' (TrainConfig, ModelConfig), never copies of them.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ..cache.schema import CacheError
from ..fuse import FusionConfig
from ..llm.lora import lora_targets as parse_lora_targets
from ..weights import quiet_loaders
from .evaluate import EVAL_BATCH_SIZE, evaluate_run
from .metrics import format_table, scalar_metrics
from .model import ModelConfig
from .presets import available
from .runfolder import RunError
from .train import TrainConfig, train_seeds

quiet_loaders()

train_app = typer.Typer(add_completion=False)
eval_app = typer.Typer(add_completion=False)
predict_app = typer.Typer(add_completion=False)
FAILURES = (CacheError, RunError, FileNotFoundError, OSError, ValueError, FloatingPointError)


def _fail(e: Exception):
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1) from None


# What each --ablate removes from the model, as model settings (recorded in the run's config like any other).
ABLATIONS = {
    # no pseudo tokens: the LLM reads the prompt alone (and the auxiliary head, which reads the tokens, goes too)
    "no-tokens": {"fusion": {"n_tokens": 0}, "head_weight": 0.0},
    "no-local": {"fusion": {"experts": ["correlation", "context"]}},
    "no-correlation": {"fusion": {"experts": ["local", "context"]}},
    "no-context": {"fusion": {"experts": ["local", "correlation"]}},
    "uniform-gates": {"fusion": {"uniform_gates": True}},  # every expert and present modality weighed the same
}


def _seeds(seed: int, seeds: str | None) -> list[int]:
    return [int(s) for s in seeds.split(",")] if seeds else [seed]


@train_app.command(help="Train the expert fusion, the gates, the projection and the LoRA weights from feature "
                        "caches (several --cache = one unified model over their tasks). Resumes from OUT's "
                        "checkpoint when OUT holds an interrupted run. Also runs under torchrun (DDP).")
def train(
    cache: list[str] = typer.Option(..., help="Feature cache path or URL (repeatable)"),
    out: str = typer.Option(None, help="Run folder (default: runs/<first cache's name>)"),
    preset: str = typer.Option(TrainConfig.preset, help=f"Model preset ({', '.join(available())}: "
                                                        f"pipeline/presets/*.json) or a preset .json file"),
    epochs: int = typer.Option(TrainConfig.epochs),
    max_steps: int = typer.Option(TrainConfig.max_steps, help="Stop after this many optimiser steps (default: no "
                                                               "limit)"),
    modalities: str = typer.Option(None, help="Comma-separated subset, e.g. text or audio,visual"),
    lr: float = typer.Option(TrainConfig.lr, help="Learning rate of the fusion and the LoRA weights"),
    fusion_lr: float = typer.Option(TrainConfig.fusion_lr, help="The fusion's own learning rate (default: --lr)"),
    head_weight: float = typer.Option(None, help="Weight of the auxiliary head's loss on the pseudo tokens, 0 = no "
                                                 f"head (default: the preset's, {ModelConfig.head_weight})"),
    lora_r: int = typer.Option(None, help="LoRA rank (default: the preset's); the scale is alpha / r"),
    lora_alpha: int = typer.Option(None, help="LoRA alpha (default: the preset's, whatever --lora-r is)"),
    lora_dropout: float = typer.Option(None, help=f"Dropout on the LoRA inputs (default: the preset's, "
                                                  f"{ModelConfig.lora_dropout}); 0 makes a CPU step ~1.3x faster"),
    lora_targets: str = typer.Option(None, help="Modules the LoRA adapts: comma-separated names and the groups "
                                     "attention (q/k/v/o_proj) and mlp (gate/up/down_proj) (default: the preset's, "
                                     "attention)"),
    context_turns: int = typer.Option(None, help=f"Dialogue corpora: preceding turns the context expert reads, "
                                                 f"0 = none (default: {ModelConfig.context_turns})"),
    speaker_pattern: str = typer.Option(None, help="A regular expression whose first group names the speaker in "
                                        "each clip id (RAVDESS: '-(\\d+)$'): features are standardised per speaker "
                                        "over a split's clips; recorded in model.json, egmf-eval does the same"),
    speaker_names: bool = typer.Option(None, "--speaker-names/--no-speaker-names", help="Name each transcript's "
                                       "speaker in the prompt, from the cache's speaker column (MELD's Speaker) "
                                       f"(default: {ModelConfig.speaker_names}); recorded in model.json"),
    history_tokens: int = typer.Option(None, help=f"Dialogue corpora: token budget for the earlier turns' "
                                                  f"transcripts in the prompt, 0 = none (default: "
                                                  f"{ModelConfig.max_history_tokens})"),
    gate_z_weight: float = typer.Option(None, help="Weight of the expert gate's router z-loss, a pull on the gate's "
                                        "logits against saturating onto one expert, 0 = none (default: the "
                                        f"preset's, {FusionConfig.z_weight})"),
    ablate: str = typer.Option(None, help=f"Train without one part of the model: {', '.join(ABLATIONS)}"),
    batch_size: int = typer.Option(TrainConfig.batch_size),
    bucket_by_length: bool = typer.Option(TrainConfig.bucket_by_length, help="Batch rows of like prompt length "
                                          "together: less padding, faster steps (MELD text-only: 28% of the LLM's "
                                          "tokens were padding, 1% bucketed)"),
    fusion_warmup: int = typer.Option(TrainConfig.fusion_warmup, help="Epochs of the fusion and the auxiliary head "
                                      "trained alone (no LLM) before the model's epochs, at --fusion-lr, or at --lr "
                                      "when that is 0 or unset: --fusion-lr 0 then keeps the warmed-up fusion frozen"),
    class_weighting: float = typer.Option(TrainConfig.class_weighting, help="Weight rare classes up in the training "
                                          "losses: (class share / mean share) ** -P, mean 1 over the training rows; "
                                          "0 = none, 1 = inverse frequency, 0.5 its square root"),
    ema_decay: float = typer.Option(TrainConfig.ema_decay, help="Score and save an exponential moving average of "
                                    "the trained weights with this decay per step (e.g. 0.99); 0 = the weights "
                                    "as trained"),
    patience: int = typer.Option(TrainConfig.patience, help="Early stopping: epochs without a better dev score"),
    checkpoint_every: int = typer.Option(TrainConfig.checkpoint_every, help="Steps between checkpoints a killed run "
                                         "resumes from; 0 = only the one after each epoch"),
    seed: int = typer.Option(TrainConfig.seed),
    seeds: str = typer.Option(None, help="Several seeds, e.g. 1,2,3: one run each in OUT/seed-N, then mean ± std"),
    device: str = typer.Option(TrainConfig.device, help="auto, cpu or cuda"),
    precision: str = typer.Option(TrainConfig.precision, help="auto (bf16 on CUDA and bf16-capable CPUs), fp32 or "
                                                              "bf16"),
):
    out = out or f"runs/{Path(cache[0].rstrip('/')).name}"
    if ablate is not None and ablate not in ABLATIONS:
        _fail(ValueError(f"--ablate {ablate}: unknown. Fix: choose one of {', '.join(ABLATIONS)}"))
    try:
        model_options = {"lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
                         "lora_targets": None if lora_targets is None else parse_lora_targets(lora_targets),
                         "context_turns": context_turns, "max_history_tokens": history_tokens,
                         "head_weight": head_weight, "speaker_pattern": speaker_pattern,
                         "speaker_names": speaker_names, **ABLATIONS.get(ablate, {})}
        if gate_z_weight is not None:
            model_options["fusion"] = {**model_options.get("fusion", {}), "z_weight": gate_z_weight}
        cfg = TrainConfig(caches=cache, out=out, preset=preset, epochs=epochs, max_steps=max_steps,
                          modalities=modalities.split(",") if modalities else None, lr=lr, batch_size=batch_size,
                          patience=patience, checkpoint_every=checkpoint_every, seed=seed, device=device,
                          precision=precision, fusion_lr=fusion_lr, bucket_by_length=bucket_by_length,
                          class_weighting=class_weighting, fusion_warmup=fusion_warmup, ema_decay=ema_decay,
                          overrides={k: v for k, v in model_options.items() if v is not None})
        result = train_seeds(cfg, _seeds(seed, seeds))
    except FAILURES as e:
        _fail(e)
    typer.echo(json.dumps(result, indent=2))


@eval_app.command(help="Evaluate a run's best model on a split of a cache: the field's metrics (MMSA conventions, "
                       "both Acc2 variants) and the parse-failure rate, into RUN/metrics-<split>.json and a table.")
def evaluate(
    run: str = typer.Option(..., help="Run folder written by egmf-train"),
    cache: str = typer.Option(..., help="Feature cache path or URL (same encoders as the run's)"),
    split: str = typer.Option("test"),
    batch_size: int = typer.Option(EVAL_BATCH_SIZE),
    device: str = typer.Option(TrainConfig.device),
):
    try:
        result = evaluate_run(run, cache, split, batch_size, device)
    except FAILURES as e:
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
    speaker: str = typer.Option("", help="Who speaks, for a model trained with --speaker-names"),
    task: int = typer.Option(0, help="Task index for unified models (see RUN/config.json)"),
    device: str = typer.Option(TrainConfig.device),
):
    from .predict import predict_clip  # here: only egmf-predict loads stage one (the encoders)

    try:
        answer = predict_clip(run, clip, text, language, task, device, speaker)
    except FAILURES as e:
        _fail(e)
    gates = ", ".join(f"{k} {v:.2f}" for k, v in answer["expert_weights"].items())
    shares = ", ".join(f"{k} {v:.2f}" for k, v in answer["modality_weights"].items())
    typer.echo(f"{answer['task']}: {answer['answer']}   (expert gates: {gates}; modality weights: {shares})")
    for m, reason in answer["missing"].items():
        typer.echo(f"note: {m} missing ({reason})")


probe_app = typer.Typer(add_completion=False)


@probe_app.command(help="The linear-probe baseline of a cache: logistic regression (classes) or ridge regression "
                        "(scores) on each utterance's pooled features (mean + std over its steps), fitted on train "
                        "and scored on dev (and test with --test) with egmf-eval's metrics, per modality and all "
                        "together. What a trained model should beat.")
def probe(
    store: str = typer.Argument(..., help="Feature cache path or URL"),
    modalities: str = typer.Option(None, help="Comma-separated subset (default: every modality of the cache)"),
    test: bool = typer.Option(False, "--test", help="Also score the test split"),
    out: Path = typer.Option(None, help="Write the metrics JSON here (default: probe-<cache name>.json, "
                                        "fusion-probe-<cache name>.json with --fusion)"),
    fusion: bool = typer.Option(False, "--fusion", help="Instead: the preset's fusion network + a linear head on "
                                "its pseudo tokens, no LLM, trained like egmf-train (best dev epoch)"),
    preset: str = typer.Option(TrainConfig.preset, help="--fusion: the model preset whose fusion network to train"),
    epochs: int = typer.Option(TrainConfig.epochs, help="--fusion: as egmf-train's"),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="--fusion: as egmf-train's"),
    lr: float = typer.Option(TrainConfig.lr, help="--fusion: as egmf-train's"),
    seed: int = typer.Option(TrainConfig.seed, help="--fusion: as egmf-train's"),
    ema_decay: float = typer.Option(TrainConfig.ema_decay, help="--fusion: as egmf-train's"),
    speaker_pattern: str = typer.Option(None, help="Standardise each speaker's features first, as egmf-train's "
                                                   "--speaker-pattern"),
):
    from .probe import fusion_probe, probe_cache, probe_table

    try:
        splits = ("dev", "test") if test else ("dev",)
        chosen = modalities.split(",") if modalities else None
        result = (fusion_probe(store, chosen, splits, preset, epochs, batch_size, lr, seed,
                               speaker_pattern=speaker_pattern, ema_decay=ema_decay) if fusion
                  else probe_cache(store, chosen, splits, speaker_pattern))
    except (CacheError, FileNotFoundError, OSError, ValueError) as e:
        _fail(e)
    out = out or Path(f"{'fusion-' if fusion else ''}probe-{Path(store.rstrip('/')).name}.json")
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    typer.echo(f"{result['task']} ({result['cache']}): {result['model']}, {result['train_rows']} train rows")
    typer.echo(probe_table(result))
    typer.echo(f"metrics: {out}")
