"""Faults in stage one: egmf-extract killed anywhere, two runs on one store, broken clips, broken label files,
NaN features, stores of another schema or content. Each test fails on an implementation that loses, repeats,
interleaves or silently guesses work.

The kills are real SIGKILLs: tests/faultkit.py runs one egmf-extract per child process and kills it at a named
store write, delete or function call (label-file faults already refused by each adapter are in test_datasets.py;
here they go through the command line).
"""
import csv
import re

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from egmf.cache.cli import app as cache_app
from egmf.cache.header import ATTR
from egmf.cache.reader import Cache
from egmf.extract.cli import app
from egmf.extract.encoders.text import TextEncoder
from egmf.extract.run import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
from faultkit import assert_same_store, call, delete, put, run_plan
from mediagen import make_bad_clip, make_clip

runner = CliRunner()
CLIPS = 21  # the demo corpus' smallest size; 6 blocks of 4 rows, the last one of 1
DEMO = ["--dataset", "demo", "--preset", "tiny", "--threads", "1", "--rows-per-shard", "4",
        "--opt", f"n_clips={CLIPS}"]

# name -> (where each successive run is killed, rows the final, unkilled re-run finds done)
KILLS = {
    "between a block's arrays and its done mark": ([put("done/c/2")], 8),
    "half-way through a shard file written in place": ([put("text/features/c/1/0/0", torn="in_place")], 4),
    "three times in a row, twice while resuming": (
        [put("done/c/1"), delete("visual/features/c/1/0/0"), put("text/features/c/3/0/0", torn="in_place")], 12),
}
MORE_KILLS = {  # the slow step's
    "creating the metadata columns": ([put("meta/text/c/0")], 0),
    "creating the feature arrays": ([put("visual/features/zarr.json")], 0),
    "writing the header, the last step of creating": ([put("zarr.json", holding='"egmf"')], 0),
    "dropping the first shard before writing it": ([delete("audio/features/c/0/0/0")], 0),
    "half-way through a shard in zarr's temporary file": ([put("visual/features/c/2/0/0", torn="temp")], 8),
    "between a shard and its lengths": ([put("audio/lengths/c/3")], 12),
    "while encoding a block": ([call("egmf.extract.run:encode_block", nth=5)], 16),
    "before the last done mark": ([put("done/c/5")], 20),
    "after the last done mark, before the summary": ([call("egmf.extract.run:_summarise")], CLIPS),
}


def slug(name: str) -> str:
    return re.sub(r"\W+", "-", name)


def sweep(work, kills: dict, with_lock: bool) -> tuple:
    """One harness run: the uninterrupted reference, each kill scenario, and optionally two runs on one store."""
    def run(name, **kw):
        store = str(work / slug(name))
        return {"args": [*DEMO, "--root", str(work / "demo"), "--out", store], "store": store, **kw}

    scenarios = {name: [*(run(name, kill=k) for k in points), run(name)] for name, (points, _) in kills.items()}
    if with_lock:
        # A run held half-way (it has the lock), a second run on the same store, the holder killed, a third run.
        scenarios["lock"] = [run("lock", hold=put("done/c/1")), run("lock"), {"kill_held": True}, run("lock")]
    report = run_plan({"app": "egmf.extract.cli:app", "reference": run("reference"), "scenarios": scenarios}, work)
    assert report["reference"]["status"] == EXIT_OK, report["reference"]["stderr"][-2000:]
    return work, report


@pytest.fixture(scope="module")
def kill_sweep(tmp_path_factory):
    return sweep(tmp_path_factory.mktemp("kills"), KILLS, with_lock=True)


@pytest.fixture(scope="module")
def more_kill_sweep(tmp_path_factory):
    return sweep(tmp_path_factory.mktemp("more-kills"), MORE_KILLS, with_lock=False)


def check_rerun(swept, kills: dict, name: str) -> None:
    work, report = swept
    *killed, final = report["scenarios"][name]
    assert [r["status"] for r in killed] == ["killed"] * len(killed), "a kill point was never reached"
    assert final["status"] == EXIT_OK, final["stderr"][-2000:]
    done = kills[name][1]
    # Done blocks are kept, not recomputed; a block cut anywhere before its done mark is redone whole.
    assert f"{CLIPS - done} extracted now, {done} already done" in final["stdout"]
    assert_same_store(Cache.open(work / "reference"), Cache.open(work / slug(name)))
    verified = runner.invoke(cache_app, ["verify", str(work / slug(name))])
    assert verified.exit_code == 0, verified.output


