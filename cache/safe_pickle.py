"""Unpickling a pickle from someone else without running its code: only numpy arrays and plain containers.

A pickle names every callable it needs (its GLOBAL opcodes) and unpickling calls them: a crafted file names
os.system or open. Unpickler.find_class is asked for each name before anything calls it, so refusing there stops
a crafted pickle before any of it runs. What MMSA and MMSA-FET pickles name (protocols 2 to 5, written by numpy 1.x
as numpy.core.*, by numpy 2.x as numpy._core.*): numpy's array reconstruction, ndarray, dtype, numpy scalars, and
for protocol 2 bytes, _codecs.encode; dicts, lists, tuples, strings and numbers need no name at all.
"""
from __future__ import annotations

import _codecs
import collections
import pickle
from pathlib import Path

import numpy as np
from numpy._core import multiarray, numeric


def _latin1_encode(text: str, encoding: str) -> bytes:
    """Protocol 2 writes bytes as _codecs.encode(text, "latin1"); any other codec is no bytes object."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with the codec {encoding!r}")
    return _codecs.encode(text, encoding)


# (module, name) -> the object: looked up here, never imported by the name the file gives.
ALLOWED = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): multiarray._reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): multiarray.scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): numeric._frombuffer for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    **{("builtins", t.__name__): t for t in (set, frozenset, bytearray, complex)},
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside ALLOWED; nothing it names was called."""


class DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(
                f"{self.path}: refused to unpickle: it calls {module}.{name}, which a feature pickle never holds "
                "(only numpy arrays, dtypes, scalars and plain containers are read); nothing in the file was run. "
                "Fix: get the pickle from a source you trust (MMSA's released aligned_50.pkl / unaligned_50.pkl, "
                "or write it with MMSA-FET)") from None


def load_data_only(path: Path):
    """The object pickled in path, provided it is made of numpy arrays, scalars and plain containers only."""
    with open(path, "rb") as f:
        return DataOnlyUnpickler(f, path).load()
