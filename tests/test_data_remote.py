"""Remote stores through fsspec: an in-memory filesystem and HTTP on loopback read like local ones."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest

from megastride.data_shards import StoreError, build_loader, eval_windows, open_store, write_bytes_store
from megastride.data_shards.remote import serve_directory


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A local bytes store of random data."""
    root = tmp_path_factory.mktemp("remote")
    (root / "f").write_bytes(np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    return write_bytes_store([str(root / "f")], root / "s.zarr", progress=False), root


def _same_stream(url_a, url_b, L=4096):
    a, b = build_loader(url_a, seq_len=L, micro_batch_size=3, seed=2), build_loader(url_b, seq_len=L, micro_batch_size=3, seed=2)
    for _ in range(4):
        assert (next(a) == next(b)).all()
    a.close()
    b.close()
    ea = [x.numpy() for x in eval_windows(url_a, seq_len=L // 2)]
    eb = [x.numpy() for x in eval_windows(url_b, seq_len=L // 2)]
    assert len(ea) == len(eb) > 0 and all((x == y).all() for x, y in zip(ea, eb))


def test_memory_filesystem_store(local):
    """A store copied into fsspec's memory:// filesystem gives the same windows; a lost chunk is named."""
    out, _ = local
    fs = fsspec.filesystem("memory")
    fs.put(out, "/megastride-test/s.zarr", recursive=True)
    url = "memory://megastride-test/s.zarr"
    assert open_store(url).split_sizes == open_store(out).split_sizes
    _same_stream(out, url)
    fs.rm("/megastride-test/s.zarr/train/c/0")
    with pytest.raises(StoreError, match="memory://megastride-test/s.zarr: missing chunk train/c/0"):
        open_store(url)


def test_http_loopback_store(local):
    """Served over HTTP on 127.0.0.1 with byte ranges, the store reads like the local one."""
    pytest.importorskip("aiohttp", reason="fsspec's HTTP filesystem needs aiohttp")
    out, root = local
    base, server = serve_directory(root)
    try:
        _same_stream(out, f"{base}/s.zarr")
        with pytest.raises(StoreError, match="no store here"):
            open_store(f"{base}/missing.zarr")
    finally:
        server.shutdown()
