"""Sampling an image model: the context is laid out as the loader feeds training (a 0 byte, then the image in
raster order), prompt and continuation fit one image, and `megastride sample --out *.png` writes the picture."""

import numpy as np
import pytest
import torch
from PIL import Image

from megastride.data_shards import eval_windows, write_image_store
from megastride.engine.config import ConfigError, load_config
from megastride.engine.inference import sample
from megastride.engine.model import SparseTransformer

from test_cli_errors import one_line, run, trained  # noqa: F401 - trained: a fixture used here
from test_run_dir import fake_run

SHAPE = (8, 16, 1)  # 128 bytes: tiny_config's seq_len


def _model(tiny_config, **model) -> SparseTransformer:
    torch.manual_seed(0)
    cfg = load_config(tiny_config(model={"embedding": {"kind": "image", "image_shape": list(SHAPE)}, **model}))
    return SparseTransformer(cfg.model).eval()


def test_greedy_bytes_are_the_training_forwards_argmax_at_the_prompts_end(tiny_config, tmp_path):
    """The next byte after an image's first k bytes is the argmax of the training forward's logits at position k,
    its input the loader's own evaluation window (0, then the image): for k = 0 (no prompt) and prompts inside
    the first row, across rows and one byte short of the whole image."""
    model = _model(tiny_config)
    pixels = np.random.default_rng(1).integers(0, 256, (3, *SHAPE), dtype=np.uint8)
    np.save(tmp_path / "im.npy", pixels)
    store = write_image_store([str(tmp_path / "im.npy")], tmp_path / "im.zarr", valid_fraction=0.34, progress=False)
    window = next(iter(eval_windows(store, "valid", 128))).long()  # (1, 129): the 0 byte, then the image
    image = bytes(window[0, 1:].tolist())
    assert window[0, 0] == 0 and image == pixels[-1].tobytes()
    with torch.no_grad():
        logits = model(window[:, :-1])[0]  # (128, 256): position k predicts image byte k
    for k in (0, 5, 16, 77, 127):
        assert sample(model, image[:k], 1, temperature=0) == bytes([int(logits[k].argmax())]), k


def test_prompt_and_continuation_fit_one_image(tiny_config):
    model = _model(tiny_config)
    assert len(sample(model, bytes(100), 28, temperature=0)) == 28
    with pytest.raises(ConfigError, match=r"an image of 8x16x1 holds 128 bytes: the prompt's 100 and 29 more do "
                                          r"not fit \(at most 28 more\)"):
        sample(model, bytes(100), 29)


def test_byte_models_continue_the_prompt_as_the_window_it_is(tiny_config):
    """A byte model's windows start anywhere in the stream: its context is the prompt itself, no 0 before it."""
    torch.manual_seed(0)
    model = SparseTransformer(load_config(tiny_config()).model).eval()
    prompt = b"the quick brown fox"  # 19 bytes; the forward takes whole 32-token blocks: padded after (causal)
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + [7] * 13]))[0, len(prompt) - 1]
    assert sample(model, prompt, 1, temperature=0) == bytes([int(logits.argmax())])


@pytest.fixture
def image_run(tiny_config, tmp_path):
    """``make(shape)``: a run folder of an image model of ``shape``, as training leaves it."""

    def make(shape=SHAPE):
        cfg = load_config(tiny_config(model={"embedding": {"kind": "image", "image_shape": list(shape)}}))
        return fake_run(tmp_path / f"run{'x'.join(map(str, shape))}", cfg)

    return make


def test_sample_writes_the_completed_image_as_a_png(image_run, tmp_path, capsys):
    """The top rows from --prompt-file, the rest sampled (--bytes left out: the rest of the image), in a PNG of the
    model's shape whose first rows are the prompt's and whose other bytes are the raw --out's."""
    run_dir = image_run()
    top = np.random.default_rng(2).integers(0, 256, (3, 16), dtype=np.uint8)
    (tmp_path / "top.bin").write_bytes(top.tobytes())
    common = [str(run_dir), "--prompt-file", str(tmp_path / "top.bin"), "--seed", "4"]
    code, err = run("sample", [*common, "--out", str(tmp_path / "done.png")], capsys)
    assert code == 0, err
    picture = np.array(Image.open(tmp_path / "done.png"))
    assert picture.shape == SHAPE[:2] and picture.dtype == np.uint8
    assert np.array_equal(picture[:3], top)
    code, err = run("sample", [*common, "--out", str(tmp_path / "rest.bin")], capsys)
    assert code == 0, err
    assert (tmp_path / "rest.bin").read_bytes() == picture[3:].tobytes()  # 80 bytes: the rest of the image


