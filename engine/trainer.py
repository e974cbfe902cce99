"""The training loop: DeepSpeed or plain-torch engine, streaming data, evaluation, checkpoints, metrics."""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from megastride.data_shards import build_loader, eval_windows, open_store

from . import checkpoint as ckpt
from .config import Config, ConfigError, graph_problem, keep_attention_conflict
from .deepspeed_config import check_zero_options, deepspeed_config
from .distributed import all_reduce_sum, barrier, init_distributed, world_size_from_env
from .memtrace import allocator_counts
from .metrics import MetricsWriter, Progress, bits_per_byte
from .model import SparseTransformer
from .parallel import apply_activation_checkpointing, build_optimizer
from .run_dir import check_run_dir, checkpoint_dir, prepare_run_dir, tensorboard_dir
from .schedule import build_scheduler
from .torch_engine import TorchEngine


@dataclass
class TrainResult:
    step: int
    train_bpb: float | None
    valid_bpb: float | None
    run_dir: Path
    tensorboard_dir: Path


def check_data(cfg: Config) -> None:
    """Fail early, in one line, if the store is missing or does not fit the model."""
    store = open_store(cfg.data.path)
    want = "image" if cfg.model.embedding.kind == "image" else None
    if want and store.modality != want:
        raise ConfigError(f"data store {cfg.data.path} holds {store.modality} data but model.embedding.kind is image")
    if not want and store.modality == "image":
        raise ConfigError(f"data store {cfg.data.path} holds images: set model.embedding.kind=image and its image_shape")
    shape = cfg.model.embedding.image_shape
    if want and store.sample_shape and tuple(store.sample_shape) != tuple(shape):
        # the same bytes in another (H, W, C) train silently with every row and column position wrong
        raise ConfigError(f"data store {cfg.data.path} holds {'x'.join(map(str, store.sample_shape))} images but "
                          f"model.embedding.image_shape is {'x'.join(map(str, shape))}: set it to "
                          f"{list(store.sample_shape)}")
    for split in (cfg.data.train_split, cfg.data.valid_split):
        if split not in store.split_sizes:
            raise ConfigError(f"data store {cfg.data.path} has no split {split!r} (has {sorted(store.split_sizes)})")
        store.array(split)  # its array metadata readable now, not at the first batch (StoreError names it)
    if store.modality != "image":  # before training, not at the first evaluation hours later
        for split, key in ((cfg.data.train_split, "data.train_split"), (cfg.data.valid_split, "data.valid_split")):
            size = store.split_sizes[split]
            if cfg.model.seq_len + 1 > size:
                raise ConfigError(f"{key} {split!r} of {cfg.data.path} has {size:,} bytes, fewer than one window of "
                                  f"model.seq_len+1 = {cfg.model.seq_len + 1:,}: prepare a larger split or "
                                  f"point {key} at another")


def check_runtime(cfg: Config, world: int, cuda: bool) -> None:
    """One-line ConfigErrors for what ``train.runtime`` cannot run on ``world`` ranks (with or without
    a CUDA device): the plain torch loop is one process in fp32 or bf16 without ZeRO, and only it
    captures train.cuda_graph (DeepSpeed's engine cannot be captured)."""
    t = cfg.train
    if t.runtime == "deepspeed":
        if t.cuda_graph:
            raise ConfigError("train.cuda_graph needs train.runtime=torch (DeepSpeed's engine cannot be captured "
                              "in a CUDA graph)")
        return
    if world > 1:
        raise ConfigError(f"train.runtime=torch runs one process, not {world}: use train.runtime=deepspeed "
                          "for data parallel training")
    for key in ("offload_optimizer", "offload_params", "partition_activations"):  # before ZeRO, which they need
        if getattr(t, key):
            raise ConfigError(f"train.{key} needs train.runtime=deepspeed (runtime torch is one plain process)")
    if t.zero_stage:
        raise ConfigError(f"train.zero_stage={t.zero_stage} needs train.runtime=deepspeed (runtime torch has no ZeRO)")
    if t.precision == "fp16":
        raise ConfigError("train.runtime=torch trains in fp32 or bf16 (fp16 needs loss scaling): set "
                          "train.precision or train.runtime=deepspeed")
    if t.cuda_graph and not cuda:
        raise ConfigError("train.cuda_graph needs a CUDA device (this machine has none)")


