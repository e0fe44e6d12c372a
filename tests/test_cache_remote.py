"""Sharing a cache: read-only over plain HTTP and from S3, against real servers on 127.0.0.1."""
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

import synthetic_cache as sc
from egmf.cache.inspect import info, verify
from egmf.cache.reader import Cache


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_store(tmp_path) -> Path:
    sc.write(tmp_path / "stores" / "synthetic", n=14)
    return tmp_path / "stores" / "synthetic"


def _assert_same(remote: Cache, local: Cache):
    assert remote.fingerprint == local.fingerprint
    assert remote.meta["text"].tolist() == local.meta["text"].tolist()
    assert remote.labels["emotion"].tolist() == local.labels["emotion"].tolist()
    for m in local.modalities:
        rows = remote.rows("train")
        np.testing.assert_array_equal(remote.features(m, rows)[0], local.features(m, rows)[0])
        np.testing.assert_array_equal(remote.features(m, rows)[1], local.features(m, rows)[1])


def _static_file_server(root: Path):
    """A plain static file server with HTTP Range support, as nginx or any object store has: zarr reads a shard's
    index and chunks by byte range (Python's http.server ignores Range and cannot serve sharded stores)."""
    from flask import Flask, send_from_directory
    from werkzeug.serving import make_server

    app = Flask("cache-share")
    app.add_url_rule("/<path:name>", view_func=lambda name: send_from_directory(root, name, conditional=True))
    return make_server("127.0.0.1", _free_port(), app, threaded=True)


def test_read_over_plain_http(local_store):
    server = _static_file_server(local_store.parent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/synthetic"
        remote = Cache.open(url)
        _assert_same(remote, Cache.open(local_store))
        assert verify(remote, progress=False).ok
        assert info(remote)["rows"] == 14
    finally:
        server.shutdown()


def test_read_from_s3(local_store, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    import boto3

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="team-caches")
        for f in local_store.rglob("*"):
            if f.is_file():
                s3.upload_file(str(f), "team-caches", f"synthetic/{f.relative_to(local_store)}")
        options = {"endpoint_url": endpoint, "key": "test", "secret": "test", "anon": False}
        remote = Cache.open("s3://team-caches/synthetic", storage_options=options)
        _assert_same(remote, Cache.open(local_store))
        assert verify(remote, progress=False).ok
        assert info(remote)["size_bytes"] > 0  # the bucket listed with the options the cache was opened with
    finally:
        server.stop()
