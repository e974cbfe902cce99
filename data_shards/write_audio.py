"""Audio tracks (Ogg Vorbis, FLAC, WAV: whatever libsndfile decodes) as one 8-bit mu-law stream.

Each track is mixed to mono, resampled to ``sample_rate`` (12 kHz by default, like the paper) and
mu-law encoded; tracks are concatenated in sorted order and their boundaries recorded as the
split segments ([source index, start, length]).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from .mulaw import MU, mulaw_encode
from .writing import Part, PrepareError, resolve_sources, write_store

AUDIO_SUFFIXES = (".ogg", ".oga", ".flac", ".wav")
DEFAULT_SAMPLE_RATE = 12_000


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise PrepareError("audio needs the soundfile package: pip install 'megastride[audio]'") from None
    return soundfile


def resampled_length(frames: int, rate_in: int, rate_out: int) -> int:
    """Samples after resampling ``frames`` from ``rate_in`` to ``rate_out`` (rounded up)."""
    return -(-frames * rate_out // rate_in)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of a mono float track by Fourier-domain truncation or padding.

    The spectrum is kept up to the lower Nyquist frequency with a short cosine roll-off over its top
    5% (which avoids ringing at the cut); the output has exactly ``resampled_length`` samples.
    """
    n = len(x)
    n_out = resampled_length(n, rate_in, rate_out)
    if rate_in == rate_out or n == 0:
        return np.asarray(x, dtype=np.float32)
    spec = np.fft.rfft(np.asarray(x, dtype=np.float64))
    keep = min(len(spec), n_out // 2 + 1)
    out = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out[:keep] = spec[:keep]
    roll = max(1, keep // 20)
    out[keep - roll:keep] *= 0.5 * (1 + np.cos(np.linspace(0, np.pi, roll)))
    return (np.fft.irfft(out, n_out) * (n_out / n)).astype(np.float32)


def fit_frames(mono: np.ndarray, frames: int) -> np.ndarray:
    """Trim or zero-pad a decoded track to the header's frame count, which the store was planned with.

    Ogg Vorbis headers can be off by a few hundred frames from what the decoder yields (seen on
    Debian's wesnoth music: 0.1 s in a 3.5-minute track); silence at the end is the honest fill.
    """
    if len(mono) >= frames:
        return mono[:frames]
    return np.concatenate([mono, np.zeros(frames - len(mono), dtype=mono.dtype)])


def _probe(path: str, rate: int, split, display) -> Part:
    sf = _soundfile()
    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - libsndfile's errors vary by version
        raise PrepareError(f"{path}: not a readable audio file ({' '.join(str(e).split())})") from None
    if info.frames <= 0:
        raise PrepareError(f"{path}: audio file has no frames")
    return Part(path, resampled_length(info.frames, info.samplerate, rate), split, display,
                {"sample_rate_in": info.samplerate, "channels": info.channels, "frames": info.frames})


def write_audio_store(sources: str | Sequence[str], out: str | os.PathLike, sample_rate: int = DEFAULT_SAMPLE_RATE,
                      valid_fraction: float = 0.01, test_fraction: float = 0.0, progress: bool = True, *,
                      force: bool = False, compressor: str = "zstd") -> str:
    """Write audio files (or directories / globs of them) as an 'audio' store of mu-law bytes."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [os.fspath(sources)]
    if sample_rate <= 0:
        raise PrepareError(f"--sample-rate must be positive, got {sample_rate}")
    parts = [_probe(path, sample_rate, split, display)
             for split, path, display in resolve_sources(sources, AUDIO_SUFFIXES)]

    def stream(part: Part) -> Iterator[np.ndarray]:
        data, rate = _soundfile().read(part.path, dtype="float32", always_2d=True)
        mono = data.mean(axis=1)  # (frames,)
        yield mulaw_encode(resample(fit_frames(mono, part.extra["frames"]), rate, sample_rate))

    extra = {"sample_rate": int(sample_rate), "encoding": "mu-law", "mu": MU}
    return write_store(os.fspath(out), "audio", parts, stream, valid_fraction=valid_fraction,
                       test_fraction=test_fraction, extra_meta=extra, compressor=compressor,
                       force=force, progress=progress)
