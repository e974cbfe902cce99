"""Sampling an audio model: a sound file as the prompt is coded as `megastride prepare audio` codes it, and
`--out *.wav` writes the prompt and its continuation as sound at the model's sample rate."""

import wave

import numpy as np
import pytest

from megastride.data_shards import open_store, write_audio_store
from megastride.data_shards.mulaw import mulaw_decode
from megastride.engine.config import load_config

from test_cli_errors import one_line, run, trained  # noqa: F401 - trained: a fixture used here
from test_run_dir import fake_run

sf = pytest.importorskip("soundfile")
RATE = 8000  # the store's; the file is at 11,025 Hz


@pytest.fixture
def audio(tiny_config, tmp_path):
    """(run folder of a byte model on an audio store, the stereo tone file the store was prepared from, store)."""
    t = np.arange(2205) / 11025
    tone = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t)
    sf.write(tmp_path / "tone.wav", np.stack([tone, 0.5 * tone], 1), 11025, subtype="PCM_16")
    store = write_audio_store([str(tmp_path / "tone.wav")], tmp_path / "m.zarr", sample_rate=RATE,
                              valid_fraction=0.0, progress=False)
    cfg = load_config(tiny_config(data={"path": str(store)}))
    return fake_run(tmp_path / "run", cfg), tmp_path / "tone.wav", store


def test_a_sound_prompt_is_the_stores_codes_and_the_wav_holds_them_then_the_continuation(audio, tmp_path, capsys):
    run_dir, tone, store = audio
    codes = open_store(store).read("train", 0, 1600).tobytes()  # 0.2 s at 8 kHz: what training read
    (tmp_path / "codes.bin").write_bytes(codes)
    common = [str(run_dir), "--bytes", "40", "--seed", "6"]
    code, err = run("sample", [*common, "--prompt-file", str(tone), "--out", str(tmp_path / "out.wav")], capsys)
    assert code == 0, err
    with wave.open(str(tmp_path / "out.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, RATE, 1640)
        pcm = np.frombuffer(w.readframes(1640), dtype="<i2")
    expected = np.round(np.clip(mulaw_decode(np.frombuffer(codes, np.uint8)), -1, 1) * 32767)
    assert np.array_equal(pcm[:1600], expected)
    # the continuation is the one the same codes given as raw bytes get
    code, err = run("sample", [*common, "--prompt-file", str(tmp_path / "codes.bin"), "--out", str(tmp_path / "c.bin")],
                    capsys)
    assert code == 0, err
    sampled = np.frombuffer((tmp_path / "c.bin").read_bytes(), np.uint8)
    assert np.array_equal(pcm[1600:], np.round(np.clip(mulaw_decode(sampled), -1, 1) * 32767))


def test_sample_rate_stands_in_for_a_store_that_is_gone(audio, tmp_path, capsys):
    run_dir, tone, store = audio
    import shutil

    code, err = run("sample", [str(run_dir), "--bytes", "4", "--sample-rate", "16000"], capsys)
    one_line(code, err, "sample", f"--sample-rate 16,000 is not the 8,000 Hz of the run's store {store}")
    shutil.rmtree(store)
    argv = [str(run_dir), "--bytes", "4", "--out", str(tmp_path / "o.wav")]
    code, err = run("sample", argv, capsys)
    one_line(code, err, "sample", "--out *.wav needs the run's sample rate, and its store does not open (")
    assert not (tmp_path / "o.wav").exists()
    code, err = run("sample", [*argv, "--sample-rate", "16000"], capsys)
    assert code == 0, err
    with wave.open(str(tmp_path / "o.wav")) as w:
        assert (w.getframerate(), w.getnframes()) == (16000, 4)


def test_sound_is_for_audio_models(trained, tiny_config, tmp_path, capsys):
    """A byte model on a text store: --out *.wav and --sample-rate are refused; a .wav prompt is its raw bytes.
    An image model: --out *.wav refused. A file that is not sound, for an audio model: named."""
    sf.write(tmp_path / "x.wav", np.zeros(100), 8000)
    code, err = run("sample", [str(trained), "--out", str(tmp_path / "o.wav")], capsys)
    one_line(code, err, "sample", "--out *.wav is for an audio model; this run's store")
    assert "holds bytes" in err and not (tmp_path / "o.wav").exists()
    code, err = run("sample", [str(trained), "--sample-rate", "8000"], capsys)
    one_line(code, err, "sample", "--sample-rate is for an audio model")
    code, err = run("sample", [str(trained), "--prompt-file", str(tmp_path / "x.wav"), "--bytes", "2"], capsys)
    assert code == 0, err
    image = load_config(tiny_config(model={"embedding": {"kind": "image", "image_shape": [8, 16, 1]}}))
    image_run = fake_run(tmp_path / "image_run", image)
    code, err = run("sample", [str(image_run), "--out", str(tmp_path / "o.wav")], capsys)
    one_line(code, err, "sample", "--out *.wav is for an audio model; this run's model reads images")


def test_a_broken_sound_prompt_is_named(audio, tmp_path, capsys):
    run_dir, _, _ = audio
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wave")
    code, err = run("sample", [str(run_dir), "--prompt-file", str(tmp_path / "bad.wav")], capsys)
    one_line(code, err, "sample", f"{tmp_path / 'bad.wav'}: not a readable sound file")
