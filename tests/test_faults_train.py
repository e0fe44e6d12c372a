"""Faults in stage two: egmf-train killed mid-epoch or while saving, a loss or gradient that stops being finite,
model saves cut short, run folders and caches that do not fit. Each test fails on a trainer that loses steps,
resumes to another result, saves garbage or crashes where it should explain.

The kills are real SIGKILLs (tests/faultkit.py: one egmf-train per child process, --preset tiny, torch threads 1
so that runs are bit-identical). checkpoint_every is the default 50 steps, so the epochs here are 55 and 50 steps.
"""
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file
from typer.testing import CliRunner

import synthetic_cache as sc
from egmf.cache.header import ATTR
from egmf.pipeline.cli import train_app
from egmf.pipeline.model import EGMF
from egmf.pipeline.runfolder import RunError, RunFolder
from crafted_pickle import creating
from faultkit import call, returned, run_plan

runner = CliRunner()
TIMING = ("seconds", "data_wait_fraction")  # the only parts of metrics.json that may differ run to run


# name -> (cache, epochs, where each successive run is killed)
KILLS = {
    # 55 steps per epoch: a checkpoint at step 50, then at the epoch's end (55)
    "3 steps after a step checkpoint": ("c55", 2, [returned("torch.optim:AdamW.step", nth=53)]),
    "while writing the epoch-end checkpoint": (
        "c55", 2, [returned("torch:save", match="checkpoint.pt.tmp", nth=2, torn="half")]),
    # 50 steps per epoch: the step checkpoint would fall on the epoch's last step, before its evaluation
    "evaluating an epoch of exactly checkpoint_every steps": (
        "c50", 1, [call("egmf.pipeline.evaluate:predict_split")]),
    "twice: mid-epoch, then in the resumed epoch's evaluation": (
        "c55", 2, [returned("torch.optim:AdamW.step", nth=52), call("egmf.pipeline.evaluate:predict_split")]),
}


def train_args(cache, out, epochs) -> list[str]:
    return ["--cache", str(cache), "--out", str(out), "--preset", "tiny", "--epochs", str(epochs),
            "--batch-size", "1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("train-kills")
    caches = {"c55": work / "c55", "c50": work / "c50"}
    sc.write(caches["c55"], n=165, rows_per_shard=16)  # 55 train rows (every third row), batch 1
    sc.write(caches["c50"], n=150, rows_per_shard=16)

    def run(out, cache, epochs, **kw):
        return {"args": train_args(caches[cache], work / out, epochs), "store": str(work / out), **kw}

    scenarios = {"reference c50": [run("reference-c50", "c50", 1)]}
    for i, (name, (cache, epochs, kills)) in enumerate(KILLS.items()):
        runs = [run(f"s{i}", cache, epochs, kill=k) for k in kills] + [run(f"s{i}", cache, epochs)]
        runs[0]["keep"] = str(work / f"s{i}-killed")  # the run folder as the first kill left it
        scenarios[name] = runs
    report = run_plan({"app": "egmf.pipeline.cli:train_app", "reference": run("reference-c55", "c55", 2),
                       "scenarios": scenarios}, work)
    for result in (report["reference"], *report["scenarios"]["reference c50"]):
        assert result["status"] == 0, result["stderr"][-2000:]
    return work, report


def run_outcome(run) -> dict:
    """What a finished run leaves: metrics without timings, the last checkpoint's weights and state, the model."""
    metrics = json.loads((run / "metrics.json").read_text())
    for key in TIMING:
        metrics["summary"].pop(key)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)  # tensors and plain data only
    return {"metrics": metrics, "weights": checkpoint["model"], "state": checkpoint["state"],
            "fusion": load_file(run / "model" / "fusion.safetensors"),
            "adapter": load_file(run / "model" / "adapter" / "adapter_model.safetensors")}


def assert_same_outcome(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"] and a["state"] == b["state"]
    for part in ("weights", "fusion", "adapter"):
        assert a[part].keys() == b[part].keys()
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part} {name} differs"


