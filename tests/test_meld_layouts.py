"""MELD as people have it on disk: the release's cp1252 punctuation (on real rows from ../shared/data/meld), the
official MELD.Raw layout and the per-split one, an inner archive left packed, and a split that is absent."""
import csv
import tarfile

import pytest
from typer.testing import CliRunner

from corpusgen import MELD_COLUMNS, refuses, write_csv
from egmf.cache.reader import Cache
from egmf.extract.cli import app
from egmf.extract.datasets import meld
from egmf.extract.run import EXIT_FAILED, EXIT_OK
from shared_data import require_meld

runner = CliRunner()
C1_OR_NBSP = {chr(c) for c in range(0x80, 0xA1)}


def as_released(text: str) -> str:
    """The corruption of the released CSVs: each cp1252 punctuation byte (0x80-0x9F) read as Latin-1."""
    out = []
    for char in text:
        byte = char.encode("cp1252", errors="ignore")
        out.append(chr(byte[0]) if len(byte) == 1 and 0x80 <= byte[0] <= 0x9F else char)
    return "".join(out)


def real_rows(split: str, n: int) -> list[list[str]]:
    with open(require_meld() / f"{split}_sent_emo.csv", encoding="utf-8", newline="") as f:
        return [row for _, row in zip(range(n), csv.reader(f))][1:]


def test_real_transcripts_hold_no_control_characters_and_clean_text_is_untouched():
    corpus = meld.load(require_meld(), splits="train,dev")
    assert not [u.id for u in corpus.utterances if C1_OR_NBSP & set(u.text)]
    # This copy (declare-lab/MELD's data/MELD) is clean UTF-8 already: the repair must change none of its rows.
    raw = [row[1].strip() for split in ("train", "dev") for row in real_rows(split, 100_000)]
    assert [u.text for u in corpus.utterances] == raw


def test_cp1252_punctuation_read_as_latin1_is_repaired_on_real_rows(tmp_path):
    rows = real_rows("train", 41)  # 40 real utterances, many with ’ … — in them
    released = [[row[0], as_released(row[1]), *row[2:]] for row in rows]
    changed = [i for i, (a, b) in enumerate(zip(rows, released)) if a[1] != b[1]]
    assert len(changed) >= 5 and "\u0092" in released[0][1]  # "company\x92s": the corruption is really there
    released[1][1] = released[1][1].replace(" ", "\u00a0", 1) + "\u0081"  # a no-break space, an undefined byte
    write_csv(tmp_path / "train_sent_emo.csv", MELD_COLUMNS, released)
    texts = [u.text for u in meld.load(tmp_path, splits="train").utterances]
    assert texts == [row[1].strip() for row in rows]
    assert texts[0] == "also I was the point person on my company\u2019s transition from the KL-5 to GR-6 system."
    latin1 = "na\u00efve caf\u00e9 \u00a3\u00bd"
    assert meld.repair_cp1252(latin1) == latin1  # Latin-1 letters and symbols stay


def meld_row(sr, text, emotion, dialogue, turn):
    return [sr, text, "Ross", emotion, "neutral", dialogue, turn, 1, 1, "00:00:01,000", "00:00:02,000"]


def write_split(folder, split, n=2) -> None:
    write_csv(folder / f"{split}_sent_emo.csv", MELD_COLUMNS,
              [meld_row(i + 1, f"{split} line {i}", "neutral", 0, i) for i in range(n)])
    (folder / meld.CLIP_FOLDERS[split]).mkdir(parents=True, exist_ok=True)


def pack(archive, member) -> None:
    """A real inner archive (as MELD.Raw ships train.tar.gz) holding `member`."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(member, arcname=member.name)


@pytest.mark.parametrize("layout", ["official", "per_split"])
@pytest.mark.parametrize("root_at", ["release", "parent"])
def test_both_layouts_find_every_split(tmp_path, layout, root_at):
    release = tmp_path / "MELD.Raw"
    for split in meld.CLIP_FOLDERS:
        write_split(release if layout == "official" else release / split, split)
    corpus = meld.load(release if root_at == "release" else tmp_path)
    assert [u.id for u in corpus.utterances] == [f"{s}/dia0_utt{i}" for s in ("train", "dev", "test") for i in (0, 1)]
    for u in corpus.utterances:
        folder = release if layout == "official" else release / u.split
        assert u.media == folder / meld.CLIP_FOLDERS[u.split] / f"{u.id.split('/')[1]}.mp4"
        assert u.text == f"{u.split} line {u.turn}"


def test_named_splits_only(tmp_path):
    write_split(tmp_path / "train", "train", n=3)
    write_split(tmp_path / "dev", "dev")
    corpus = meld.load(tmp_path, splits="dev, train")
    assert [u.split for u in corpus.utterances] == ["dev", "dev", "train", "train", "train"]
    refuses(meld.load, tmp_path, splits="train,valid", match="unknown split.*valid.*train,dev,test")


def test_an_absent_split_is_refused_with_the_fix(tmp_path):
    write_split(tmp_path, "train")
    write_split(tmp_path, "dev")
    error = refuses(meld.load, tmp_path, match="no test_sent_emo.csv")
    assert "--opt splits=train,dev" in str(error)


def test_the_outer_tarball_alone_says_to_unpack_the_inner_archives(tmp_path):
    release = tmp_path / "MELD.Raw"
    for split in ("dev", "test"):
        write_split(release, split)
    staging = tmp_path / "staging"
    write_split(staging, "train")
    pack(release / "train.tar.gz", staging / "train_sent_emo.csv")
    error = refuses(meld.load, tmp_path, match="train split is still packed")
    assert error.path == release / "train.tar.gz" and "tar -xzf train.tar.gz" in str(error)
    write_split(release, "train")  # the CSV is out, but the clips are not
    (release / "train_splits").rmdir()
    error = refuses(meld.load, tmp_path, match="train_splits/ is missing and its archive is still packed")
    assert f"cd {release} && tar -xzf train.tar.gz" in str(error)


def test_egmf_extract_on_the_per_split_layout(tmp_path):
    root = tmp_path / "meld"
    for split in ("train", "dev"):
        write_split(root / split, split, n=3)
    out = tmp_path / "store"
    args = ["--dataset", "meld", "--root", str(root), "--out", str(out), "--preset", "tiny", "--threads", "1",
            "--modalities", "text"]
    r = runner.invoke(app, args)
    assert r.exit_code == EXIT_FAILED and not out.exists()
    assert f"error: {root}: no test_sent_emo.csv" in r.stderr and "--opt splits=train,dev" in r.stderr
    r = runner.invoke(app, [*args, "--opt", "splits=train,dev"])
    assert r.exit_code == EXIT_OK, r.output
    c = Cache.open(out)
    assert c.meta["id"].tolist() == [f"{s}/dia0_utt{i}" for s in ("train", "dev") for i in range(3)]
    assert c.meta["text"].tolist()[3] == "dev line 0"