@pytest.mark.parametrize("name", KILLS)
def test_a_killed_extraction_reruns_to_the_uninterrupted_store(kill_sweep, name):
    check_rerun(kill_sweep, KILLS, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", MORE_KILLS)
def test_killed_anywhere_else_too(more_kill_sweep, name):
    check_rerun(more_kill_sweep, MORE_KILLS, name)


def test_a_second_run_on_a_busy_store_is_refused_and_a_killed_holder_leaves_no_lock(kill_sweep):
    work, report = kill_sweep
    holder, second, kill, third = report["scenarios"]["lock"]
    assert holder["status"] == "held"
    assert second["status"] == EXIT_FAILED
    assert f"being written by egmf-extract pid {holder['pid']}" in second["stderr"] and "Fix:" in second["stderr"]
    assert second["store_changed"] is False  # refused before touching a single file
    assert kill["status"] == "killed"
    assert third["status"] == EXIT_OK, third["stderr"][-2000:]
    assert f"{CLIPS - 4} extracted now, 4 already done" in third["stdout"]
    assert_same_store(Cache.open(work / "reference"), Cache.open(work / "lock"))


# --- broken clips ----------------------------------------------------------------------------------------------

def write_folder_corpus(root, rows) -> None:
    """root/labels.csv of a folder corpus: rows of (id, clip path or "", transcript, label)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "text", "label"])
        w.writerows(rows)


def skipped(store) -> dict:
    with open(f"{store}-skipped.csv", newline="") as f:
        return {(row["clip"], row["modality"]): row["reason"] for row in csv.DictReader(f)}


def test_clips_the_run_test_leaves_out_are_reported_too(tmp_path):
    """Beyond test_extract_run's broken clips: a clip shorter than one frame (10 ms of audio, less than the
    400 samples a wav2vec2 window needs), a cut download whose index comes first, and an empty transcript."""
    root = tmp_path / "corpus"
    make_clip(root / "good.mp4", seconds=1.0, seed=1)
    make_clip(root / "quiet.mp4", seconds=1.0, seed=2)
    make_bad_clip(root / "blink.mp4", "shorter_than_one_frame")
    make_bad_clip(root / "cut.mp4", "truncated_moov_first")
    write_folder_corpus(root, [("good", "good.mp4", "fine", "joy"), ("quiet", "quiet.mp4", "", "anger"),
                               ("blink", "blink.mp4", "short", "joy"), ("cut", "cut.mp4", "cut off", "joy")])
    out = tmp_path / "store"
    r = runner.invoke(app, ["--dataset", "folder", "--root", str(root), "--out", str(out), "--preset", "tiny",
                            "--threads", "1", "--rows-per-shard", "2"])
    assert r.exit_code == EXIT_PARTIAL, r.output
    c = Cache.open(out)
    assert c.done.all()
    row = {clip: i for i, clip in enumerate(c.meta["id"].tolist())}
    assert skipped(out) == {
        ("quiet", "text"): "empty transcript",
        ("blink", "visual"): "no video track",
        ("cut", "audio"): "truncated or corrupt: Invalid data found when processing input",
        ("cut", "visual"): "truncated or corrupt: readable to 1.30 s of 2.00 s",
    }
    # The 10 ms of sound are zero-padded up to one wav2vec2 window by the encoder: one step, not a crash.
    assert c.lengths("audio")[row["blink"]] == 1
    for clip in ("good", "quiet"):
        assert c.lengths("audio")[row[clip]] > 0 and c.lengths("visual")[row[clip]] > 0
    assert c.lengths("text")[row["quiet"]] == 0 and c.lengths("text")[row["good"]] > 0


# --- broken label files, through the command line -----------------------------------------------------------------

MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
SIMS_HEADER = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode"


def meld_line(n, text, emotion, utt, header=MELD_HEADER) -> str:
    row = {"Sr No.": n, "Utterance": text, "Speaker": "Joey", "Emotion": emotion, "Sentiment": "neutral",
           "Dialogue_ID": 0, "Utterance_ID": utt, "Season": 1, "Episode": 1, "StartTime": "", "EndTime": ""}
    return ",".join(str(row[c]) for c in header.split(","))


@pytest.mark.parametrize("dataset, file, lines, line, problem", [
    ("meld", "dev_sent_emo.csv", [MELD_HEADER.replace(",Emotion", ""), meld_line(1, "Hi.", "joy", 0,
                                  header=MELD_HEADER.replace(",Emotion", ""))], 1, "missing column(s) Emotion"),
    ("meld", "dev_sent_emo.csv", [MELD_HEADER, meld_line(1, "Hi.", "joy", 0), meld_line(2, "Ugh.", "grumpy", 1)],
     3, "unknown emotion 'grumpy'"),
    ("meld", "dev_sent_emo.csv", [MELD_HEADER, meld_line(1, "Hi.", "joy", 0), meld_line(2, "Hi!", "joy", 0)],
     3, "duplicate id 'dev/dia0_utt0'"),
    ("sims-v2", "label.csv", [SIMS_HEADER, "v1,0001,好,0.2,0.2,0.2,0.2,Positive,train",
                              "v1,0002,差,-0.4,-0.2,lots,0.0,Negative,train"], 3, "label_A 'lots' is not a number"),
])
def test_a_bad_label_file_stops_the_command_naming_file_and_line(tmp_path, dataset, file, lines, line, problem):
    (tmp_path / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "store"
    r = runner.invoke(app, ["--dataset", dataset, "--root", str(tmp_path), "--out", str(out), "--preset", "tiny",
                            "--threads", "1", "--modalities", "text", *(["--opt", "splits=dev"] * (dataset == "meld"))])
    assert r.exit_code == EXIT_FAILED
    assert r.stderr.startswith(f"error: {tmp_path / file}, line {line}: {problem}") and "Fix:" in r.stderr
    assert r.stdout == "" and not out.exists()  # no store with a guessed default


def test_an_empty_transcript_is_a_reported_skip(tmp_path):
    (tmp_path / "dev_sent_emo.csv").write_text(
        "\n".join([MELD_HEADER, meld_line(1, "Hi.", "joy", 0), meld_line(2, "", "anger", 1)]) + "\n")
    out = tmp_path / "store"
    r = runner.invoke(app, ["--dataset", "meld", "--root", str(tmp_path), "--out", str(out), "--preset", "tiny",
                            "--threads", "1", "--modalities", "text", "--opt", "splits=dev"])
    assert r.exit_code == EXIT_PARTIAL, r.output
    assert skipped(out) == {("dev/dia0_utt1", "text"): "empty transcript"}
    c = Cache.open(out)
    assert c.done.all() and c.lengths("text").tolist()[1] == 0 and c.lengths("text")[0] > 0


# --- NaN and infinite features, through the run ---------------------------------------------------------------

def text_corpus(root, n=10) -> None:
    write_folder_corpus(root, [(f"c{i:02d}", "", f"sentence number {i}" + (" poison" if i == 5 else ""),
                                "joy" if i % 2 else "anger") for i in range(n)])


def text_run(root, out) -> list[str]:
    return ["--dataset", "folder", "--root", str(root), "--out", str(out), "--preset", "tiny", "--threads", "1",
            "--modalities", "text", "--rows-per-shard", "4"]


@pytest.mark.parametrize("value, problem", [(np.nan, "contain NaN or infinite values"),
                                            (np.inf, "contain NaN or infinite values"),
                                            (1e6, "exceed the float16 range")])
def test_non_finite_features_are_refused_naming_the_clip_and_a_rerun_completes(tmp_path, monkeypatch, value,
                                                                              problem):
    text_corpus(tmp_path / "corpus")
    clean = tmp_path / "clean"
    assert runner.invoke(app, text_run(tmp_path / "corpus", clean)).exit_code == EXIT_OK
    encode = TextEncoder.encode

    def poisoned(self, batch):
        out = encode(self, batch)
        return [x if "poison" not in text else np.full_like(x, value) for x, text in zip(out, batch)]

    monkeypatch.setattr(TextEncoder, "encode", poisoned)
    out = tmp_path / "store"
    r = runner.invoke(app, text_run(tmp_path / "corpus", out))
    assert r.exit_code == EXIT_FAILED
    assert f"clip c05: text features {problem}" in r.stderr and "Fix:" in r.stderr
    assert Cache.open(out).done.tolist() == [True] * 4 + [False] * 6  # the block of c05 and later: not written
    monkeypatch.setattr(TextEncoder, "encode", encode)
    r = runner.invoke(app, text_run(tmp_path / "corpus", out))
    assert r.exit_code == EXIT_OK and "6 extracted now, 4 already done" in r.stdout
    assert_same_store(Cache.open(clean), Cache.open(out))


# --- a store of another schema or content ------------------------------------------------------------------------

def test_a_store_of_another_schema_version_is_refused_with_the_fix(tmp_path):
    text_corpus(tmp_path / "corpus")
    out = tmp_path / "store"
    assert runner.invoke(app, text_run(tmp_path / "corpus", out)).exit_code == EXIT_OK
    group = zarr.open_group(str(out), mode="r+")
    group.attrs[ATTR] = {**group.attrs[ATTR], "schema_version": 0, "egmf_version": "0.0.1"}
    message = "cache schema version 0, this egmf reads version 1. Fix: re-extract it"
    r = runner.invoke(cache_app, ["info", str(out)])
    assert r.exit_code == 2 and message in r.stderr and "0.0.1" in r.stderr
    r = runner.invoke(app, text_run(tmp_path / "corpus", out))  # resuming into it is refused as well
    assert r.exit_code == EXIT_FAILED and message in r.stderr


def test_a_store_of_other_rows_is_refused_not_overwritten(tmp_path):
    text_corpus(tmp_path / "corpus", n=10)
    out = tmp_path / "store"
    assert runner.invoke(app, text_run(tmp_path / "corpus", out)).exit_code == EXIT_OK
    before = Cache.open(out).fingerprint
    text_corpus(tmp_path / "corpus", n=11)
    r = runner.invoke(app, text_run(tmp_path / "corpus", out))
    assert r.exit_code == EXIT_FAILED
    assert "rows: the store has 10 utterances, this run has 11" in r.stderr
    assert "Fix: write into another store (--out NEW_PATH)" in r.stderr
    assert Cache.open(out).fingerprint == before and Cache.open(out).done.all()
