"""``train.runtime: torch``: the part of DeepSpeed's engine the trainer uses, as a plain PyTorch loop.

One process, one device, no ZeRO: the model's fp32 weights and AdamW states stay where they are,
bf16 runs the forward under ``torch.autocast`` (what ``megastride bench scaling`` and the planner's
runtime "torch" assume). What this buys is ``train.cuda_graph``: DeepSpeed's engine cannot be
captured, this one's whole optimizer step can (``TorchEngine.graphed_step``, ``engine.graphs``).

The methods follow DeepSpeed's semantics where the trainer relies on them: ``backward`` divides the
loss by ``train.grad_accum``; ``step`` counts micro-steps and, at the accumulation boundary, clips
to ``train.grad_clip``, steps the optimizer and then the scheduler and sets the gradients to None;
``save_checkpoint`` writes DeepSpeed's stage-0 layout (``<dir>/<tag>/mp_rank_00_model_states.pt``
holding "module", "optimizer", "lr_scheduler" and the client state, then ``<dir>/latest``), which
``engine.checkpoint.latest_model_state`` reads for ``megastride eval`` and ``sample``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from .config import ConfigError, TrainConfig

MODEL_STATES = "mp_rank_00_model_states.pt"
_OWN_KEYS = ("module", "optimizer", "lr_scheduler", "global_steps", "micro_steps", "skipped_steps")


class TorchEngine:
    """``model`` trained by ``optimizer`` and ``scheduler`` on ``device`` as ``train`` says (see the module)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, train: TrainConfig,
                 device: torch.device):
        self.module, self.optimizer, self.lr_scheduler = model, optimizer, scheduler
        self.device = device
        self.grad_accum, self.grad_clip = train.grad_accum, train.grad_clip
        self.bf16 = train.precision == "bf16"
        self.micro_steps = self.global_steps = 0
        self.skipped_steps = 0  # no loss scaling: no step is ever skipped
        self._grad_norm: torch.Tensor | None = None  # pre-clipping, of the last optimizer step
        self._graph = None  # engine.graphs.GraphedStep, made at the first graphed_step

    # -- what the trainer calls, as on DeepSpeed's engine ----------------------------------------

    def __call__(self, *args, **kwargs):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        """Gradients of ``loss / grad_accum`` (accumulated over the micro-batches of one step)."""
        scaled = loss / self.grad_accum
        scaled.backward()
        return scaled

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.grad_accum == 0

    def step(self) -> None:
        """End one micro-batch; at the accumulation boundary also clip, step, schedule, zero the gradients."""
        if self.is_gradient_accumulation_boundary():
            self._grad_norm = self._clip_and_step().detach()
            self._end_step()
        self.micro_steps += 1

    def get_global_grad_norm(self) -> float | None:
        return float(self._grad_norm) if self._grad_norm is not None else None

    def get_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def compile(self) -> None:
        """torch.compile the model's forward in place (its state-dict keys stay as they are)."""
        self.module.compile()

    # -- the optimizer step --------------------------------------------------------------------

    def _clip_and_step(self) -> torch.Tensor:
        """Clip to grad_clip (when > 0) and step the optimizer; the pre-clipping norm as a device tensor.

        No host synchronisation, so it can be captured in a CUDA graph."""
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        self.optimizer.step()
        return norm

    def _end_step(self) -> None:
        """After an eager optimizer step: the schedule, then the gradients are set to None."""
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_steps += 1

    def _whole_step(self, batches: torch.Tensor) -> torch.Tensor:
        """Every micro-batch's forward and backward, then clipping and the optimizer step, on
        ``batches`` (grad_accum, B, T+1); returns [mean loss, pre-clipping grad norm] on the device."""
        losses = []
        for batch in batches.unbind(0):  # (B, T+1) each
            loss = self(batch[:, :-1], batch[:, 1:])
            self.backward(loss)
            losses.append(loss.detach().float())
        return torch.stack([torch.stack(losses).mean(), self._clip_and_step().float()])

    def graphed_step(self, batches: torch.Tensor) -> torch.Tensor:
        """One optimizer step on ``batches`` (grad_accum, B, T+1), replayed from a CUDA graph after
        ``engine.graphs.GraphedStep``'s eager warm-up steps; returns the mean loss (a device tensor,
        overwritten by the next step). The schedule and the step counts advance outside the graph."""
        if batches.shape[0] != self.grad_accum:
            raise ValueError(f"graphed_step takes grad_accum={self.grad_accum} micro-batches, got {batches.shape[0]}")
        if self._graph is None:
            from .graphs import GraphedStep

            self._graph = GraphedStep(self._whole_step, self.optimizer)
        out = self._graph(batches)  # the graph's own output buffer: copy what outlives the next replay
        self._grad_norm = out[1].clone()
        # outside the graph: LambdaLR fills the tensor learning rate the captured AdamW kernel reads in
        # place (engine.parallel.build_optimizer). No zero_grad: GraphedStep sets the gradients to None
        # after its eager steps, and each replay's first backward overwrites them
        self.lr_scheduler.step()
        self.global_steps += 1
        self.micro_steps += self.grad_accum
        return out[0]

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict | None = None) -> None:
        """DeepSpeed's stage-0 layout: ``<save_dir>/<tag>/mp_rank_00_model_states.pt`` (fp32 weights under
        "module", optimizer and scheduler states, ``client_state``'s keys), then ``<save_dir>/latest``."""
        client_state = client_state or {}
        clash = set(client_state) & set(_OWN_KEYS)
        if clash:
            raise KeyError(f"client_state uses the engine's own checkpoint keys {sorted(clash)}")
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        state = {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "lr_scheduler": self.lr_scheduler.state_dict(), "global_steps": self.global_steps,
                 "micro_steps": self.micro_steps, "skipped_steps": self.skipped_steps, **client_state}
        torch.save(state, folder / MODEL_STATES)
        _write_atomically(Path(save_dir) / "latest", tag)  # last: a checkpoint is complete once named

    def load_checkpoint(self, load_dir: str) -> tuple[str | None, dict]:
        """Load the checkpoint ``<load_dir>/latest`` names; returns (its path, the client state), or
        (None, {}) without one. A captured graph is dropped: the next graphed_step captures anew."""
        latest = Path(load_dir) / "latest"
        if not latest.is_file():
            return None, {}
        path = Path(load_dir) / latest.read_text().strip() / MODEL_STATES
        if not path.is_file():
            return None, {}
        state = torch.load(path, map_location=self.device, weights_only=False)
        optimizer = state.get("optimizer")
        if not state.get("module") or not (isinstance(optimizer, dict) and "param_groups" in optimizer):
            raise ConfigError(f"{path} holds no plain model and torch optimizer state (a ZeRO or 16-bit "
                              "DeepSpeed checkpoint?): resume it with train.runtime=deepspeed")
        self.module.load_state_dict(state["module"])
        self._load_optimizer(optimizer)
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.global_steps = int(state.get("global_steps", 0))
        self.micro_steps = int(state.get("micro_steps", self.global_steps * self.grad_accum))
        self._graph, self._grad_norm = None, None
        return str(path.parent), {k: v for k, v in state.items() if k not in _OWN_KEYS}

    def _load_optimizer(self, saved: dict) -> None:
        """Optimizer.load_state_dict replaces each group's learning rate with the saved value; a tensor
        learning rate (train.cuda_graph) keeps its own tensor, filled in place, on its device."""
        tensor_lrs = [g["lr"] if torch.is_tensor(g["lr"]) else None for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, lr in zip(self.optimizer.param_groups, tensor_lrs):
            if lr is not None:
                lr.fill_(float(group["lr"]))
                group["lr"] = lr


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
