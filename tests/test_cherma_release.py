"""CHERMA as released: text features zero-padded to a fixed length with no lengths (the padding must not reach the
cache), and a transcript that an entry carries is kept."""
import json

import numpy as np
from typer.testing import CliRunner

from corpusgen import refuses
from egmf.cache.reader import Cache
from egmf.extract.cli import app
from egmf.extract.datasets import cherma
from egmf.extract.run import EXIT_PARTIAL, NOTHING_TO_ENCODE

runner = CliRunner()
PADDED_TO = 78  # the released text features' fixed length
REAL_STEPS = {"tv_0001": 5, "tv_0002": 12, "tv_0003": 0}  # tokens before the padding (0: a file of zeros only)


def write_release(root) -> dict:
    """train.json with three entries (two with a transcript) and their .npy features; text zero-padded."""
    rng = np.random.default_rng(3)
    entries, text = [], {}
    for name, steps in REAL_STEPS.items():
        entry = {"audio_file": f"{name}.wav", "video_file": f"{name}.mp4", "txt_label": "悲伤",
                 "audio_label": "平静", "visual_label": "悲伤", "video_label": "悲伤"}
        if name != "tv_0003":
            entry["text"] = f" 我今天{name}很难过 "
        entries.append(entry)
        text[name] = np.zeros((PADDED_TO, 1024), np.float32)
        text[name][:steps] = rng.standard_normal((steps, 1024))
        text[name][1, :7] = 0  # zeros inside the real part stay: only trailing all-zero rows are padding
        for modality, suffix, x in (("text", ".npy", text[name]), ("audio", ".npy", rng.standard_normal(1024)),
                                    ("visual", ".mp4.npy", rng.standard_normal((4, 2048)))):
            (root / modality / "train").mkdir(parents=True, exist_ok=True)
            np.save(root / modality / "train" / f"{name}{suffix}", np.asarray(x, np.float32))
    (root / "train.json").write_text(json.dumps(entries, ensure_ascii=False, indent=2), encoding="utf-8")
    return text


def test_padding_is_dropped_and_transcripts_kept(tmp_path):
    text = write_release(tmp_path / "cherma")
    out = tmp_path / "store"
    r = runner.invoke(app, ["--dataset", "cherma", "--root", str(tmp_path / "cherma"), "--out", str(out),
                            "--preset", "tiny", "--threads", "1"])
    assert r.exit_code == EXIT_PARTIAL, r.output  # tv_0003's text file holds only padding
    c = Cache.open(out)
    assert c.meta["text"].tolist() == ["我今天tv_0001很难过", "我今天tv_0002很难过", ""]
    feats, lengths = c.features("text")
    assert lengths.tolist() == [5, 12, 0]
    for k, name in enumerate(("tv_0001", "tv_0002")):
        np.testing.assert_allclose(feats[k, :lengths[k]], text[name][:lengths[k]].astype(np.float16))
    assert c.problems("text")[2] == NOTHING_TO_ENCODE
    assert c.lengths("visual").tolist() == [4, 4, 4] and c.lengths("audio").tolist() == [1, 1, 1]


def test_transcript_field_option_and_bad_transcripts(tmp_path):
    write_release(tmp_path)
    entries = json.loads((tmp_path / "train.json").read_text(encoding="utf-8"))
    for e in entries:
        e["sentence"] = e.pop("text", "")
    (tmp_path / "train.json").write_text(json.dumps(entries, ensure_ascii=False, indent=2), encoding="utf-8")
    assert [u.text for u in cherma.load(tmp_path).utterances] == ["", "", ""]
    named = cherma.load(tmp_path, text_field="sentence").utterances
    assert [u.text for u in named] == ["我今天tv_0001很难过", "我今天tv_0002很难过", ""]
    entries[1]["transcript"] = 42
    (tmp_path / "train.json").write_text(json.dumps(entries, ensure_ascii=False, indent=2), encoding="utf-8")
    refuses(cherma.load, tmp_path, match="transcript 42 is not text", line=11)