def peak_memory_gb(device: torch.device, reset: bool = False) -> float:
    """Peak memory in GB: on CUDA the allocator's peak since the last reset (``reset`` starts the next
    window), elsewhere the process's peak resident size (never reset)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 1e9
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB (process peak RSS)


def fp16_loss_left_unscaled(engine) -> bool:
    """True where DeepSpeed's fp16 optimizer unscales gradients that engine.backward never scaled.

    With fp16 at ZeRO stage 0 the engine wraps the optimizer in FP16_(Unfused)Optimizer, whose step()
    divides every gradient by the loss scale and checks for overflow, but engine.backward() (0.19)
    only scales the loss for ZeRO optimizers (deepspeedai/DeepSpeed#8393): updates come out
    loss_scale times too small and no step ever overflows. The trainer then scales the loss itself,
    exactly as FP16_Optimizer.backward() would. Detected from the engine's code, so a DeepSpeed
    that fixes it (a fp16 branch in engine.backward) turns this off instead of scaling twice.
    """
    import inspect

    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    opt = engine.optimizer
    config = getattr(opt, "loss_scale_config", None)
    if not engine.fp16_enabled() or isinstance(opt, ZeROOptimizer) or not getattr(config, "use_grad_scaling", False):
        return False
    return "fp16_enabled" not in inspect.getsource(type(engine).backward)


def _uses_host_memory(cfg: Config) -> bool:
    t = cfg.train
    return (t.checkpoint_activations and t.cpu_checkpointing) or t.offload_optimizer or t.offload_params


def ranks_per_node(world: int) -> int:
    """Ranks sharing this node's RAM: the launcher's LOCAL_WORLD_SIZE, else as many as this node has GPUs."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", min(world, max(1, torch.cuda.device_count()))))


def check_host_memory(cfg: Config, world: int, p=None) -> None:
    """ConfigError before any work if host offload (pinned block inputs, offloaded states) needs more
    RAM than this node has: otherwise the run dies mid-step on a failed pinned allocation. ``p``:
    the config's plan, if already made."""
    if not _uses_host_memory(cfg):
        return
    from . import plan as planner

    p, ranks = p or planner.plan(cfg, world_size=world), ranks_per_node(world)
    problem = planner.check_host_memory(p, ranks)
    if problem:
        raise ConfigError(problem)
    from .hostmem import available_bytes

    need, avail = p.host_bytes * ranks, available_bytes()
    if avail is not None and need > avail and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        # the RAM holds it, but other processes hold memory now: the run may be killed when it pins the rest
        print(f"warning: host memory: this node's ranks plan {need / 1e9:.1f} GB of pinned host memory and "
              f"{avail / 1e9:.1f} GB is available now (other processes hold the rest)", file=sys.stderr, flush=True)


