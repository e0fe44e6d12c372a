"""CH-SIMS v2.0: Chinese video clips (films, TV series, interviews) with a sentiment score in [-1, 1] for the
whole clip and one per modality (text, audio, visual); 4,403 labelled clips (2,722 / 647 / 1,034) and an
unlabelled part of 10,161 clips for semi-supervised learning.

On disk (the MMSA layout, see mmsa_layout.py): the two parts are released as two folders, the supervised
ch-simsv2s/ and the unlabelled ch-simsv2u/, each with its own label CSV (the unlabelled one's label columns are
empty) and its clips in Raw/<video_id>/<clip_id>.mp4 beside the CSV. The CSV is named meta.csv, label.csv,
meta(s).csv or meta(u).csv in the copies that circulate. --root is a parent holding either or both folders, or a
folder with the CSV itself (one part, or one CSV holding both parts as some copies merge them).

- option part: "supervised" (the labelled rows; default), "unsupervised" (the unlabelled ones) or "all" (both:
  the two folders are merged). Which part a row belongs to is read from the row (is its label empty?), not from
  a folder name; a part with no row in the files found is refused, naming the folder to add.
- Ids are "<video_id>/<clip_id>" as written ("video_0001/0001"; never renumbered).
- An empty transcript is kept as "" (the clip still has sound and pictures).
"""
from __future__ import annotations

from pathlib import Path

from ...cache.schema import DatasetSpec, LabelSpec
from ..records import Corpus, DatasetError, Utterance, validate
from .mmsa_layout import read_label_file

ADAPTER_VERSION = "2"
SCORES = {"sentiment": "label", "sentiment_T": "label_T", "sentiment_A": "label_A", "sentiment_V": "label_V"}
SPEC = DatasetSpec("sims-v2", ADAPTER_VERSION, "sentiment",
                   tuple(LabelSpec(name, "score", low=-1.0, high=1.0) for name in SCORES))
LABEL_FILES = ("meta.csv", "label.csv", "meta(s).csv", "meta(u).csv")
PART_FOLDERS = ("ch-simsv2s", "ch-simsv2u")  # supervised, unlabelled: as released
PARTS = ("supervised", "unsupervised", "all")
_MISSING = {"supervised": "labelled rows (the supervised part, ch-simsv2s/)",
            "unsupervised": "unlabelled rows (the unlabelled part, ch-simsv2u/, released as its own folder)"}


def load(root, part: str = "supervised") -> Corpus:
    """The CH-SIMS v2 rows of `part` from the label files found at root (see above)."""
    root = Path(root)
    if part not in PARTS:
        raise DatasetError(root, f"unknown part {part!r}", f"use part = {' | '.join(PARTS)}")
    files = label_files(root)
    utterances, origins = [], []
    for path in files:
        rows, where = read_label_file(path, SPEC, SCORES, "zh", keep_unlabelled=True)
        utterances += rows
        origins += where
    wanted = ("supervised", "unsupervised") if part == "all" else (part,)
    for p in wanted:
        if not any(_part_of(u) == p for u in utterances):
            raise DatasetError(root, f"no {_MISSING[p]} in {', '.join(map(str, files))}",
                               f"point --root at the folder holding {PART_FOLDERS[p == 'unsupervised']}/ (or at "
                               f"that folder itself), or choose another --part")
    keep = [i for i, u in enumerate(utterances) if _part_of(u) in wanted]
    return validate(Corpus(SPEC, [utterances[i] for i in keep]), [origins[i] for i in keep])


def _part_of(u: Utterance) -> str:
    return "unsupervised" if u.split == "unlabelled" else "supervised"


def label_files(root: Path) -> list[Path]:
    """The label CSVs at root, else in its ch-simsv2s/ and ch-simsv2u/. A folder holding two whole-corpus CSVs
    (meta.csv and label.csv) is refused rather than read twice."""
    for folders in ([root], [root / name for name in PART_FOLDERS]):
        found = [f / name for f in folders for name in LABEL_FILES if (f / name).is_file()]
        for f in folders:
            whole = [p.name for p in found if p.parent == f and p.name in LABEL_FILES[:2]]
            if len(whole) > 1:
                raise DatasetError(f, f"two label files ({', '.join(whole)})", "keep the one that goes with Raw/")
        if found:
            return found
    raise DatasetError(root, f"no CH-SIMS v2 label file ({', '.join(LABEL_FILES)}) here or in "
                             f"{'/ or '.join(PART_FOLDERS)}/",
                       "point --root at ch-simsv2s (or ch-simsv2u, or the folder holding them), whose label CSV "
                       "lies beside Raw/")
