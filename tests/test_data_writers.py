"""Writers and `megastride prepare`: every input format, on small real-format files."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from megastride.data_shards import (STDLIB_SOURCE, PrepareError, StoreError, mulaw_decode, mulaw_encode,
                                    open_store, write_audio_store, write_bytes_store, write_image_store)
from megastride.data_shards.write_audio import resample, resampled_length
from megastride.data_shards.writing import stdlib_files
from megastride.launch import prepare


def _text_tree(root):
    (root / "sub").mkdir(parents=True)
    files = {"b.txt": b"bravo " * 300, "a.txt": b"alpha\n" * 500, "sub/c.md": bytes(range(256)) * 7}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def _all(store, split):
    return np.asarray(store.array(split)[:])


def test_text_from_directory_concatenates_sorted_files_and_cuts_tail(tmp_path):
    """A directory's files are concatenated in sorted order; valid/test are the stream's tail."""
    files = _text_tree(tmp_path / "src")
    out = write_bytes_store([str(tmp_path / "src")], tmp_path / "t.zarr", valid_fraction=0.1, test_fraction=0.05, progress=False)
    s = open_store(out)
    expect = b"".join(files[k] for k in sorted(files))
    n = len(expect)
    assert s.modality == "bytes" and s.sample_shape is None
    assert s.split_sizes == {"train": n - round(n * 0.1) - round(n * 0.05), "valid": round(n * 0.1), "test": round(n * 0.05)}
    got = np.concatenate([_all(s, k) for k in ("train", "valid", "test")]).tobytes()
    assert got == expect
    assert [src["path"].rsplit("/", 1)[-1] for src in s.sources] == ["a.txt", "b.txt", "c.md"]
    import hashlib
    assert s.sources[1]["sha256"] == hashlib.sha256(files["b.txt"]).hexdigest()
    assert s.meta["format_version"] == 1 and s.meta["complete"] is True


def test_text_from_glob_and_files_and_tagged_split(tmp_path):
    """Globs expand sorted; a `valid=PATH` source becomes the whole valid split."""
    files = _text_tree(tmp_path / "src")
    out = write_bytes_store([str(tmp_path / "src" / "*.txt"), f"valid={tmp_path / 'src' / 'sub' / 'c.md'}"],
                            tmp_path / "g.zarr", valid_fraction=0.5, progress=False)
    s = open_store(out)
    assert _all(s, "train").tobytes() == files["a.txt"] + files["b.txt"]
    assert _all(s, "valid").tobytes() == files["sub/c.md"]
    segs = s.split("train").segments
    assert segs == [[0, 0, len(files["a.txt"])], [1, len(files["a.txt"]), len(files["b.txt"])]]


def test_a_walk_leaves_out_stores_and_a_store_named_as_a_source_is_refused(tmp_path):
    """A folder holding an earlier store (its zstd chunks) gives only its own files' bytes, also when the new
    store is written inside it; the store named as a source is a one-line error, and nothing is written."""
    files = _text_tree(tmp_path / "src")
    write_bytes_store([str(tmp_path / "src" / "a.txt")], tmp_path / "src" / "sub" / "old.zarr", progress=False)
    out = write_bytes_store([str(tmp_path / "src")], tmp_path / "src" / "new.zarr", valid_fraction=0, progress=False)
    assert _all(open_store(out), "train").tobytes() == b"".join(files[k] for k in sorted(files))
    again = write_bytes_store([str(tmp_path / "src")], tmp_path / "src" / "new.zarr", valid_fraction=0, progress=False,
                              force=True)  # the store being replaced is not read either
    assert _all(open_store(again), "train").tobytes() == b"".join(files[k] for k in sorted(files))
    with pytest.raises(PrepareError, match=r"old.zarr' is a zarr store \(compressed chunks, not input files\)"):
        write_bytes_store([str(tmp_path / "src" / "sub" / "old.zarr")], tmp_path / "x.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_stdlib_source_is_real_python_text(tmp_path):
    """@stdlib lists the running Python's own .py files in a fixed order, without site-packages."""
    files = stdlib_files()
    names = [d for _, d in files]
    assert len(files) > 500 and names == sorted(names)
    assert "stdlib/os.py" in names and not any("site-packages" in p for p, _ in files)
    assert stdlib_files() == files