def plan_note(cfg: Config, world: int, gpu_bytes: float, p=None) -> str:
    """One line for the start of a GPU run: the planner's peak per GPU, the blocks recomputed and whether
    they keep their attention outputs (and whether "auto" chose that) and host bytes per rank, and a
    warning when the peak passes the GPU's memory (the planner was within 15% of measured peaks).
    ``p``: the config's plan, if already made."""
    from . import plan as planner

    p = p or planner.plan(cfg, world_size=world, gpu_bytes=gpu_bytes)
    t = cfg.train
    recompute = f"recompute {p.recompute}"
    if t.checkpoint_blocks == "auto" and t.checkpoint_activations:
        limit, share = planner.auto_budget(cfg, gpu_bytes)
        fits = p.first_step_peak_bytes <= limit
        rule = ("the least recompute work that fits" if t.keep_attention == "auto" and not keep_attention_conflict(t)
                else "the fewest that fit")
        recompute = (f"recompute {p.checkpoint_blocks} of {p.n_layers} blocks (train.checkpoint_blocks=auto: "
                     f"{rule if fits else 'even so over'} {share})")
    if p.keep_attention:  # e.g. "attention outputs kept in 21 of 30 recomputed blocks"
        recompute += (", " + planner.kept_words(p.keep_attention, p.checkpoint_blocks, p.kept_on_host)
                      + (" (train.keep_attention=auto)" if t.keep_attention == "auto" else ""))
    note = (f"plan: peak {p.peak_bytes / 1e9:.1f} GB per GPU of {gpu_bytes / 1e9:.0f} GB, {recompute}"
            + (f", host {p.host_bytes / 1e9:.1f} GB per rank" if p.host_bytes else "")
            + (f"; first step {p.first_step_peak_bytes / 1e9:.1f} GB if it autotunes"
               if p.first_step_peak_bytes > p.peak_bytes else "")
            + " (`megastride plan` itemises it)")
    if p.first_step_peak_bytes > gpu_bytes:
        note = ("warning: " + note + "; this run may run out of GPU memory: see train.cpu_checkpointing, "
                "train.checkpoint_group, model.ffn_chunk and ZeRO in docs/scaling.md")
    return note


class Interrupted(SystemExit):
    """Training stopped by SIGINT or SIGTERM at a step boundary, its checkpoint saved. The exit status is
    128 + the signal's number (130, 143), the shell's convention for a process a signal ended."""


