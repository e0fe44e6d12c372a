"""Real data files shipped beside the repository (../shared/data), used by tests that need real corpora."""
from pathlib import Path

import pytest

MELD_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "meld"


def require_meld() -> Path:
    if not (MELD_DATA / "train_sent_emo.csv").is_file():
        pytest.skip(f"real MELD CSVs not found in {MELD_DATA} (the workplace's shared/ folder beside the repo)")
    return MELD_DATA