def test_user_errors_are_prepare_errors(tmp_path):
    """Missing source, empty glob, bad fractions: PrepareError with a one-line message."""
    with pytest.raises(PrepareError, match="does not exist"):
        write_bytes_store([str(tmp_path / "nope")], tmp_path / "x.zarr", progress=False)
    with pytest.raises(PrepareError, match="matches no files"):
        write_bytes_store([str(tmp_path / "*.zzz")], tmp_path / "x.zarr", progress=False)
    (tmp_path / "f").write_bytes(b"abc")
    with pytest.raises(PrepareError, match="fraction"):
        write_bytes_store([str(tmp_path / "f")], tmp_path / "x.zarr", valid_fraction=1.5, progress=False)
    assert not os.path.exists(tmp_path / "x.zarr")


def test_existing_store_is_refused_without_force_and_replaced_with_it(tmp_path):
    """A complete store is never overwritten silently; --force replaces it atomically."""
    (tmp_path / "f").write_bytes(b"one" * 100)
    out = write_bytes_store([str(tmp_path / "f")], tmp_path / "s.zarr", progress=False)
    with pytest.raises(PrepareError, match="already exists .*--force"):
        write_bytes_store([str(tmp_path / "f")], out, progress=False)
    (tmp_path / "f").write_bytes(b"two" * 50)
    write_bytes_store([str(tmp_path / "f")], out, force=True, valid_fraction=0, progress=False)
    assert _all(open_store(out), "train").tobytes() == b"two" * 50
    assert sorted(os.listdir(tmp_path)) == ["f", "s.zarr"]  # no staging or old folders left


def test_force_replaces_stores_only_never_a_users_files(tmp_path, monkeypatch):
    """--force replaces a store, never a folder of other files or a file (they stay as they were); an empty
    --out (which would name the working directory) and a parent that is a file are refused before any work;
    an empty folder or a store prepare could not finish (zarr.json without our attributes) may be replaced."""
    (tmp_path / "f").write_bytes(b"abc" * 100)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    (tmp_path / "file.txt").write_text("mine too")
    for out, message in ((notes, "not a store \\(a folder of other files\\).*replaces stores only"),
                         (tmp_path / "file.txt", "not a store \\(a file\\)"),
                         ("", "output path is empty"),
                         (tmp_path / "file.txt" / "s.zarr", "file.txt is a file, not a folder")):
        with pytest.raises(PrepareError, match=message):
            write_bytes_store([str(tmp_path / "f")], out, force=True, progress=False)
    assert (notes / "todo.txt").read_text() == "mine" and (tmp_path / "file.txt").read_text() == "mine too"
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "zarr.json").write_text("{")
    for out in (tmp_path / "empty", tmp_path / "broken"):
        write_bytes_store([str(tmp_path / "f")], out, force=True, valid_fraction=0, progress=False)
        assert _all(open_store(str(out)), "train").tobytes() == b"abc" * 100
    monkeypatch.chdir(notes)
    with pytest.raises(PrepareError, match="output path is empty"):
        write_bytes_store([str(tmp_path / "f")], "", force=True, progress=False)
    assert os.listdir(notes) == ["todo.txt"]


def test_interrupted_prepare_leaves_no_complete_store(tmp_path, monkeypatch):
    """An exception mid-write leaves neither the output nor its staging folder behind."""
    (tmp_path / "f").write_bytes(b"x" * 1000)
    from megastride.data_shards import writing

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writing, "_commit", boom)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_store([str(tmp_path / "f")], tmp_path / "s.zarr", progress=False)
    assert os.listdir(tmp_path) == ["f"]


