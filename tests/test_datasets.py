"""Corpus adapters on their real layouts: the real MELD label files, and small generated corpora (label files,
released features and real mp4 clips) for every adapter, including the label-file faults each must refuse."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from egmf.extract.datasets import cherma, folder, get, meld, mosei, sims_v2
from shared_data import MELD_DATA, require_meld
from egmf.cache.reader import Cache
from egmf.extract.cli import app
from egmf.extract.media import decode_clip
from egmf.extract.run import EXIT_PARTIAL
from corpusgen import MMSA_COLUMNS, MELD_COLUMNS, refuses, write_csd, write_csv
from mediagen import make_clip


# ---------------------------------------------------------------- MELD, the real label files

@pytest.fixture(scope="module")
def real_meld():
    return meld.load(require_meld(), splits="train,dev")


def test_meld_real_files_splits_and_rows(real_meld):
    by_id = {u.id: u for u in real_meld.utterances}
    assert sum(u.split == "train" for u in real_meld.utterances) == 9989
    assert sum(u.split == "dev" for u in real_meld.utterances) == 1109
    first = by_id["train/dia0_utt0"]
    assert first.text == "also I was the point person on my company\u2019s transition from the KL-5 to GR-6 system."
    assert first.labels == {"emotion": meld.EMOTIONS.index("neutral"), "sentiment": 1}
    assert first.media == MELD_DATA / "train_splits" / "dia0_utt0.mp4" and first.language == "en"
    quoted = by_id["dev/dia0_utt0"]  # a quoted field with a comma
    assert quoted.text == "Oh my God, he\u2019s lost it. He\u2019s totally lost it."
    assert quoted.labels == {"emotion": meld.EMOTIONS.index("sadness"), "sentiment": 0}
    assert quoted.media == MELD_DATA / "dev_splits_complete" / "dia0_utt0.mp4"
    assert by_id["train/dia613_utt6"].text == "Nestl\u00e9 Toll House?"
    assert by_id["train/dia300_utt1"].text == "Knick fan?"  # its timestamps are in the short "0:03:43,056" form
    assert [by_id[f"dev/dia0_utt{k}"].speaker for k in range(2)] == ["Phoebe", "Monica"]
    assert all(u.speaker for u in real_meld.utterances)  # every row of the release names its speaker


def test_meld_real_files_dialogue_structure(real_meld):
    dialogues = {}
    for u in real_meld.utterances:
        dialogues.setdefault(u.dialogue, []).append(u.turn)
        assert u.dialogue == f"{u.split}/{u.id.split('/dia')[1].split('_')[0]}"
    assert sum(d.startswith("train/") for d in dialogues) == 1038
    assert sum(d.startswith("dev/") for d in dialogues) == 114
    assert all(turns == sorted(turns) for turns in dialogues.values())
    assert dialogues["train/1"] == [0, 1, 2, 3, 4, 5, 8]  # a gap the authors left: kept, not renumbered


# ---------------------------------------------------------------- MELD, a generated copy

def meld_row(sr, text, emotion, sentiment, dialogue, turn, start='"00:16:16,059"', speaker="Chandler"):
    return [sr, text, speaker, emotion, sentiment, dialogue, turn, 8, 21, start, "00:16:21,731"]


@pytest.fixture
def meld_root(tmp_path):
    write_csv(tmp_path / "train_sent_emo.csv", MELD_COLUMNS, [
        meld_row(1, "I\u0092m\u00a0fine, really.\u0085", "joy", "positive", 0, 0),
        meld_row(3, "", "neutral", "neutral", 0, 1, "0:16:22,000"),  # Sr No. gap, short timestamp, no words
        meld_row(4, "Caf\u00e9?", "anger", "negative", 1, 0, speaker=" Mr. Geller\u00a0"),
    ])
    make_clip(tmp_path / "train_splits" / "dia0_utt0.mp4", seconds=1.0, seed=1)
    make_clip(tmp_path / "train_splits" / "dia1_utt0.mp4", seconds=1.0, seed=2)
    return tmp_path


def test_meld_generated_corpus_with_clips(meld_root):
    corpus = get("meld").load(meld_root, splits="train")
    assert [u.id for u in corpus.utterances] == ["train/dia0_utt0", "train/dia0_utt1", "train/dia1_utt0"]
    assert [u.text for u in corpus.utterances] == ["I\u2019m fine, really.\u2026", "", "Caf\u00e9?"]
    assert [(u.dialogue, u.turn) for u in corpus.utterances] == [("train/0", 0), ("train/0", 1), ("train/1", 0)]
    assert [u.speaker for u in corpus.utterances] == ["Chandler", "Chandler", "Mr. Geller"]
    assert corpus.utterances[2].labels == {"emotion": 6, "sentiment": 0}
    assert corpus.spec.task == "emotion" and corpus.spec.label("sentiment").classes == meld.SENTIMENTS
    present, missing = decode_clip(corpus.utterances[0].media, fps=2, max_frames=4), \
        decode_clip(corpus.utterances[1].media, fps=2, max_frames=4)
    assert present.problems == {} and present.frames.shape[0] == 2
    assert missing.problems == {"audio": "missing file", "visual": "missing file"}


def test_meld_bad_label_files(tmp_path):
    refuses(meld.load, tmp_path, match="no train_sent_emo.csv")
    path = write_csv(tmp_path / "dev_sent_emo.csv", MELD_COLUMNS,
                     [meld_row(1, "Hi.", "joy", "positive", 0, 0), meld_row(2, "Ugh.", "grumpy", "negative", 0, 1)])
    error = refuses(meld.load, tmp_path, splits="dev", match="unknown emotion 'grumpy'", line=3)
    assert error.path == path and "neutral, surprise, fear" in str(error)
    write_csv(path, MELD_COLUMNS, [meld_row(1, "Hi.", "joy", "positive", 0, 0),
                                   meld_row(2, "Hi again.", "joy", "positive", 0, 0)])
    refuses(meld.load, tmp_path, splits="dev", match="duplicate id 'dev/dia0_utt0'", line=3)
    write_csv(path, [c for c in MELD_COLUMNS if c != "Emotion"], [[1, "Hi.", "Joey", "positive", 0, 0, 1, 1, "", ""]])
    refuses(meld.load, tmp_path, splits="dev", match="missing column.*Emotion", line=1)
    path.write_text("Sr No.,Utterance,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n1,\"A\nB\",joy,positive,x,0\n",
                    encoding="utf-8")
    refuses(meld.load, tmp_path, splits="dev", match="Dialogue_ID 'x' is not a whole number", line=2)
    path.write_text("Sr No.,Utterance,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n1,Hi.,joy,positive,0,0\n",
                    encoding="utf-8")
    assert [u.speaker for u in meld.load(tmp_path, splits="dev").utterances] == [""]  # no Speaker column: unnamed


def test_meld_non_utf8_file_names_the_line(tmp_path):
    (tmp_path / "train_sent_emo.csv").write_bytes(
        ",".join(MELD_COLUMNS).encode() + b"\n1,ok,A,joy,positive,0,0,1,1,,\n2,caf\xe9,A,joy,positive,0,1,1,1,,\n")
    refuses(meld.load, tmp_path, splits="train", match="not UTF-8", line=3)


# ---------------------------------------------------------------- CH-SIMS v2

def sims_rows():
    return [
        ["video_0001", "0001", "今天天气真好", "0.6", "0.8", "0.4", "0.2", "Positive", "train"],
        ["video_0001", "0002", "", "-0.4", "-0.2", "-0.6", "0.0", "Negative", "valid"],
        ["video_0002", "0010", "我不知道", "0.0", "0.0", "0.0", "0.0", "Neutral", "test"],
        ["video_0100", "0003", "没有标签", "", "", "", "", "", "train"],
    ]


@pytest.mark.parametrize("name", sims_v2.LABEL_FILES)
def test_sims_v2_parts_and_layout(tmp_path, name):
    write_csv(tmp_path / name, MMSA_COLUMNS, sims_rows())
    make_clip(tmp_path / "Raw" / "video_0001" / "0001.mp4", seconds=0.5)
    corpus = get("sims-v2").load(tmp_path)
    assert [u.id for u in corpus.utterances] == ["video_0001/0001", "video_0001/0002", "video_0002/0010"]
    assert [u.split for u in corpus.utterances] == ["train", "dev", "test"]
    first = corpus.utterances[0]
    assert first.labels == {"sentiment": 0.6, "sentiment_T": 0.8, "sentiment_A": 0.4, "sentiment_V": 0.2}
    assert first.media == tmp_path / "Raw" / "video_0001" / "0001.mp4" and first.media.is_file()
    assert first.language == "zh" and corpus.utterances[1].text == ""
    unlabelled = sims_v2.load(tmp_path, part="unsupervised").utterances
    assert [(u.id, u.split) for u in unlabelled] == [("video_0100/0003", "unlabelled")]
    assert unlabelled[0].labels == dict.fromkeys(sims_v2.SCORES)
    assert len(sims_v2.load(tmp_path, part="all").utterances) == 4


@pytest.mark.parametrize("row_change, match", [
    ({3: "very good"}, "label 'very good' is not a number"),
    ({3: "1.2"}, r"sentiment 1.2 is outside \[-1.0, 1.0\]"),
    ({5: ""}, "labelled row without label_A"),
    ({8: "validation"}, "unknown mode 'validation'"),
    ({1: "0002"}, "duplicate id 'video_0001/0002'"),
])
def test_sims_v2_bad_rows(tmp_path, row_change, match):
    rows = sims_rows()
    rows[2] = [row_change.get(i, v) for i, v in enumerate(rows[2])]
    if 1 in row_change:
        rows[2][0] = "video_0001"
    write_csv(tmp_path / "label.csv", MMSA_COLUMNS, rows)
    refuses(sims_v2.load, tmp_path, match=match, line=4)


def test_sims_v2_missing_files_and_columns(tmp_path):
    refuses(sims_v2.load, tmp_path, match="no CH-SIMS v2 label file")
    write_csv(tmp_path / "meta.csv", [c for c in MMSA_COLUMNS if c != "label_V"], [])
    refuses(sims_v2.load, tmp_path, match="missing column.*label_V", line=1)
    refuses(sims_v2.load, tmp_path, match="unknown part 'semi'", part="semi")


# ---------------------------------------------------------------- CMU-MOSEI (MMSA layout)

def test_mosei_scores_in_their_range(tmp_path):
    write_csv(tmp_path / "label.csv", MMSA_COLUMNS, [
        ["-3g9VbKrMkE", "0", "i really liked it", "2.6667", "", "", "", "Positive", "train"],
        ["-3g9VbKrMkE", "1", "not so much", "-3.0", "", "", "", "Negative", "test"],
    ])
    corpus = get("mosei").load(tmp_path)
    assert [(u.id, u.split, u.labels["sentiment"]) for u in corpus.utterances] == [
        ("-3g9VbKrMkE/0", "train", 2.6667), ("-3g9VbKrMkE/1", "test", -3.0)]
    assert corpus.spec.label("sentiment").high == 3.0 and corpus.utterances[0].language == "en"
    assert corpus.utterances[1].media == tmp_path / "Raw" / "-3g9VbKrMkE" / "1.mp4"


@pytest.mark.parametrize("label, match", [("", "empty label"), ("3.5", "outside"), ("n/a", "not a number")])
def test_mosei_bad_scores(tmp_path, label, match):
    write_csv(tmp_path / "label.csv", MMSA_COLUMNS, [["v", "0", "fine", "1.0", "", "", "", "", "train"],
                                                     ["v", "1", "bad", label, "", "", "", "", "train"]])
    refuses(mosei.load, tmp_path, match=match, line=3)


def test_mosei_without_label_file(tmp_path):
    refuses(mosei.load, tmp_path, match="label file not found")


@pytest.fixture
def mosei_csd(tmp_path):
    write_csd(tmp_path / mosei.LABELS_CSD, "All Labels", {
        # the SDK's rows are not in time order: the later segment comes first in the file
        "vidA": (np.array([[-1.5, 0, 2, 1, 0, 0, 0], [2.0, 1, 0, 0, 0, 0, 0]]), np.array([[1.5, 2.5], [0.5, 1.5]])),
        "vidB": (np.array([[0.0, 0, 0, 0, 3, 0, 0]]), np.array([[0.0, 1.0]])),
        "vidC": (np.array([[1.0, 0, 0, 0, 0, 0, 0]]), np.array([[0.0, 1.0]])),
    })
    words = np.array([[b"sp"], [b"i"], [b"loved"], [b"it"], [b"but"], [b"no"]])
    write_csd(tmp_path / mosei.WORDS_CSD, "words", {
        "vidA": (words, np.array([[0.0, 0.5], [0.5, 0.7], [0.7, 1.1], [1.1, 1.4], [1.6, 1.9], [1.9, 2.3]]))})
    (tmp_path / "cmu_mosei_std_folds.py").write_text(
        "standard_train_fold=['vidA']\nstandard_valid_fold=['vidB']\nstandard_test_fold=['other']\n")
    make_clip(tmp_path / "Videos" / "Full" / "Combined" / "vidA.mp4", seconds=3.0, seed=4)
    return tmp_path


def test_mosei_csd_segments_are_spans_of_full_videos(mosei_csd):
    with pytest.warns(UserWarning, match="1 videos are in no fold and left out: vidC"):
        corpus = mosei.load(mosei_csd, source="csd", folds="cmu_mosei_std_folds.py")
    assert [(u.id, u.split, u.start, u.end) for u in corpus.utterances] == [
        ("vidA/seg0", "train", 0.5, 1.5), ("vidA/seg1", "train", 1.5, 2.5), ("vidB/seg0", "dev", 0.0, 1.0)]
    assert [u.labels["sentiment"] for u in corpus.utterances] == [2.0, -1.5, 0.0]  # labels follow their spans
    first, second = corpus.utterances[:2]
    assert first.text == "i loved it" and second.text == "but no" and corpus.utterances[2].text == ""
    assert second.labels == {"sentiment": -1.5, "happy": 0.0, "sad": 2.0, "anger": 1.0, "surprise": 0.0,
                             "disgust": 0.0, "fear": 0.0}
    clip = decode_clip(first.media, fps=2, max_frames=4, start=first.start, end=first.end)
    assert clip.problems == {} and clip.audio.shape == (16000,) and clip.frames.shape[0] == 2


def test_egmf_extract_on_the_csd_release(mosei_csd):
    out = mosei_csd / "store"
    with pytest.warns(UserWarning, match="left out: vidC"):
        r = CliRunner().invoke(app, ["--dataset", "mosei", "--root", str(mosei_csd), "--out", str(out), "--preset",
                                     "tiny", "--threads", "1", "--modalities", "text", "--opt", "source=csd",
                                     "--opt", "folds=cmu_mosei_std_folds.py"])
    assert r.exit_code == EXIT_PARTIAL, r.output  # vidB has no words: its text is reported missing
    c = Cache.open(out)
    assert c.meta["id"].tolist() == ["vidA/seg0", "vidA/seg1", "vidB/seg0"]
    assert c.meta["text"].tolist() == ["i loved it", "but no", ""] and c.labels["sentiment"].tolist() == [2, -1.5, 0]


def test_mosei_csd_bad_inputs(mosei_csd):
    refuses(mosei.load, mosei_csd, source="csd", match="no train/dev/test splits")
    refuses(mosei.load, mosei_csd, source="csv", match="unknown source 'csv'")
    (mosei_csd / "folds.py").write_text("standard_train_fold=['vidA']\n")
    refuses(mosei.load, mosei_csd, source="csd", folds="folds.py", match="expected the lists")
    write_csd(mosei_csd / mosei.LABELS_CSD, "All Labels", {"vidA": (np.array([[3.5, 0, 0, 0, 0, 0, 0]]),
                                                                     np.array([[0.0, 1.0]]))})
    refuses(mosei.load, mosei_csd, source="csd", folds="cmu_mosei_std_folds.py", match=r"vidA/seg0: sentiment 3.5")
    (mosei_csd / mosei.LABELS_CSD).write_text("not hdf5")
    refuses(mosei.load, mosei_csd, source="csd", folds="cmu_mosei_std_folds.py", match="not a computational")


# ---------------------------------------------------------------- CHERMA

def cherma_entry(name, video, txt="高兴", audio="平静", visual="高兴"):
    return {"audio_file": f"{name}.wav", "video_file": f"{name}.mp4", "txt_label": txt, "audio_label": audio,
            "visual_label": visual, "video_label": video}


def test_cherma_labels_and_released_features(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(
        [cherma_entry("tv_0001", "高兴"), cherma_entry("tv_0002", "愤怒", txt="愤怒", audio="愤怒", visual="厌恶")],
        ensure_ascii=False, indent=2), encoding="utf-8")
    (tmp_path / "test.json").write_text(json.dumps([cherma_entry("tv_0001", "惊奇")], ensure_ascii=False),
                                        encoding="utf-8")
    for split, name in (("train", "tv_0001"), ("train", "tv_0002"), ("test", "tv_0001")):
        for modality, dim, suffix in (("text", 1024, ".npy"), ("audio", 1024, ".npy"), ("visual", 2048, ".mp4.npy")):
            (tmp_path / modality / split).mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / modality / split / f"{name}{suffix}", np.zeros((3, dim), np.float32))
    corpus = get("cherma").load(tmp_path)
    assert [u.id for u in corpus.utterances] == ["train/tv_0001", "train/tv_0002", "test/tv_0001"]
    angry = corpus.utterances[1]
    assert angry.labels == {"emotion": 0, "emotion_T": 0, "emotion_A": 0, "emotion_V": 1}
    assert corpus.spec.label("emotion").classes[3] == "高兴" and corpus.spec.task == "emotion"
    assert angry.media is None and angry.text == "" and angry.language == "zh"
    assert set(angry.features) == {"text", "audio", "visual"}
    assert all(p.is_file() for u in corpus.utterances for p in u.features.values())
    assert angry.features["visual"] == tmp_path / "visual" / "train" / "tv_0002.mp4.npy"


def test_cherma_bad_label_files(tmp_path):
    refuses(cherma.load, tmp_path, match="no CHERMA label file")
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([cherma_entry("a", "高兴"), cherma_entry("b", "开心")], ensure_ascii=False, indent=2),
                    encoding="utf-8")
    refuses(cherma.load, tmp_path, match="unknown video_label '开心'", line=10)  # entry 2 opens on line 10
    broken = cherma_entry("a", "高兴")
    del broken["visual_label"]
    path.write_text(json.dumps([broken], ensure_ascii=False), encoding="utf-8")
    refuses(cherma.load, tmp_path, match="entry without visual_label", line=1)
    path.write_text(json.dumps([cherma_entry("a", "高兴"), cherma_entry("a", "悲伤")], ensure_ascii=False, indent=1),
                    encoding="utf-8")
    refuses(cherma.load, tmp_path, match="duplicate id 'dev/a'", line=10)
    path.write_text('[{"audio_file": "a.wav",}]', encoding="utf-8")
    refuses(cherma.load, tmp_path, match="not valid JSON", line=1)


# ---------------------------------------------------------------- the user's own folder

def test_folder_scores_with_observed_range_rounded_outward(tmp_path):
    write_csv(tmp_path / "labels.csv", ["id", "path", "text", "label", "split"], [
        ["a", "clips/a.mp4", "great", "0.6", "train"],
        ["b", "clips/b.mp4", "bad", "-0.8", "valid"],
        ["c", "", "no media", "", "unlabelled"],
    ])
    make_clip(tmp_path / "clips" / "a.mp4", seconds=0.5)
    corpus = get("folder").load(tmp_path, language="zh")
    spec = corpus.spec.label("sentiment")
    assert (spec.kind, spec.low, spec.high, corpus.spec.task) == ("score", -1.0, 1.0, "sentiment")
    assert [(u.split, u.labels["sentiment"]) for u in corpus.utterances] == [("train", 0.6), ("dev", -0.8),
                                                                             ("unlabelled", None)]
    assert corpus.utterances[0].media == tmp_path / "clips" / "a.mp4" and corpus.utterances[2].media is None
    assert corpus.utterances[0].language == "zh"
    wide = folder.load(tmp_path, low="-3", high=3).spec.label("sentiment")  # options arrive as text from the CLI
    assert (wide.low, wide.high) == (-3.0, 3.0)


def test_folder_classes_and_default_split(tmp_path):
    write_csv(tmp_path / "mine.csv", ["id", "path", "text", "label"], [
        ["x1", "x1.mp4", "hi", "joy"], ["x2", "x2.mp4", "grr", "anger"], ["x3", "x3.mp4", "hm", "joy"]])
    corpus = folder.load(tmp_path, csv="mine.csv")
    assert corpus.spec.label("emotion").classes == ("anger", "joy") and corpus.spec.task == "emotion"
    assert [u.labels["emotion"] for u in corpus.utterances] == [1, 0, 1]
    assert {u.split for u in corpus.utterances} == {"train"} and {u.speaker for u in corpus.utterances} == {""}
    write_csv(tmp_path / "named.csv", ["id", "path", "text", "label", "speaker"], [
        ["x1", "x1.mp4", "hi", "joy", " Ann "], ["x2", "x2.mp4", "grr", "anger", ""]])
    assert [u.speaker for u in folder.load(tmp_path, csv="named.csv").utterances] == ["Ann", ""]
    ordered = folder.load(tmp_path, csv="mine.csv", classes="neutral,joy,anger")
    assert [u.labels["emotion"] for u in ordered.utterances] == [1, 2, 1]
    refuses(folder.load, tmp_path, csv="mine.csv", classes="neutral,joy", match="unknown label 'anger'", line=3)


def test_folder_without_labels(tmp_path):
    write_csv(tmp_path / "labels.csv", ["id", "path", "text"], [["x1", "x1.mp4", "hi"]])
    corpus = folder.load(tmp_path)
    assert corpus.spec.labels == () and corpus.utterances[0].labels == {}


@pytest.mark.parametrize("rows, match, line", [
    ([["a", "a.mp4", "t", "0.5"], ["b", "b.mp4", "t", "0.4x"]], "label '0.4x' is not a number", 3),
    ([["a", "a.mp4", "t", "0.5"], ["a", "b.mp4", "t", "0.4"]], "duplicate id 'a'", 3),
    ([["a", "a.mp4", "t", "0.5"], ["b", "b.mp4", "t", ""]], "empty label in split 'train'", 3),
    ([["a", "a.mp4", "t", "1"], ["b", "b.mp4", "t", "1"]], r"label range \[1.0, 1.0\] is empty", None),
])
def test_folder_bad_labels(tmp_path, rows, match, line):
    write_csv(tmp_path / "labels.csv", ["id", "path", "text", "label"], rows)
    refuses(folder.load, tmp_path, match=match, line=line)


def test_folder_bad_split_column_and_options(tmp_path):
    write_csv(tmp_path / "labels.csv", ["id", "path", "text", "split"], [["a", "a.mp4", "t", "holdout"]])
    refuses(folder.load, tmp_path, match="unknown split 'holdout'", line=2)
    refuses(folder.load, tmp_path, language="fr", match="unknown language 'fr'")
    write_csv(tmp_path / "labels.csv", ["id", "text"], [["a", "t"]])
    refuses(folder.load, tmp_path, match="missing column.*path", line=1)
    (tmp_path / "labels.csv").write_text("id,path,text\na,a.mp4,fine\nb,b.mp4,well, no\n", encoding="utf-8")
    refuses(folder.load, tmp_path, match="4 fields where the header has 3", line=3)