@pytest.mark.slow
@pytest.mark.parametrize("name", KILLS)
def test_a_killed_training_resumes_to_the_uninterrupted_result(sweep, name):
    work, report = sweep
    cache, epochs, kills = KILLS[name]
    *killed, final = report["scenarios"][name]
    assert [r["status"] for r in killed] == ["killed"] * len(kills), "a kill point was never reached"
    assert final["status"] == 0, final["stderr"][-2000:]
    reference = work / ("reference-c55" if cache == "c55" else "reference-c50")
    index = list(KILLS).index(name)
    assert_same_outcome(run_outcome(reference), run_outcome(work / f"s{index}"))


@pytest.mark.slow
def test_a_kill_while_saving_a_checkpoint_leaves_the_previous_one_whole(sweep):
    work, _ = sweep
    killed = work / f"s{list(KILLS).index('while writing the epoch-end checkpoint')}-killed"
    previous = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert previous["state"]["step"] == 50 and previous["state"]["epoch"] == 0  # the step checkpoint, intact
    with pytest.raises(Exception):
        torch.load(killed / "checkpoint.pt.tmp", weights_only=True)  # the torn one never replaced it


# --- divergence ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "cache"
    sc.write(path, n=30, rows_per_shard=8)  # 10 train rows: 5 steps per epoch at batch 2
    return path


def small_run(cache, out, *extra) -> list[str]:
    return ["--cache", str(cache), "--out", str(out), "--preset", "tiny", "--epochs", "3", "--batch-size", "2",
            *extra]


@pytest.fixture(scope="module")
def trained(small_cache, tmp_path_factory):
    """A run of small_run without faults: 3 epochs, 15 steps."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert runner.invoke(train_app, small_run(small_cache, run)).exit_code == 0
    return run


def finite(tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors)


def nan_loss_at(step: int, monkeypatch) -> None:
    forward, calls = EGMF.forward, itertools.count(1)

    def diverging(self, batch):
        out = forward(self, batch)
        if self.training and next(calls) == step:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(EGMF, "forward", diverging)


def inf_gradient_at(step: int, monkeypatch) -> None:
    """An overflow in the backward pass only: the loss stays finite, one weight's gradient becomes inf."""
    forward, backward, calls, model = EGMF.forward, torch.Tensor.backward, itertools.count(1), []

    def remembering(self, batch):
        model[:] = [self]
        return forward(self, batch)

    def overflowing(self, *args, **kwargs):
        backward(self, *args, **kwargs)
        if next(calls) == step:
            next(p for p in model[0].parameters() if p.requires_grad).grad.fill_(float("inf"))

    monkeypatch.setattr(EGMF, "forward", remembering)
    monkeypatch.setattr(torch.Tensor, "backward", overflowing)


@pytest.mark.parametrize("diverge, step, message", [
    (nan_loss_at, 7, "loss became nan at step 6 (epoch 2)"),
    # the last step of epoch 2: a careless trainer evaluates, checkpoints and keeps the NaN weights that follow
    (inf_gradient_at, 10, "gradient norm became inf at step 9 (epoch 2)"),
])
def test_divergence_stops_the_run_with_the_last_good_state_kept(small_cache, trained, tmp_path, monkeypatch,
                                                                 diverge, step, message):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        diverge(step, patch)
        r = runner.invoke(train_app, small_run(small_cache, run))
    assert r.exit_code == 1 and message in r.stderr and "Fix: lower --lr" in r.stderr, r.output
    assert not (run / "metrics.json").exists()  # no summary of a run that did not finish
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["state"]["step"] == 5 and finite(checkpoint["model"].values())
    assert finite(RunFolder(run).load_model().parameters())
    # Nothing lost: the same command resumes from that checkpoint and ends where a run without the fault ends.
    assert runner.invoke(train_app, small_run(small_cache, run)).exit_code == 0
    assert_same_outcome(run_outcome(trained), run_outcome(run))


# --- saving the best model ----------------------------------------------------------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL in-process: no `except Exception` stops it, and save_model has no cleanup to run."""


def die():
    raise Killed


@pytest.fixture(scope="module")
def better_model(trained):
    """The trained run's best model with other fusion weights (a better epoch's), and the saved ones."""
    model = RunFolder(trained).load_model()
    saved = {k: v.clone() for k, v in model.fusion.state_dict().items()}
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.add_(1.0)
    return model, saved