def test_a_staged_store_is_refused_by_readers(tmp_path, monkeypatch):
    """A store whose attributes are not marked complete (killed prepare) does not open."""
    (tmp_path / "f").write_bytes(b"x" * 1000)
    from megastride.data_shards import writing

    def keep_stage(stage, out, meta):
        os.rename(stage, out)  # what a kill -9 between writing and marking complete would leave

    monkeypatch.setattr(writing, "_commit", keep_stage)
    out = write_bytes_store([str(tmp_path / "f")], tmp_path / "s.zarr", progress=False)
    with pytest.raises(StoreError, match="incomplete store"):
        open_store(out)


def _write_idx(path, images, gz):
    head = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", *images.shape)
    data = head + images.tobytes()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def test_images_from_idx_gz_with_tagged_splits(tmp_path):
    """IDX (gzipped and raw, as Fashion-MNIST ships) -> (N, 28, 28, 1) with train/test splits."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (37, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    train[3] = 0  # an all-zero image must still be stored (write_empty_chunks)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train, gz=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test, gz=False)
    out = write_image_store([f"train={tmp_path / 'train-images-idx3-ubyte.gz'}", f"test={tmp_path / 't10k-images-idx3-ubyte'}"],
                            tmp_path / "fm.zarr", valid_fraction=0.1, progress=False)
    s = open_store(out)
    assert s.modality == "image" and s.sample_shape == (28, 28, 1)
    assert s.split_sizes == {"train": 33, "valid": 4, "test": 5}
    np.testing.assert_array_equal(_all(s, "train")[..., 0], train[:33])
    np.testing.assert_array_equal(_all(s, "valid")[..., 0], train[33:])
    np.testing.assert_array_equal(_all(s, "test")[..., 0], test)


def test_bad_idx_header_is_one_line_error(tmp_path):
    """A file that is not IDX of unsigned bytes is refused with its name."""
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34\x08\x03" + b"\0" * 12)
    with pytest.raises(PrepareError, match=r"bad\.idx: not an IDX file"):
        write_image_store([str(tmp_path / "bad.idx")], tmp_path / "x.zarr", progress=False)
    (tmp_path / "i32.idx").write_bytes(b"\0\0\x0c\x03" + b"\0" * 12)
    with pytest.raises(PrepareError, match="not unsigned byte"):
        write_image_store([str(tmp_path / "i32.idx")], tmp_path / "x.zarr", progress=False)


def test_images_from_npy_and_png_folder(tmp_path):
    """.npy (N,H,W,C) and a folder of PNG/JPEG files give the same pixels (PNG is lossless)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", imgs[:4])
    (tmp_path / "png").mkdir()
    for i in (4, 5):
        Image.fromarray(imgs[i]).save(tmp_path / "png" / f"{i:03d}.png")
    smooth = np.broadcast_to(np.linspace(0, 255, 8, dtype=np.uint8)[None, :, None], (8, 8, 3)).copy()
    Image.fromarray(smooth).save(tmp_path / "png" / "zz.jpg", quality=95)
    out = write_image_store([str(tmp_path / "a.npy"), str(tmp_path / "png")], tmp_path / "c.zarr", progress=False)
    got = _all(open_store(out), "train")
    assert got.shape == (7, 8, 8, 3)
    np.testing.assert_array_equal(got[:6], imgs)
    assert np.abs(got[6].astype(int) - smooth).max() < 12  # JPEG is lossy but the same picture
    Image.fromarray(imgs[0, :4]).save(tmp_path / "png" / "small.png")
    with pytest.raises(PrepareError, match="differs"):
        write_image_store([str(tmp_path / "png")], tmp_path / "d.zarr", progress=False)


