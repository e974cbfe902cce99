"""A whole training step -- forward, backward, gradient clipping, optimizer step -- as one CUDA graph.

At short sequences the GPU finishes a step's kernels faster than Python can issue them: the step
waits on the host (docs/scaling.md: 274 ms of host issue for 75 ms of kernels at 12,288 tokens).
A captured step is replayed with one launch, so the host cost goes away and the step takes its GPU
time. ``train.cuda_graph`` turns it on for the plain one-GPU loop (``megastride bench scaling``).

Every step is a real step on its own batch: the first ``warmup`` steps run eagerly (on a side
stream, as capture wants: cuBLAS workspaces, Triton autotuning, the layouts and the optimizer
states are made there), the next one is captured and then replayed on its batch, and every later
step copies its batch into the graph's input and replays. What capture needs of the step:

* static shapes: one batch shape for the whole run (a different shape is an error, not a recapture);
* no host synchronisation inside (no ``.item()``; gradient clipping and fused AdamW with
  ``capturable=True`` keep everything on the device: ``engine.parallel.build_optimizer`` sets it);
* no host-side randomness to replay: recomputed blocks stash no RNG state when they have no active
  dropout, and the config check refuses dropout with recomputation under a graph
  (``engine.parallel.BlockCheckpoint`` raises if it meets one during capture);
* a constant learning rate or a tensor one (a float baked into the captured optimizer kernel would
  not follow a schedule; ``build_optimizer`` makes it a tensor that schedulers fill in place).

The eager steps and the capture run on one side stream per GPU, shared by every graphed step of the
process: cuBLAS keeps a workspace (tens of MB, from the caching allocator, never given back) for each
stream it runs on, so a new stream per graphed step left one more behind at each point of a sweep
(``megastride bench scaling`` runs its points in one process: the planner was 12-27% under the
graphed peaks at 1,024-4,096 tokens, growing point by point; docs/scaling.md).
"""

from __future__ import annotations

from typing import Callable

import torch

_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def side_stream(device: int | None = None) -> torch.cuda.Stream:
    """The process's one stream for graphed steps' eager warm-up and capture on ``device`` (current)."""
    index = torch.cuda.current_device() if device is None else device
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


class GraphedStep:
    """Run ``step(batch) -> loss`` eagerly ``warmup`` times, then capture it once and replay it.

    ``step`` does forward, backward, clipping and the optimizer step and returns the loss as a
    tensor (not synchronised). The eager steps are followed by ``optimizer.zero_grad(set_to_none=True)``;
    before capture the gradients are None, so the captured backward writes them (into the graph's
    memory pool) rather than adding to old ones, and each replay overwrites them.
    """

    def __init__(self, step: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                 warmup: int = 2):
        if not torch.cuda.is_available():
            raise RuntimeError("train.cuda_graph needs a CUDA GPU")
        self.step, self.optimizer = step, optimizer
        self.warmup = max(1, warmup)
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: torch.Tensor | None = None
        self.static_loss: torch.Tensor | None = None
        self._side = side_stream()

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if not batch.is_cuda:
            raise ValueError(f"train.cuda_graph: the batch must be on the GPU, got {batch.device}")
        if self.graph is None and self.eager_steps < self.warmup:
            return self._eager(batch)
        if self.graph is None:
            self._capture(batch)
        elif batch.shape != self.static_batch.shape or batch.dtype != self.static_batch.dtype:
            raise ValueError(f"train.cuda_graph: batch {tuple(batch.shape)} {batch.dtype} differs from the captured "
                             f"{tuple(self.static_batch.shape)} {self.static_batch.dtype}; a graph replays one shape")
        self.static_batch.copy_(batch)
        self.graph.replay()
        return self.static_loss

    def _eager(self, batch: torch.Tensor) -> torch.Tensor:
        current = torch.cuda.current_stream()
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            loss = self.step(batch)
            self.optimizer.zero_grad(set_to_none=True)
        current.wait_stream(self._side)
        batch.record_stream(self._side)
        self.eager_steps += 1
        return loss

    def _capture(self, batch: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.static_batch = batch.detach().clone()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._side):
            self.static_loss = self.step(self.static_batch)
        self.graph = graph  # nothing ran during capture: __call__ replays it on this batch