def killed_writing_files(patch):
    save = EGMF.save

    def cut_short(self, directory):
        save(self, directory)
        path = directory / "fusion.safetensors"
        path.write_bytes(path.read_bytes()[:100])
        die()

    patch.setattr(EGMF, "save", cut_short)


def killed_between_the_renames(patch):
    replace = os.replace

    def new_not_yet_in_place(src, dst):
        if Path(src).name == "model.tmp":  # the old model was moved aside already
            die()
        replace(src, dst)

    patch.setattr(os, "replace", new_not_yet_in_place)


def killed_removing_the_old_model(patch):
    rmtree = shutil.rmtree

    def half_removed(path, *args, **kwargs):
        if Path(path).name == "model.old" and Path(path).exists():
            (path / "fusion.safetensors").unlink()
            die()
        rmtree(path, *args, **kwargs)

    patch.setattr(shutil, "rmtree", half_removed)


def fusion_weights(directory, upgrade=None) -> dict:
    return load_file(Path(directory) / "fusion.safetensors")


@pytest.mark.parametrize("kill, survivor", [(killed_writing_files, "old"), (killed_between_the_renames, "old"),
                                            (killed_removing_the_old_model, "new")])
def test_a_model_save_killed_anywhere_leaves_a_whole_model_and_the_next_save_works(trained, better_model, tmp_path,
                                                                                 monkeypatch, kill, survivor):
    shutil.copytree(trained, tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    model, saved = better_model
    new = model.fusion.state_dict()
    with monkeypatch.context() as patch:
        kill(patch)
        with pytest.raises(Killed):
            run.save_model(model)
    # Which model load_model picks, read without building the LLM around it.
    monkeypatch.setattr(EGMF, "load", staticmethod(fusion_weights))
    expected = saved if survivor == "old" else new
    loaded = run.load_model()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    run.save_model(model)  # the next save (a resumed run's) repairs what the kill left
    loaded = run.load_model()
    assert all(torch.equal(loaded[k], new[k]) for k in new)
    assert sorted(p.name for p in run.path.iterdir() if p.name.startswith("model")) == ["model"]


# --- run folders and caches that do not fit -----------------------------------------------------------------------

def with_checkpoint_format(run, value) -> None:
    blob = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**blob, "format": value}, run / "checkpoint.pt")


@pytest.mark.parametrize("change, extra, message", [
    (None, ["--lora-r", "4"], "does not fit this model (other shapes: "),
    (lambda run: with_checkpoint_format(run, 0), [], "checkpoint format 0, this egmf writes 2. Fix: train into a new"),
])
def test_a_run_folder_that_does_not_fit_is_refused_untouched(trained, small_cache, tmp_path, change, extra, message):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    if change:
        change(run)
    before = (run / "checkpoint.pt").read_bytes()
    r = runner.invoke(train_app, small_run(small_cache, run, "--epochs", "4", *extra))
    assert r.exit_code == 1 and message in r.stderr and "Fix:" in r.stderr, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # an explanation, not a traceback
    assert (run / "checkpoint.pt").read_bytes() == before


# --- run folders from others: read as data only --------------------------------------------------------------------

