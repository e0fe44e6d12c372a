"""One extraction run per store at a time.

An advisory lock (flock) on a file beside a local store: the operating system drops it when the holder exits,
however it exits, so a killed run never leaves a store locked. Stores behind URLs have no such primitive; there
the shard-per-writer layout still keeps concurrent runs from interleaving rows within a block.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..cache.layout import is_url
from ..cache.schema import CacheError


@contextlib.contextmanager
def store_lock(url: str):
    if is_url(url):
        yield
        return
    path = Path(f"{str(url).rstrip('/')}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CacheError(f"{url} is being written by {holder}. Fix: wait for that egmf-extract run to finish "
                             "(or stop it); re-running afterwards continues where it stopped") from None
        f.seek(0)
        f.truncate()
        f.write(f"egmf-extract pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