def test_mulaw_matches_the_g711_formula():
    """mu-law codes follow sign(x) ln(1+255|x|)/ln 256, and decode within half a step."""
    x = np.linspace(-1, 1, 10001)
    codes = mulaw_encode(x)
    y = np.sign(x) * np.log(1 + 255 * np.abs(x)) / np.log(256)
    np.testing.assert_array_equal(codes, np.round((y + 1) / 2 * 255).astype(np.uint8))
    assert codes[0] == 0 and codes[-1] == 255
    back = mulaw_decode(codes)
    # |dy| <= 1/255 (half a code), |dx/dy| = ln256 (|x| + 1/255), largest at the larger endpoint
    step = np.log(256) / 255 * (np.maximum(np.abs(x), np.abs(back)) + 1 / 255)
    assert np.all(np.abs(back - x) <= step + 1e-6)


def test_resample_keeps_a_tone_and_cuts_above_nyquist():
    """A 440 Hz tone survives 44.1k->12k; a 9 kHz tone (above 6k Nyquist) is removed."""
    t = np.arange(44100) / 44100
    low = resample(np.sin(2 * np.pi * 440 * t), 44100, 12000)
    assert len(low) == resampled_length(44100, 44100, 12000) == 12000
    ref = np.sin(2 * np.pi * 440 * np.arange(12000) / 12000)
    assert np.abs(low[500:-500] - ref[500:-500]).max() < 0.02
    high = resample(np.sin(2 * np.pi * 9000 * t), 44100, 12000)
    assert np.sqrt(np.mean(high[500:-500] ** 2)) < 0.01


@pytest.mark.parametrize("fmt,sub", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_audio_tracks_are_resampled_mulaw_with_boundaries(tmp_path, fmt, sub):
    """WAV/FLAC/Ogg tracks decode, mix to mono, resample to 12 kHz and mu-law encode in order."""
    sf = pytest.importorskip("soundfile")
    rate = 24000
    t = np.arange(rate // 2) / rate
    tracks = {"b": 0.5 * np.sin(2 * np.pi * 300 * t), "a": 0.25 * np.sin(2 * np.pi * 500 * t[: rate // 4])}
    for name, x in tracks.items():
        sf.write(tmp_path / f"{name}.{fmt.lower()}", np.stack([x, x], 1), rate, format=fmt, subtype=sub)
    out = write_audio_store([str(tmp_path)], tmp_path / "m.zarr", valid_fraction=0.0, progress=False)
    s = open_store(out)
    assert s.modality == "audio" and s.sample_rate == 12000
    assert s.split("train").segments == [[0, 0, 3000], [1, 3000, 6000]]  # a first (sorted), then b
    got = mulaw_decode(_all(s, "train"))
    expect = np.concatenate([tracks["a"][::2], tracks["b"][::2]])
    tol = 0.05 if fmt == "OGG" else 0.02
    inner = np.r_[200:2800, 3200:8800]  # away from the track edges (periodic resampling wraps)
    assert np.abs(got[inner] - expect[inner]).max() < tol


def test_prepare_cli_writes_and_reports_errors_in_one_line(tmp_path, capsys):
    """`megastride prepare text` writes a store; user errors exit 2 with one line, no traceback."""
    (tmp_path / "f.txt").write_bytes(b"hello world\n" * 1000)
    assert prepare.main(["text", str(tmp_path / "f.txt"), "--out", str(tmp_path / "s.zarr"), "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert prepare.main(["text", str(tmp_path / "f.txt"), "--out", str(tmp_path / "s.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("megastride prepare: error: ") and err.count("\n") == 1 and "--force" in err
    assert prepare.main(["images", str(tmp_path / "f.txt"), "--out", str(tmp_path / "i.zarr"), "--quiet"]) == 2
    assert "not an IDX file" in capsys.readouterr().err
    assert prepare.main(["info", str(tmp_path / "s.zarr")]) == 0
    assert '"modality": "bytes"' in capsys.readouterr().out


def test_audio_frames_fit_the_planned_length():
    """A decoder that yields fewer or more frames than the header is trimmed or padded with silence."""
    import numpy as np

    from megastride.data_shards.write_audio import fit_frames

    x = np.arange(5, dtype=np.float32)
    assert fit_frames(x, 3).tolist() == [0, 1, 2]
    assert fit_frames(x, 7).tolist() == [0, 1, 2, 3, 4, 0, 0]