class StopSignals:
    """While training: SIGINT (Ctrl-C) and SIGTERM (Slurm's preemption, `kill`) set ``signum`` for the loop to
    read at its next step boundary instead of ending the process mid-step. The first of each gives that
    signal back its previous handler, so a second Ctrl-C still ends the process (the deepspeed launcher's
    SIGTERM after a Ctrl-C does not: the save goes on); all are restored on exit. Installs nothing outside
    the main thread (signal handlers live there) nor for a signal ignored when training starts (a job started
    under nohup or with & in a script: it stays ignored)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum
        signal.signal(signum, self._restored(signum))

    def _restored(self, sig: int):
        previous = self._previous[sig]
        return signal.SIG_DFL if previous is None else previous  # None: a handler not set from Python

    def __exit__(self, *exc) -> None:
        for sig in self._previous:
            signal.signal(sig, self._restored(sig))


class Trainer:
    """Owns the engine, the loaders and the run directory for one training run."""

    def __init__(self, cfg: Config):
        check_runtime(cfg, world_size_from_env(), torch.cuda.is_available())
        check_zero_options(cfg)
        check_data(cfg)
        check_run_dir(cfg)  # every rank, before anything starts: none waits at a barrier rank 0 would not reach
        self.cfg = cfg
        if cfg.train.precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.precision=fp16 needs a CUDA GPU (DeepSpeed has no fp16 on CPU); use bf16 or fp32")
        self.rank, self.world, self.device = init_distributed(deepspeed_comm=cfg.train.runtime == "deepspeed")
        on_gpu = self.device.type == "cuda"
        if on_gpu or _uses_host_memory(cfg):  # one plan for both checks
            from . import plan as planner

            total = torch.cuda.get_device_properties(self.device).total_memory if on_gpu else None
            # fits checkpoint_blocks=auto and keep_attention=auto to the GPU (offload_attention=auto with them, to
            # this rank's share of the host's RAM)
            p = planner.plan(cfg, world_size=self.world, runtime=cfg.train.runtime, gpu_bytes=total,
                             host_bytes=planner.host_share_bytes(ranks_per_node(self.world)))
            if "auto" in (cfg.train.checkpoint_blocks, cfg.train.keep_attention, cfg.train.offload_attention):
                # the model does what was planned
                self.cfg = planner.with_resolved(cfg, p)
                problem = graph_problem(self.cfg)
                if problem:
                    raise ConfigError(problem)
            check_host_memory(cfg, self.world, p)
            if self.rank == 0 and on_gpu:
                print(plan_note(cfg, self.world, total, p), file=sys.stderr, flush=True)
        self.ds_config = deepspeed_config(cfg, self.world) if cfg.train.runtime == "deepspeed" else None
        self.engine = self._build_engine()
        self.loader = build_loader(
            cfg.data.path, split=cfg.data.train_split, seq_len=cfg.model.seq_len,
            micro_batch_size=cfg.train.micro_batch_size, seed=cfg.run.seed, rank=self.rank,
            world_size=self.world, num_workers=cfg.data.num_workers, prefetch=cfg.data.prefetch,
            read_threads=cfg.data.read_threads,
        )
        self.step = 0
        self._grad_norm: float | None = None
        self._peak_run = 0.0  # the largest perf/peak_memory_gb logged so far
        self._flushes = allocator_counts(self.device).get("num_alloc_retries", 0)  # at the last log line
        self.ckpt_root = checkpoint_dir(cfg)
        if cfg.run.resume == "auto" and ckpt.has_checkpoint(self.ckpt_root):
            self._resume()  # before the run dir is written: a checkpoint that does not load leaves it as it was
        if self.rank == 0:
            prepare_run_dir(cfg, self.ds_config)
        barrier()
        self.metrics = MetricsWriter(Path(cfg.run.dir), tensorboard_dir(cfg), enabled=self.rank == 0, step=self.step)

    def _build_engine(self):
        """DeepSpeed's engine, or with train.runtime=torch the plain loop's (``engine.torch_engine``)."""
        t = self.cfg.train
        torch.manual_seed(self.cfg.run.seed)  # identical init on every rank (DeepSpeed also broadcasts)
        model = SparseTransformer(self.cfg.model)
        apply_activation_checkpointing(model, t)
        if t.runtime == "torch":  # DeepSpeed moves it itself; the optimizer's tensors live beside the weights
            model.to(self.device)
        optimizer = build_optimizer(model, t, self.device)
        scheduler = build_scheduler(optimizer, t.warmup_steps, t.steps, t.min_lr_ratio)
        if t.runtime == "torch":
            engine = TorchEngine(model, optimizer, scheduler, t, self.device)
        else:
            import deepspeed

            engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=self.ds_config)
        if t.compile:
            engine.compile()
        torch.manual_seed(self.cfg.run.seed * 1000 + self.rank)  # dropout streams differ per rank
        self._prescale = t.runtime == "deepspeed" and fp16_loss_left_unscaled(engine)
        return engine

    def _resume(self) -> None:
        state = ckpt.load_checkpoint(self.engine, self.ckpt_root, self.rank)
        self.step = int(state["step"])
        try:
            self.loader.load_state_dict(state["data"])
        except ValueError as err:  # e.g. data.path now a store of another size
            raise ConfigError(f"the checkpoint in {self.ckpt_root} does not go on in this data "
                              f"({self.cfg.data.path}): {err}") from None

    # -- one optimizer step -------------------------------------------------------------------

    def _batches(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            batch = next(it)
            yield batch, time.perf_counter() - t0

    def train_step(self, batches) -> tuple[float, float]:
        """grad_accum micro-batches and one optimizer step; returns (mean loss in nats, data wait s)."""
        self.engine.train()
        if self.cfg.train.cuda_graph:
            return self._graphed_train_step(batches)
        losses, wait = [], 0.0
        for _ in range(self.cfg.train.grad_accum):
            batch, waited = next(batches)
            wait += waited
            batch = batch.to(self.device, non_blocking=True).long()
            loss = self.engine(batch[:, :-1], batch[:, 1:])
            self.engine.backward(loss * self._loss_scale() if self._prescale else loss)
            if self.engine.is_gradient_accumulation_boundary():
                self._grad_norm = self._local_grad_norm()
            self.engine.step()
            losses.append(loss.detach().float())
        return float(torch.stack(losses).mean()), wait

    def _graphed_train_step(self, batches) -> tuple[float, float]:
        """train_step with train.cuda_graph (runtime torch): the step's micro-batches go into the graph's
        (grad_accum, B, T+1) input and the whole optimizer step is replayed (``TorchEngine.graphed_step``)."""
        micro, wait = [], 0.0
        for _ in range(self.cfg.train.grad_accum):
            batch, waited = next(batches)
            wait += waited
            micro.append(batch.to(self.device, non_blocking=True))
        loss = self.engine.graphed_step(torch.stack(micro).long())  # (grad_accum, B, T+1)
        return float(loss), wait

    def _local_grad_norm(self) -> float | None:
        """Pre-clipping gradient norm where DeepSpeed does not report one (plain fp32, no ZeRO); runtime
        torch reports its own (get_global_grad_norm)."""
        t = self.cfg.train
        if t.runtime == "torch" or t.zero_stage or t.precision != "fp32":
            return None
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else None

    # -- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split: str | None = None, windows: int | None = None) -> float:
        """Bits per byte over deterministic non-overlapping windows, summed over all ranks."""
        self.engine.eval()
        nats, count = 0.0, 0
        for batch in eval_windows(self.cfg.data.path, split=split or self.cfg.data.valid_split,
                                  seq_len=self.cfg.model.seq_len, max_windows=windows or self.cfg.train.eval_windows,
                                  rank=self.rank, world_size=self.world):
            batch = batch.to(self.device).long()
            loss = self.engine(batch[:, :-1], batch[:, 1:])
            nats += float(loss) * batch[:, 1:].numel()
            count += batch[:, 1:].numel()
        nats, count = all_reduce_sum([nats, count], self.device)
        return bits_per_byte(nats / max(count, 1))

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train to train.steps (or run.stop_after steps), saving as configured. On SIGINT or SIGTERM: save at
        the next step boundary and raise ``Interrupted`` (rerunning the same command resumes there)."""
        with StopSignals() as stop:
            return self._fit(stop)

    def _fit(self, stop: StopSignals) -> TrainResult:
        cfg, t = self.cfg, self.cfg.train
        progress = Progress(t.steps, self.step, enabled=self.rank == 0 and cfg.run.progress)
        batches = self._batches()
        tokens_per_step = t.micro_batch_size * t.grad_accum * self.world * cfg.model.seq_len
        train_bpb = valid_bpb = None
        last = min(t.steps, self.step + cfg.run.stop_after) if cfg.run.stop_after else t.steps
        while self.step < last:
            start = time.perf_counter()
            loss, wait = self.train_step(batches)
            elapsed = time.perf_counter() - start
            self.step += 1
            # with the step's loss, whether any rank has seen a stop signal: every rank then stops, and saves, at
            # the same step, and none waits in a collective the others never reach
            total_loss, total_wait, ints, terms = all_reduce_sum(
                [loss, wait, stop.signum == signal.SIGINT, stop.signum == signal.SIGTERM], self.device)
            mean_loss, mean_wait = total_loss / self.world, total_wait / self.world
            signum = signal.SIGINT if ints else signal.SIGTERM if terms else 0
            train_bpb = bits_per_byte(mean_loss)
            progress.update({"bpb": f"{train_bpb:.3f}", "tok/s": f"{tokens_per_step / elapsed:,.0f}"})
            if self.step % t.log_every == 0 or self.step == t.steps:
                self._log_train(train_bpb, elapsed, mean_wait, tokens_per_step)
            if self.step % t.eval_every == 0 or self.step == t.steps:
                valid_bpb = self.evaluate()
                self.metrics.scalars(self.step, {"valid/bits_per_byte": valid_bpb})
                progress.write(f"step {self.step}: valid {valid_bpb:.4f} bits/byte")
            saved = bool(t.save_every and self.step % t.save_every == 0) or self.step == last
            if saved:
                self.save()
            if signum and self.step < last:  # a finished run just ends
                self._stop(signum, saved, progress)
        progress.close()
        self.metrics.close()
        return TrainResult(self.step, train_bpb, valid_bpb, Path(cfg.run.dir), tensorboard_dir(cfg))

    def _stop(self, signum: int, saved: bool, progress: Progress) -> None:
        """Save (unless this step just was), close the metrics, say where to resume from, raise Interrupted."""
        path = self.ckpt_root / ckpt.tag_for(self.step) if saved else self.save()
        progress.close()
        self.metrics.close()
        if self.rank == 0:
            print(f"interrupted by {signal.Signals(signum).name} at step {self.step}: checkpoint saved to {path}; "
                  "run the same command to resume", file=sys.stderr, flush=True)
        raise Interrupted(128 + signum)

    def _log_train(self, bpb: float, elapsed: float, wait: float, tokens: int) -> None:
        scale = self._loss_scale() if self.cfg.train.precision == "fp16" else None
        norm = self.engine.get_global_grad_norm()
        norm = self._grad_norm if norm is None else norm
        # peak_memory_gb covers the steps since the previous log line (with their evaluation and
        # checkpointing), so the first step's autotuning shows in its own line only;
        # peak_memory_gb_run is the whole run's (this process's) peak so far
        allocator = self._allocator_since_log()  # before the reset below, which also resets the reserved peak
        window = peak_memory_gb(self.device, reset=True)
        self._peak_run = max(self._peak_run, window)
        self.metrics.scalars(self.step, {
            "train/bits_per_byte": bpb,
            "train/lr": self.engine.get_lr()[0],
            "train/grad_norm": float(norm) if norm is not None else None,
            "train/loss_scale": float(scale) if scale is not None else None,
            "train/skipped_steps": float(self.engine.skipped_steps),
            "perf/tokens_per_s": tokens / elapsed,
            "perf/step_time_s": elapsed,
            "perf/data_wait_fraction": wait / elapsed,
            "perf/peak_memory_gb": window,
            "perf/peak_memory_gb_run": self._peak_run,
            **allocator,
        })

    def _allocator_since_log(self) -> dict[str, float]:
        """On CUDA, the allocator since the previous log line: its reserved peak (GB) and its cache flushes (a
        cudaMalloc that failed, so every cached block was freed, the device synchronised, and the call retried:
        a step that has them is slower than it need be; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True or a
        smaller train.memory_budget_gb leave room). Nothing elsewhere."""
        if self.device.type != "cuda":
            return {}
        flushes = allocator_counts(self.device)["num_alloc_retries"]
        since, self._flushes = flushes - self._flushes, flushes
        return {"perf/reserved_memory_gb": torch.cuda.max_memory_reserved(self.device) / 1e9,
                "perf/allocator_cache_flushes": float(since)}

    def close(self) -> None:
        """Stop loader threads/workers and leave the process group (clean exit on every rank)."""
        self.loader.close()
        barrier()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _loss_scale(self) -> float | None:
        """The dynamic fp16 loss scale, wherever this DeepSpeed optimizer keeps it."""
        opt = self.engine.optimizer
        # the live value: fp16 optimizers keep it in loss_scale_config, ZeRO in loss_scaler
        for holder in (getattr(opt, "loss_scale_config", None), getattr(opt, "loss_scaler", None), opt):
            scale = getattr(holder, "cur_scale", None)
            if isinstance(scale, (int, float)) or torch.is_tensor(scale):
                return float(scale)
        return None

    def save(self) -> Path:
        state = {"step": self.step, "data": self.loader.state_dict(), "world_size": self.world}
        return ckpt.save_checkpoint(self.engine, self.ckpt_root, self.step, state, self.rank, self.cfg.train.keep_checkpoints)
