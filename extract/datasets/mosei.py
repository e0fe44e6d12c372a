"""CMU-MOSEI: 23,453 English opinion segments from 1,000 YouTube speakers, each with a sentiment score in
[-3, 3] (the mean of three annotators' -3..3 ratings); splits 16,326 / 1,871 / 4,659.

On disk, the MMSA layout (the one most fusion work uses): label.csv with the columns video_id, clip_id, text,
label, mode (label_T/_A/_V exist but are empty: MOSEI has no per-modality labels) and the clips
Raw/<video_id>/<clip_id>.mp4. It is read by the same code as CH-SIMS v2 (sims_v2.load_mmsa); every row must be
labelled, mode train / valid / test becomes the split train / dev / test, and ids are "<video_id>/<clip_id>".
An empty transcript is kept as "". MMSA's pre-extracted Processed/*.pkl features are imported into a cache by
`egmf-cache import-mmsa`, not by this adapter.
"""
from __future__ import annotations

from pathlib import Path

from egmf.cache.schema import DatasetSpec, LabelSpec
from egmf.extract.datasets.sims_v2 import load_mmsa
from egmf.extract.records import Corpus

ADAPTER_VERSION = "1"
SPEC = DatasetSpec("mosei", ADAPTER_VERSION, "sentiment", (LabelSpec("sentiment", "score", low=-3.0, high=3.0),))


def load(root) -> Corpus:
    """CMU-MOSEI from root/label.csv and root/Raw/."""
    return load_mmsa(Path(root) / "label.csv", SPEC, {"sentiment": "label"}, "en", part=None)
