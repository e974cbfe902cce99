"""Integrity: a missing, truncated or corrupt chunk, a wrong version or modality -> one-line StoreError."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from megastride.data_shards import StoreError, build_loader, eval_windows, open_store, write_bytes_store
from megastride.data_shards import writing


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A 3-shard bytes store (train/c/0..2) of random bytes."""
    monkeypatch.setattr(writing, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(writing, "SHARD_BYTES", 8192)
    (tmp_path / "f").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    return write_bytes_store([str(tmp_path / "f")], tmp_path / "s.zarr", valid_fraction=0, progress=False)


def _one_line_error(fn, match):
    with pytest.raises(StoreError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_chunk_is_named(store):
    """Deleting a shard (zarr would read it as zeros) fails at open, naming the chunk key."""
    os.remove(os.path.join(store, "train", "c", "1"))
    msg = _one_line_error(lambda: open_store(store), "missing chunk train/c/1")
    assert store in msg


def test_truncated_chunk_is_named(store):
    """A shard cut short fails at open with its recorded and actual sizes."""
    path = os.path.join(store, "train", "c", "2")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-7])
    _one_line_error(lambda: build_loader(store, seq_len=100), f"truncated chunk train/c/2: {len(data) - 7} bytes, expected {len(data)}")


@pytest.mark.parametrize("where", [10, -30])
def test_corrupt_chunk_is_named_when_read(store, where):
    """A flipped byte in chunk data or in the shard index is caught by crc32c when read."""
    path = os.path.join(store, "train", "c", "1")
    data = bytearray(open(path, "rb").read())
    data[where] ^= 0x5A
    open(path, "wb").write(bytes(data))
    open_store(store)  # same size: only reading finds it
    msg = _one_line_error(lambda: list(eval_windows(store, split="train", seq_len=1000)), "corrupt chunk train/c/")
    assert "train/c/1" in msg and "checksum" in msg.lower()


def test_corrupt_chunk_is_named_by_the_threaded_loader(store):
    """A read thread's error reaches the training loop, named, not a hang or a silent skip."""
    path = os.path.join(store, "train", "c", "1")
    data = bytearray(open(path, "rb").read())
    data[10] ^= 0x5A
    open(path, "wb").write(bytes(data))
    loader = build_loader(store, seq_len=1000, micro_batch_size=4, read_threads=3)

    def drain():
        for _ in range(10_000):  # the shuffled windows reach chunk 1 within an epoch
            next(loader)

    msg = _one_line_error(drain, "corrupt chunk train/c/1")
    assert "checksum" in msg.lower()
    loader.close()


@pytest.mark.parametrize("batched", [True, False], ids=["batched-zstd", "per-chunk"])
def test_chunk_that_passes_its_checksum_but_does_not_decode_is_named(store, batched, monkeypatch):
    """Garbage stored with a valid crc32c (a writer bug, not bit rot) fails in zstd, named by chunk."""
    import google_crc32c

    from megastride.data_shards.fastread import ChunkReader

    path = os.path.join(store, "train", "c", "1")
    data = bytearray(open(path, "rb").read())
    per_shard = 8192 // 1024
    index = np.frombuffer(bytes(data[-(16 * per_shard + 4):-4]), dtype="<u8").reshape(per_shard, 2)
    offset, size = (int(x) for x in index[3])
    data[offset:offset + size - 4] = b"\xff" * (size - 4)
    data[offset + size - 4:offset + size] = google_crc32c.value(bytes(data[offset:offset + size - 4])).to_bytes(4, "little")
    open(path, "wb").write(bytes(data))
    maybe = ChunkReader.maybe

    def pick(*args):
        reader = maybe(*args)
        reader.batched = batched and reader.batched
        return reader

    monkeypatch.setattr(ChunkReader, "maybe", pick)
    msg = _one_line_error(lambda: list(eval_windows(store, split="train", seq_len=1000)), "corrupt chunk train/c/1")
    assert "inner chunk 3 does not decode" in msg


def _edit_attrs(store, **changes):
    path = os.path.join(store, "zarr.json")
    meta = json.load(open(path))
    meta["attributes"]["megastride"].update(changes)
    json.dump(meta, open(path, "w"))


def test_wrong_format_version_and_incomplete_store(store):
    """Another format version or a store not marked complete is refused by name."""
    _edit_attrs(store, format_version=2)
    _one_line_error(lambda: open_store(store), "format version 2, this megastride reads version 1")
    _edit_attrs(store, format_version=1, complete=False)
    _one_line_error(lambda: open_store(store), "incomplete store")


def test_modality_mismatch_and_non_stores(store, tmp_path):
    """A modality other than the model's, a plain zarr group or no store at all: clear errors."""
    _one_line_error(lambda: open_store(store, modality="audio"), "modality is 'bytes' but the model config expects 'audio'")
    _one_line_error(lambda: open_store(tmp_path / "nothing"),
                    re.escape("no store here (nothing at this path; `megastride prepare` writes one)"))
    (tmp_path / "empty").mkdir()  # a folder without zarr.json is not "nothing here"
    _one_line_error(lambda: open_store(tmp_path / "empty"), re.escape("no store here (missing zarr.json"))
    import zarr
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    _one_line_error(lambda: open_store(tmp_path / "plain.zarr"), "not a megastride store")


@pytest.mark.parametrize("splits, message", [
    ("garbage", "corrupt store metadata: splits is a str, not a mapping"),
    ({"train": "x"}, "corrupt store metadata: splits.train.size"),
    ({"train": {"shard_elems": 4, "shard_nbytes": {}}}, "corrupt store metadata: splits.train.size"),
    ({"train": {"size": 10, "shard_elems": 4, "shard_nbytes": "x"}}, "corrupt store metadata: splits.train.shard_nbytes"),
    ({"train": {"size": 10, "shard_elems": 0, "shard_nbytes": {}}}, "splits.train has size 10 and shard_elems 0"),
])
def test_split_metadata_of_the_wrong_shape_is_named(store, splits, message):
    """The store's own attributes edited by hand or damaged: the first split field that is missing or of the
    wrong type is named in one StoreError (was an AttributeError or KeyError from deep in the reader)."""
    path = os.path.join(store, "zarr.json")
    meta = json.load(open(path))
    meta["attributes"]["megastride"]["splits"] = splits
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(StoreError, match=message.replace("(", "\\(")):
        open_store(store, verify=False)
