"""The one-way flow the README's architecture section draws, checked on the source: every cross-folder import,
and the only exceptions it lists (pipeline -> extract, through extract/api.py)."""
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
FOLDERS = ("extract", "cache", "fuse", "llm", "weights", "pipeline")
# folder -> the folders it may import (README, "Architecture")
ALLOWED = {"extract": {"cache", "weights"}, "cache": set(), "fuse": set(), "weights": set(), "llm": {"weights"},
           "pipeline": {"cache", "fuse", "llm", "weights", "extract"}}
IMPORT = re.compile(r"^\s*from (\.+)([\w.]*) import", re.M)


def cross_folder_imports():
    """(file, imported folder, imported module) for every relative import that leaves the file's folder."""
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            package = path.relative_to(ROOT).parent.parts  # e.g. ("pipeline", "bench")
            for dots, module in IMPORT.findall(path.read_text(encoding="utf-8")):
                base = package[:len(package) - (len(dots) - 1)]
                target = (*base, *module.split(".")) if module else base
                if target and target[0] != folder:
                    yield path.relative_to(ROOT), target[0], ".".join(target)


def test_every_cross_folder_import_follows_the_one_way_flow():
    found = list(cross_folder_imports())
    assert found, "the scan found no cross-folder import at all: the pattern is broken"
    wrong = [f"{path}: imports {module}" for path, folder, module in found if folder not in ALLOWED[path.parts[0]]]
    assert not wrong, wrong


def test_pipeline_reaches_extract_only_through_its_api():
    into_extract = {(str(path), module) for path, folder, module in cross_folder_imports() if folder == "extract"}
    assert {module for _, module in into_extract} == {"extract.api"}, into_extract
    assert {path.split("/")[1] for path, _ in into_extract} == {"predict.py", "demo.py", "bench"}
