"""Loading a trained run for evaluation and sampling (single process, no DeepSpeed engine)."""

from __future__ import annotations

from pathlib import Path

import torch

from megastride.data_shards import open_store

from . import checkpoint as ckpt
from .config import Config, ConfigError, load_config
from .metrics import bits_per_byte
from .model import SparseTransformer


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[Config, SparseTransformer]:
    """The run's resolved config and its newest checkpoint's weights, in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    model = SparseTransformer(cfg.model)
    try:
        model.load_state_dict(ckpt.latest_model_state(run_dir / "checkpoints"))
    except ckpt.CheckpointError:
        raise
    except RuntimeError as err:  # the weights were read but do not fit config.yaml's model
        lines = [x.strip() for x in str(err).splitlines() if x.strip()]
        raise ckpt.CheckpointError(f"{run_dir}: its checkpoint does not fit the model of its config.yaml "
                                   f"({lines[-1] if lines else type(err).__name__})") from None
    return cfg, model.to(device).eval()


def check_eval_data(cfg: Config, url: str, split: str) -> None:
    """One-line errors where the run's model cannot read ``split`` of the store at ``url``, as training checks
    its own store (engine.trainer.check_data): images for a byte model or the reverse, images of another shape,
    a split the store lacks or whose array metadata is unreadable, or a split shorter than one window."""
    store = open_store(url)
    embedding = cfg.model.embedding
    if embedding.kind == "image" and store.modality != "image":
        raise ConfigError(f"data store {url} holds {store.modality} data but the run's model reads images "
                          "(model.embedding.kind=image)")
    if embedding.kind != "image" and store.modality == "image":
        raise ConfigError(f"data store {url} holds images but the run's model reads bytes "
                          f"(model.embedding.kind={embedding.kind}): give a store of bytes or audio")
    if embedding.kind == "image" and tuple(store.sample_shape) != tuple(embedding.image_shape):
        raise ConfigError(f"data store {url} holds {'x'.join(map(str, store.sample_shape))} images but the run's "
                          f"model reads {'x'.join(map(str, embedding.image_shape))} (model.embedding.image_shape)")
    if split not in store.split_sizes:
        raise ConfigError(f"data store {url} has no split {split!r} (has {sorted(store.split_sizes)})")
    store.array(split)  # its metadata readable (a StoreError names it)
    size = store.split_sizes[split]
    if embedding.kind != "image" and cfg.model.seq_len + 1 > size:
        raise ConfigError(f"split {split!r} of {url} has {size:,} bytes, fewer than one window of the run's "
                          f"model.seq_len+1 = {cfg.model.seq_len + 1:,}")


@torch.no_grad()
def evaluate_bpb(model: SparseTransformer, windows, device) -> tuple[float, int]:
    """Bits per byte of the model over an iterable of (1, L+1) byte windows; returns (bpb, bytes)."""
    nats, count = 0.0, 0
    for batch in windows:
        batch = batch.to(device).long()
        nats += float(model(batch[:, :-1], batch[:, 1:])) * batch[:, 1:].numel()
        count += batch[:, 1:].numel()
    return bits_per_byte(nats / max(count, 1)), count


@torch.no_grad()
def sample(model: SparseTransformer, prompt: bytes, length: int, temperature: float = 1.0,
           top_k: int = 0, generator: torch.Generator | None = None, device="cpu") -> bytes:
    """Generate ``length`` bytes after ``prompt``, one at a time (full recompute over the context).

    The context is right-padded to a block multiple; causality makes the padding invisible. Byte models read
    windows cut anywhere in the stream: the prompt is the context as it is (a 0 byte where there is none), and a
    context longer than ``seq_len`` keeps its last ``seq_len`` bytes. Image models read a 0 byte and then the
    image's bytes in raster order, as the loader feeds them: the prompt (the image's first bytes) follows that
    0 byte, and prompt and continuation together are at most one image.
    """
    cfg = model.cfg
    image = cfg.embedding.kind == "image"
    if image and len(prompt) + length > cfg.seq_len:
        h, w, c = cfg.embedding.image_shape
        raise ConfigError(f"an image of {h}x{w}x{c} holds {cfg.seq_len:,} bytes: the prompt's {len(prompt):,} and "
                          f"{length:,} more do not fit (at most {cfg.seq_len - len(prompt):,} more)")
    start = [0] if image or not prompt else []
    out = start + list(prompt)
    block = cfg.attention.block
    for _ in range(length):
        ctx = out[-cfg.seq_len :]
        padded = len(ctx) + (-len(ctx)) % block
        idx = torch.zeros(1, padded, dtype=torch.long, device=device)
        idx[0, : len(ctx)] = torch.tensor(ctx, device=device)
        logits = model.head(model.hidden(idx)[0, len(ctx) - 1]).float()
        out.append(_draw(logits, temperature, top_k, generator))
    return bytes(out[len(start) + len(prompt) :])


def _draw(logits: torch.Tensor, temperature: float, top_k: int, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    # in float64 (float32 rounds a temperature under ~1e-45 to 0, and x / 0 to nan), the largest logit first
    # going to 0: dividing by a tiny temperature then sends the others to -inf, never inf - inf = nan, so
    # the draw tends to the most likely byte as the temperature tends to 0
    logits = (logits.double() - logits.max()) / temperature
    if top_k:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))