def test_a_picture_prompt_gives_its_top_rows(image_run, tmp_path, capsys):
    """A .png of the model's shape as --prompt-file: its top rows (half by default, or --prompt-rows) are the
    prompt, as the same rows given as raw bytes are, and the PNG out keeps them."""
    run_dir = image_run()
    picture = np.random.default_rng(3).integers(0, 256, SHAPE[:2], dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "in.png")
    (tmp_path / "top3.bin").write_bytes(picture[:3].tobytes())
    outs = {}
    for name, argv in (("half", ["--prompt-file", str(tmp_path / "in.png")]),
                       ("rows3", ["--prompt-file", str(tmp_path / "in.png"), "--prompt-rows", "3"]),
                       ("raw3", ["--prompt-file", str(tmp_path / "top3.bin")])):
        code, err = run("sample", [str(run_dir), *argv, "--seed", "5", "--out", str(tmp_path / f"{name}.png")], capsys)
        assert code == 0, err
        outs[name] = np.array(Image.open(tmp_path / f"{name}.png"))
    assert np.array_equal(outs["half"][:4], picture[:4]) and not np.array_equal(outs["half"][4:], picture[4:])
    assert np.array_equal(outs["rows3"], outs["raw3"]) and np.array_equal(outs["rows3"][:3], picture[:3])


@pytest.mark.parametrize("shape, argv, message", [
    (SHAPE, ["--bytes", "10", "--out", "{dir}/a.png"],
     "--out *.png needs the whole image: the prompt's 0 bytes and --bytes 10 make 10 of 128 (leave --bytes out"),
    (SHAPE, ["--prompt-file", "{dir}/full.bin"], "the prompt's 128 bytes already fill the model's 128-byte image"),
    (SHAPE, ["--prompt-file", "{dir}/full.bin", "--bytes", "1"],
     "an image of 8x16x1 holds 128 bytes: the prompt's 128 and 1 more do not fit (at most 0 more)"),
    ((8, 8, 2), ["--out", "{dir}/a.png"], "--out *.png: images of 2 channels are not a PNG (1, 3 or 4)"),
    (SHAPE, ["--prompt-file", "{dir}/wide.png"], "--prompt-file {dir}/wide.png is 8x32x1; the model reads 8x16x1"),
    (SHAPE, ["--prompt-file", "{dir}/pic.png", "--prompt-rows", "8"], "--prompt-rows must be from 1 to 7 (the picture "
                                                                      "has 8 rows), got 8"),
    (SHAPE, ["--prompt-file", "{dir}/full.bin", "--prompt-rows", "2"], "--prompt-rows takes the top rows of a"),
    (SHAPE, ["--prompt-file", "{dir}/broken.png"], "{dir}/broken.png: not a readable image"),
    ((8, 8, 2), ["--prompt-file", "{dir}/pic.png"], "a picture prompt is grey or RGB; this model's images have 2"),
])
def test_sample_image_errors(shape, argv, message, image_run, tmp_path, capsys):
    (tmp_path / "full.bin").write_bytes(bytes(128))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((8, 32), np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(tmp_path / "pic.png")
    code, err = run("sample", [str(image_run(shape)), *[a.format(dir=tmp_path) for a in argv]], capsys)
    one_line(code, err, "sample", message.format(dir=tmp_path))
    assert not (tmp_path / "a.png").exists()


def test_pictures_are_for_image_models(trained, tmp_path, capsys):
    """A byte model: a .png --out is refused, --prompt-rows too, and a .png --prompt-file is its raw bytes."""
    code, err = run("sample", [str(trained), "--out", str(tmp_path / "a.png")], capsys)
    one_line(code, err, "sample", "--out *.png writes an image model's samples; this run's model reads bytes")
    assert not (tmp_path / "a.png").exists()
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(tmp_path / "pic.png")
    code, err = run("sample", [str(trained), "--prompt-file", str(tmp_path / "pic.png"), "--prompt-rows", "2"], capsys)
    one_line(code, err, "sample", "--prompt-rows is for an image model; this run's model reads bytes")
    code, err = run("sample", [str(trained), "--prompt-file", str(tmp_path / "pic.png"), "--bytes", "3",
                               "--out", str(tmp_path / "a.bin")], capsys)
    assert code == 0 and len((tmp_path / "a.bin").read_bytes()) == 3, err
