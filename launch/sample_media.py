"""Pictures and sound for `megastride sample`: prompts read from image and audio files, samples written as PNG and WAV.

An image model reads an image's bytes in raster order (H, W, C); an audio model reads 8-bit mu-law codes at its
store's sample rate (`megastride prepare audio`). These turn files a user has into those bytes and back.
"""

from __future__ import annotations

import wave

import numpy as np

from megastride.engine.config import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # a --prompt-file an image model reads as a picture
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")  # a --prompt-file an audio model reads as sound


def picture_prompt(path: str | None, rows: int | None, shape) -> bytes:
    """The top ``rows`` rows (default half) of the picture at ``path``, which must have the model's shape."""
    from megastride.data_shards.write_images import read_image_array

    if shape is None:
        raise ConfigError("--prompt-rows is for an image model; this run's model reads bytes")
    if path is None or not path.lower().endswith(IMAGE_SUFFIXES):
        raise ConfigError(f"--prompt-rows takes the top rows of a --prompt-file picture ({', '.join(IMAGE_SUFFIXES)})")
    h, w, c = shape
    if c not in (1, 3):
        raise ConfigError(f"a picture prompt is grey or RGB; this model's images have {c} channels (give raw bytes)")
    pixels = read_image_array(path, "L" if c == 1 else "RGB")
    if pixels.shape != (h, w, c):
        raise ConfigError(f"--prompt-file {path} is {'x'.join(map(str, pixels.shape))}; the model reads {h}x{w}x{c} "
                          "images (model.embedding.image_shape)")
    rows = h // 2 if rows is None else rows
    if not 1 <= rows < h:
        raise ConfigError(f"--prompt-rows must be from 1 to {h - 1} (the picture has {h} rows), got {rows}")
    return pixels[:rows].tobytes()


def check_picture(shape, prompt: int, length: int, seq_len: int) -> None:
    """A .png --out needs an image model, a channel count a PNG holds, and the whole image sampled."""
    if shape is None:
        raise ConfigError("--out *.png writes an image model's samples; this run's model reads bytes "
                          "(give another name for the raw bytes)")
    if shape[2] not in (1, 3, 4):
        raise ConfigError(f"--out *.png: images of {shape[2]} channels are not a PNG (1, 3 or 4); give another "
                          "name for the raw bytes")
    if prompt + length != seq_len:
        raise ConfigError(f"--out *.png needs the whole image: the prompt's {prompt:,} bytes and --bytes {length:,} "
                          f"make {prompt + length:,} of {seq_len:,} (leave --bytes out for the rest of the image)")


def write_picture(path: str, data: bytes, shape) -> None:
    from PIL import Image

    pixels = np.frombuffer(data, dtype=np.uint8).reshape(shape)
    Image.fromarray(pixels[..., 0] if shape[2] == 1 else pixels).save(path)


def audio_rate(store_path: str, given: int | None, why: str, required: bool = True) -> int | None:
    """The sample rate of the run's audio: its store's, or ``given`` (--sample-rate) where the store is gone. Where
    the store holds no audio: a one-line error if ``required``, else None (a byte model reads a sound file's raw
    bytes); where it does not open and no rate is given, a one-line error asking for --sample-rate (``why`` names
    what needs the rate)."""
    from megastride.data_shards import StoreError, open_store

    try:
        store = open_store(store_path)
    except StoreError as err:
        if given is not None:
            return given
        raise ConfigError(f"{why} needs the run's sample rate, and its store does not open ({err}): pass "
                          "--sample-rate") from None
    if store.modality != "audio":
        if not required:
            return None
        raise ConfigError(f"{why} is for an audio model; this run's store {store_path} holds {store.modality}")
    if given is not None and given != store.sample_rate:
        raise ConfigError(f"--sample-rate {given:,} is not the {store.sample_rate:,} Hz of the run's store {store_path}, "
                          "the rate the model learned (leave it out)")
    return int(store.sample_rate)


def audio_prompt(path: str, rate: int) -> bytes:
    """The sound file at ``path``, mixed to mono, resampled to ``rate`` and mu-law coded as the store's tracks are."""
    from megastride.data_shards.mulaw import mulaw_encode
    from megastride.data_shards.writing import PrepareError
    from megastride.data_shards.write_audio import _soundfile, resample

    try:
        data, rate_in = _soundfile().read(path, dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as err:  # soundfile's LibsndfileError is a RuntimeError
        raise PrepareError(f"{path}: not a readable sound file ({' '.join(str(err).split())})") from None
    if not len(data):
        raise ConfigError(f"--prompt-file {path} holds no samples")
    return mulaw_encode(resample(data.mean(axis=1), rate_in, rate)).tobytes()


def write_wav(path: str, codes: bytes, rate: int) -> None:
    """Mu-law codes as a mono 16-bit PCM WAV (the standard library's writer: no audio package needed)."""
    from megastride.data_shards.mulaw import mulaw_decode

    pcm = np.round(np.clip(mulaw_decode(np.frombuffer(codes, dtype=np.uint8)), -1, 1) * 32767).astype("<i2")
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
