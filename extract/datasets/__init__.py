"""Dataset adapters: one module per corpus, each exposing
load(root, **options) -> records.Corpus (its DatasetSpec and its validated Utterances). Adding a corpus means
adding a module and a line below."""
from __future__ import annotations

import importlib

ADAPTERS = {
    "meld": "meld",
    "sims-v2": "sims_v2",
    "mosei": "mosei",
    "cherma": "cherma",
    "folder": "folder",
    "demo": "demo",
}


def get(name: str):
    """The adapter module for a dataset name, e.g. get("sims-v2")."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}. Fix: choose one of {', '.join(ADAPTERS)}")
    return importlib.import_module(f"{__name__}.{ADAPTERS[name]}")
