"""The streaming reader: windows equal the source bytes, shuffles per epoch, resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megastride.data_shards import StoreError, build_loader, eval_windows, open_store, write_bytes_store, write_image_store
from megastride.data_shards import writing

N, L = 60_000, 1000


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    """Random bytes in two files, written with tiny chunks/shards so windows cross shard bounds."""
    root = tmp_path_factory.mktemp("reader")
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, N, dtype=np.uint8)
    (root / "a.bin").write_bytes(data[:25_000].tobytes())
    (root / "b.bin").write_bytes(data[25_000:].tobytes())
    mp = pytest.MonkeyPatch()
    mp.setattr(writing, "CHUNK_BYTES", 512)
    mp.setattr(writing, "SHARD_BYTES", 8192)
    out = write_bytes_store([str(root / "a.bin"), str(root / "b.bin")], root / "s.zarr", valid_fraction=0.1, progress=False)
    mp.undo()
    return out, root


def _train_bytes(root):
    """The training split computed independently: a memmap over the source files."""
    a = np.memmap(root / "a.bin", dtype=np.uint8, mode="r")
    b = np.memmap(root / "b.bin", dtype=np.uint8, mode="r")
    return np.concatenate([a, b])[: N - round(N * 0.1)]


def _find(src: bytes, window: np.ndarray) -> int:
    at = src.find(window.tobytes())
    assert at >= 0, "window is not a substring of the training bytes"
    return at


def test_windows_are_source_bytes_and_an_epoch_covers_the_grid(text_store):
    """Each row is L+1 consecutive training bytes; one epoch's starts are off + k*L for all k."""
    out, root = text_store
    src = _train_bytes(root).tobytes()
    loader = build_loader(out, seq_len=L, micro_batch_size=4, seed=5)
    units = loader.units_per_epoch
    assert units == (len(src) - L) // L
    starts = []
    while len(starts) < units:
        x = next(loader)
        assert x.shape == (4, L + 1) and str(x.dtype) == "torch.uint8"
        starts += [_find(src, row.numpy()) for row in x]
    loader.close()
    epoch0 = sorted(starts[:units])
    off = epoch0[0]
    assert off < L and epoch0 == [off + L * k for k in range(units)]
    assert starts[:units] != epoch0  # shuffled, not in order
    assert loader.epoch == len(starts) // units == 1


def _sequence(out, world, batch, steps, state=None, workers=0, read_threads=2):
    """Windows seen by all ranks, in global order, for ``steps`` global steps; and the final state."""
    loaders = [build_loader(out, seq_len=L, micro_batch_size=batch, seed=11, rank=r, world_size=world, num_workers=workers,
                            read_threads=read_threads)
               for r in range(world)]
    for ld in loaders:
        if state is not None:
            ld.load_state_dict(json.loads(json.dumps(state)))
    rows = []
    for _ in range(steps):
        for ld in loaders:
            rows += [r.numpy().tobytes() for r in next(ld)]
    states = [ld.state_dict() for ld in loaders]
    for ld in loaders:
        ld.close()
    assert all(s == states[0] for s in states)
    return rows, states[0]


def test_resume_is_exact_also_with_another_world_size(text_store):
    """Stop after some steps, resume from state_dict on 3 ranks instead of 2: same sequence."""
    out, _ = text_store
    reference, _ = _sequence(out, world=1, batch=1, steps=130)  # crosses into epoch 2
    first, state = _sequence(out, world=2, batch=3, steps=9)
    assert state["position"] == 54
    second, state2 = _sequence(out, world=3, batch=2, steps=12, state=state)
    assert first + second == reference[: 54 + 72]
    assert state2["position"] == 126


def test_state_dict_counts_consumed_batches_not_prefetched(text_store):
    """Prefetched but unconsumed batches are not counted: resume repeats none and skips none."""
    out, _ = text_store
    ld = build_loader(out, seq_len=L, micro_batch_size=2, seed=11, prefetch=4)
    a = [next(ld) for _ in range(3)]
    state = ld.state_dict()
    b = next(ld)
    ld.load_state_dict(state)
    assert (next(ld) == b).all()
    ld.close()
    assert state["position"] == 6 and len(json.dumps(state)) < 200 and len(a) == 3


def test_read_threads_keep_the_order_and_resume(text_store):
    """Batches read 1, 2 or 5 at a time come out in the same order, across an epoch boundary and a
    resume; a bad read_threads is refused."""
    out, _ = text_store
    one, state1 = _sequence(out, world=2, batch=3, steps=25, read_threads=1)
    for threads in (2, 5):
        many, state = _sequence(out, world=2, batch=3, steps=25, read_threads=threads)
        assert many == one and state == state1
    first, state = _sequence(out, world=1, batch=2, steps=7, read_threads=5)
    second, _ = _sequence(out, world=1, batch=2, steps=8, state=state, read_threads=3)
    assert first + second == _sequence(out, world=1, batch=2, steps=15, read_threads=1)[0]
    with pytest.raises(ValueError, match="read_threads"):
        build_loader(out, seq_len=L, read_threads=0)


