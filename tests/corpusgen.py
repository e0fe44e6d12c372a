"""Corpus files in their released layouts for the adapter tests: label CSVs, SDK .csd files, and the refusal
check every adapter test shares."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import pytest

from egmf.extract.records import DatasetError

MELD_COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
                "Episode", "StartTime", "EndTime"]
MMSA_COLUMNS = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def refuses(load, *args, match: str, line: int | None = None, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError, match=match) as caught:
        load(*args, **kwargs)
    if line is not None:
        assert caught.value.line == line and f"line {line}:" in str(caught.value)
    assert "Fix:" in str(caught.value)
    return caught.value


def write_csd(path: Path, name: str, data: dict) -> None:
    """A computational sequence as the CMU-MultimodalSDK writes it."""
    with h5py.File(path, "w") as f:
        group = f.create_group(name)
        for video, (features, intervals) in data.items():
            group.create_dataset(f"data/{video}/features", data=features)
            group.create_dataset(f"data/{video}/intervals", data=intervals)
        group.create_dataset("metadata/dataset name", data=[json.dumps("CMU-MOSEI")])