@pytest.mark.parametrize("which", [0, 1], ids=["os.system", "open"])
def test_a_checkpoint_that_would_run_code_is_refused_by_resume_and_runs_nothing(trained, small_cache, tmp_path,
                                                                                  which):
    run, marker = tmp_path / "run", tmp_path / "created-by-the-checkpoint"
    shutil.copytree(trained, run)
    blob = torch.load(run / "checkpoint.pt", weights_only=True)
    payload = creating(marker)[which]
    torch.save({**blob, "state": {**blob["state"], "history": payload}}, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    r = runner.invoke(train_app, small_run(small_cache, run, "--epochs", "4"))
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    called = payload.called
    assert f"{run / 'checkpoint.pt'}: refused to load" in r.stderr and called in r.stderr and "Fix:" in r.stderr
    assert not marker.exists() and (run / "checkpoint.pt").read_bytes() == before


def _format_1(blob: dict) -> dict:
    """The blob as egmf wrote it before checkpoints became weights-only: numpy's RNG state as get_state()'s tuple."""
    rng = blob["rng"]["numpy"]
    numpy_state = ("MT19937", rng["key"].numpy().astype(np.uint32), rng["pos"], rng["has_gauss"], rng["gauss"])
    return {**blob, "format": 1, "rng": {**blob["rng"], "numpy": numpy_state}}


def test_a_checkpoint_written_the_old_way_resumes_to_the_same_result(trained, small_cache, tmp_path):
    outcomes = []
    for name, rewrite in (("now", lambda blob: blob), ("old", _format_1)):
        run = tmp_path / name
        shutil.copytree(trained, run)
        torch.save(rewrite(torch.load(run / "checkpoint.pt", weights_only=True)), run / "checkpoint.pt")
        r = runner.invoke(train_app, small_run(small_cache, run, "--epochs", "4"))
        assert r.exit_code == 0, r.output
        outcomes.append(run_outcome(run))
    assert outcomes[1]["metrics"]["summary"]["steps"] == 20  # resumed after step 15, not started again
    assert_same_outcome(*outcomes)


def test_the_numpy_rng_state_round_trips_through_both_checkpoint_formats(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    run = RunFolder(tmp_path)
    np.random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in the state
    expected = np.random.standard_normal(4)
    np.random.seed(3)
    np.random.standard_normal()
    run.save_checkpoint(model, opt, sched, {"step": 1})
    blob = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for written in (blob, _format_1(blob)):
        torch.save(written, tmp_path / "checkpoint.pt")
        np.random.seed(0)
        assert run.resume(model, opt, sched) == {"step": 1}
        np.testing.assert_array_equal(np.random.standard_normal(4), expected)


def _damage(run, how):
    f = run / "checkpoint.pt"
    blob = torch.load(f, weights_only=True)
    if how == "torn":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "no model":
        torch.save({k: v for k, v in blob.items() if k != "model"}, f)
    elif how == "a list":
        torch.save([blob], f)
    elif how == "no optimiser groups":
        torch.save({**blob, "optimizer": {"state": {}}}, f)
    elif how == "a state without its step":
        torch.save({**blob, "state": {k: v for k, v in blob["state"].items() if k != "step"}}, f)
    elif how == "not a checkpoint":
        f.write_text("model weights\n")


@pytest.mark.parametrize("how, message", [
    ("torn", "not a readable checkpoint"), ("no model", "a damaged checkpoint (no model)"),
    ("a state without its step", "a damaged checkpoint (its training state lacks or mistypes step)"),
    ("a list", "a damaged checkpoint (it holds a list"), ("no optimiser groups", "a damaged checkpoint (its optimiser"),
    ("not a checkpoint", "not a readable checkpoint")])
def test_a_damaged_checkpoint_is_a_message_naming_it_not_a_traceback(trained, small_cache, tmp_path, how, message):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _damage(run, how)
    r = runner.invoke(train_app, small_run(small_cache, run, "--epochs", "4"))
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    assert f"{run / 'checkpoint.pt'}: {message}" in r.stderr and "Fix: train into a new --out" in r.stderr


def test_a_cache_of_another_schema_version_is_refused_by_egmf_train(small_cache, tmp_path):
    cache = tmp_path / "old"
    shutil.copytree(small_cache, cache)
    group = zarr.open_group(str(cache), mode="r+")
    group.attrs[ATTR] = {**group.attrs[ATTR], "schema_version": 2}
    r = runner.invoke(train_app, small_run(cache, tmp_path / "run"))
    assert r.exit_code == 1
    assert "cache schema version 2, this egmf reads version 1. Fix: re-extract it" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_with_weights_this_model_lacks_is_refused(tmp_path):
    # e.g. a single-modality run checkpointed when the correlation expert still had its never-trained norm
    before = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    now = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Identity(), torch.nn.Linear(3, 2))

    def optimiser(model):
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    run = RunFolder(tmp_path)
    run.save_checkpoint(before, *optimiser(before), {"step": 1})
    with pytest.raises(RunError, match=r"not in this model \['1.bias', '1.weight'\].*train into a new --out"):
        run.resume(now, *optimiser(now))