def test_load_state_dict_refuses_another_seed_or_length(text_store):
    """A state from another seed or seq_len is refused with a message naming the key."""
    out, _ = text_store
    ld = build_loader(out, seq_len=L, micro_batch_size=1, seed=1)
    with pytest.raises(ValueError, match="seed"):
        ld.load_state_dict({**ld.state_dict(), "seed": 2})


def test_two_spawned_workers_give_the_same_stream(text_store):
    """num_workers=2 (forkserver/spawn) yields exactly the single-process sequence."""
    out, _ = text_store
    reference, _ = _sequence(out, world=2, batch=2, steps=5)
    with_workers, state = _sequence(out, world=2, batch=2, steps=5, workers=2)
    assert with_workers == reference and state["position"] == 20


def test_worker_processes_outlive_a_ctrl_c_to_the_group(text_store):
    """Ctrl-C in a terminal reaches the data workers too; they leave it to the trainer (which stops at the
    step's end and saves), so the batches after it still come, the same as without the signal."""
    import os
    import signal as sig

    out, _ = text_store
    reference, _ = _sequence(out, world=1, batch=2, steps=4)
    ld = build_loader(out, seq_len=L, micro_batch_size=2, seed=11, num_workers=1)
    got = [r.numpy().tobytes() for r in next(ld)]
    workers = ld._it._workers
    assert workers and all(w.is_alive() for w in workers)
    for w in workers:
        os.kill(w.pid, sig.SIGINT)
        os.kill(w.pid, sig.SIGTERM)
    got += [r.numpy().tobytes() for _ in range(3) for r in next(ld)]
    assert all(w.is_alive() for w in workers)
    ld.close()
    assert got == reference


def test_eval_windows_are_contiguous_and_rank_independent(text_store):
    """Eval windows are [kL, kL+L+1) of the valid split; any world size reads the same set."""
    out, _ = text_store
    valid = np.asarray(open_store(out).array("valid")[:])
    assert len(valid) == 6000
    whole = [x.numpy()[0] for x in eval_windows(out, seq_len=L)]
    assert len(whole) == (6000 - 1) // L
    for k, w in enumerate(whole):
        np.testing.assert_array_equal(w, valid[k * L:k * L + L + 1])
    split3 = [x.numpy()[0].tobytes() for r in range(3) for x in eval_windows(out, seq_len=L, rank=r, world_size=3)]
    assert sorted(split3) == sorted(w.tobytes() for w in whole)
    assert len(list(eval_windows(out, seq_len=L, max_windows=2))) == 2


def test_seq_len_too_long_names_both_numbers(text_store):
    """A window longer than the split is a StoreError naming the window and the split size."""
    out, _ = text_store
    with pytest.raises(StoreError, match=r"seq_len\+1 = 6001 bytes does not fit in split 'valid' of 6000 bytes"):
        list(eval_windows(out, split="valid", seq_len=6000))
    with pytest.raises(StoreError, match="no split 'test'"):
        build_loader(out, split="test", seq_len=10)
    with pytest.raises(StoreError, match="modality is 'bytes' but the model config expects 'image'"):
        build_loader(out, seq_len=10, modality="image")


def test_image_loader_yields_each_sample_once_per_epoch(tmp_path):
    """Image items are a 0 byte then H*W*C pixels; an epoch visits every image exactly once."""
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (23, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", imgs)
    out = write_image_store([str(tmp_path / "x.npy")], tmp_path / "i.zarr", progress=False)
    with pytest.raises(StoreError, match="must equal an image's H\\*W\\*C = 4\\*4\\*3 = 48"):
        build_loader(out, seq_len=47)
    ld = build_loader(out, seq_len=48, micro_batch_size=5, seed=0)
    rows = np.concatenate([next(ld).numpy() for _ in range(10)])  # 50 samples: 2 epochs + 4
    ld.close()
    assert (rows[:, 0] == 0).all()
    flat = {imgs[i].tobytes(): i for i in range(23)}
    idx = [flat[r[1:].tobytes()] for r in rows]
    assert sorted(idx[:23]) == list(range(23)) and sorted(idx[23:46]) == list(range(23))
    assert idx[:23] != idx[23:46]
    ev = [x.numpy()[0] for x in eval_windows(out, split="train", seq_len=48)]
    assert len(ev) == 23 and all((ev[i][1:] == imgs[i].reshape(-1)).all() for i in range(23))


@pytest.mark.parametrize("batched", [True, False], ids=["batched-zstd", "per-chunk"])
def test_fast_shard_reader_matches_zarr(text_store, batched):
    """The direct shard reader returns exactly what zarr's own indexing returns, across shards,
    with zstd decoded in one multi-frame call or chunk by chunk on the thread pool."""
    out, _ = text_store
    store = open_store(out)
    reader = store.chunk_reader("train")
    assert reader is not None and reader.batched  # the default store codec takes the batched path
    reader.batched = batched
    arr = store.array("train")
    starts = [0, 511, 512, 8191, 8000, 20_000, store.split_sizes["train"] - 3001]
    rows = store.read_rows("train", starts, 3001)
    for s, row in zip(starts, rows):
        np.testing.assert_array_equal(row, arr[s:s + 3001])
    with pytest.raises(ValueError, match="outside the split"):
        store.read_rows("train", [store.split_sizes["train"] - 10], 11)
