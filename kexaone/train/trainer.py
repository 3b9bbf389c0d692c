"""The training loop shared by every stage: it minimises an objective (`kexaone.train.objectives`; pre-training's
CE + w_mtp x MTP + c_aux x aux by default, masked CE for SFT, ...) with gradient accumulation, bf16 autocast / fp32 /
fp8, clipping, the WSD schedule, MoE expert-bias balancing as an optimizer hook (`kexaone.train.balancing`; off with
`router_frozen`), NaN/inf step skipping, periodic held-out evaluation, checkpoints with exact resume, and
SIGINT/SIGTERM handling.

    Trainer(model, tokenizer, data, train_cfg, *, objective=None, eval_set=None, dist=None, out_dir=None,
            callbacks=(), optimizer=None, scheduler=None, label=None).fit() -> TrainResult

`label` names the run on the progress bar (the stage: "sft", "rl", ...; default the objective's name).

What it does not do: build the model, tokenizer or data (see `kexaone.train.run` and the stage modules), define a
loss (objectives), implement the optimizer, schedule, FP8 or checkpoint files
(`kexaone.train.{optim,schedule,fp8,checkpoint}`), or the MoE balance maths (`kexaone.model.balance`). Under
torch.distributed it runs data parallel (see `kexaone.train.distributed`); only rank 0 writes metrics and checkpoints.

Data protocol: `data` is an iterable of dicts with `input_ids` [B,T] int64, `labels` [B,T] int64 (-100 ignored)
and optionally `doc_ids` [B,T] int64 (packed documents: attention and targets never cross them) and `loss_mask`
[B,T] (1 = train on the token at that position). Objectives may read further keys. When `data` has `state_dict()` /
`load_state_dict()` its position is saved in checkpoints (exact resume needs this); `tokens_consumed` and a
curriculum stage name (`stage_name`, `stage` or `current_stage`) are logged when present.
"""

from __future__ import annotations

import collections
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kexaone.train.config import TrainConfig
from kexaone.train.distributed import DistInfo, all_reduce_sum, any_true, barrier
from kexaone.train.metrics import MetricsLogger
from kexaone.train.evaluation import EvalSet
from kexaone.train.objectives import Objective

HISTORY_SIZE = 10_000
"""Step records kept in memory for TrainResult.history (the JSONL file has them all)."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient; the last good checkpoint is left intact."""


# ---------------------------------------------------------------------------------------------- MFU helpers
def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                       reps: int = 3) -> float:
    """Matmul FLOP/s this device reaches in `dtype`: the best of a few n x n products (the MFU denominator)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / max(best, 1e-9)


def training_flops_per_token(config: Any, seq_len: int, include_mtp: bool = True) -> float:
    """Forward + backward model FLOPs per token: 3 x the forward count of kexaone.model.info (with the MTP block
    when it is trained)."""
    from kexaone.model.info import flops_per_token

    return 3.0 * float(flops_per_token(config, seq_len, include_mtp=include_mtp))


# ---------------------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    steps: int
    """Last completed optimizer step (counting skipped ones)."""
    tokens: int
    final_loss: float | None
    eval_loss: float | None = None
    eval_bpb: float | None = None
    """None when not evaluated or when the held-out set has no byte counts (SFT)."""
    interrupted: bool = False
    signal_name: str | None = None
    skipped_steps: int = 0
    checkpoint: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _stage_of(data: Any) -> str | None:
    for attr in ("stage_name", "stage", "current_stage"):
        v = getattr(data, attr, None)
        if isinstance(v, str):
            return v
        if v is not None and isinstance(getattr(v, "name", None), str):
            return v.name
    return None


# ---------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """Runs `train_cfg.total_steps(world)` optimizer steps of `model` on `data`.

    `model` is a KExaoneForCausalLM, materialised or on the meta device (then it is allocated shard by shard and
    initialised from `train_cfg.seed`, or streamed from `train_cfg.init_from`); `kexaone.train.parallelize` moves
    it to the device and applies FP8, expert parallelism and FSDP2/DDP. The trainer builds the optimizer and
    schedule (pass `optimizer`/`scheduler` to override).
    `callbacks` are called as `cb(trainer, step, record)` after every step on every rank.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, data: Iterable[dict[str, torch.Tensor]],
                 train_cfg: TrainConfig, *, eval_set: EvalSet | None = None, dist: DistInfo | None = None,
                 out_dir: str | Path | None = None, callbacks: Sequence[Callable[..., Any]] = (),
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                 objective: Objective | None = None, label: str | None = None) -> None:
        self.cfg = train_cfg
        self.tokenizer = tokenizer
        self.data = data
        self.eval_set = eval_set
        self.dist = dist or DistInfo()
        self.out_dir = Path(out_dir if out_dir is not None else train_cfg.out)
        self.callbacks = list(callbacks)
        self.device = self.dist.device
        self.config = model.config
        self.vocab_size = int(model.config.vocab_size)

        c = train_cfg
        if objective is None:
            from kexaone.train.objectives import PretrainObjective

            objective = PretrainObjective.for_model(model, c.mtp_loss_weight, c.aux_loss_coef)
        self.objective = objective
        # The run's name on the progress bar: the stage that runs this trainer ("sft", "rl", ...), else the
        # objective's name ("pretrain" for the default objective).
        self.label = label or getattr(objective, "name", None) or "train"
        self.total_steps = c.total_steps(self.dist.world_size)
        self.tokens_per_step = c.tokens_per_step(self.dist.world_size)

        if c.router_frozen:
            from kexaone.train.balancing import freeze_router

            freeze_router(model)
        from kexaone.train.parallelize import parallelize

        self.expert_parallel = bool(c.expert_parallel)
        # An MTP block that is not trained has no gradient; DDP must then be told to expect that.
        unused_mtp = getattr(model, "mtp", None) is not None and not self.objective.uses_mtp(model)
        self.parallel = parallelize(
            model, self.dist, strategy=c.parallel, expert_parallel=self.expert_parallel,
            fp8_format=c.fp8_format if c.precision == "fp8" else None, find_unused_parameters=unused_mtp,
            mixed_precision=torch.bfloat16 if c.precision == "bf16" and c.parallel == "fsdp" else None)
        self.parallel.materialize(seed=c.seed, init_from=getattr(c, "init_from", None))
        self.raw_model = model
        self.model = self.parallel.module
        self.optimizer = optimizer or self._build_optimizer()
        self.scheduler = scheduler or self._build_scheduler()
        self.balancer = None
        if not c.router_frozen:
            from kexaone.train.balancing import ExpertBalancer
            from kexaone.train.objectives import resolve_weights

            rate = resolve_weights(model.config, bias_update_rate=c.bias_update_rate)["bias_update_rate"]
            self.balancer = ExpertBalancer(model, rate).install(self.optimizer)

        from kexaone.train.checkpoint import CheckpointManager

        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", keep=c.keep_checkpoints)
        self.step = 0
        self.tokens_seen = 0
        self.bad_in_row = 0
        self.skipped_steps = 0
        self.stage: str | None = None
        self._metrics_offset: int | None = None
        self._stop_signal: str | None = None
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_SIZE)
        self.logger: MetricsLogger | None = None
        self._peak_flops: float | None = c.peak_flops
        self._flops_per_token: float | None = None

    # ------------------------------------------------------------------ construction helpers
    def _build_optimizer(self) -> torch.optim.Optimizer:
        from kexaone.train.optim import build_optimizer

        c = self.cfg
        # Training in bf16 means accepting bf16 rounding: Muon's Newton-Schulz follows (2.3-3.3x faster on CPUs that
        # multiply bf16 natively); fp32 training keeps fp32 iterations on CPU (see resolve_ns_dtype).
        ns_dtype = "bfloat16" if c.muon_ns_dtype == "auto" and c.precision == "bf16" else c.muon_ns_dtype
        return build_optimizer(self.raw_model, kind=c.optimizer, lr=c.lr, weight_decay=c.weight_decay,
                               betas=tuple(c.betas), momentum=c.momentum, adamw_lr=c.adamw_lr, ns_dtype=ns_dtype)

    def _build_scheduler(self) -> Any:
        from kexaone.train.schedule import WSDSchedule, make_scheduler

        c = self.cfg
        sched = WSDSchedule(max_lr=c.lr, total_steps=self.total_steps,
                            warmup_steps=c.resolved_warmup(self.dist.world_size), decay_fraction=c.decay_fraction,
                            decay_shape=c.decay_shape, min_lr_ratio=c.min_lr_ratio)
        return make_scheduler(self.optimizer, sched)

    def _autocast(self):
        if self.cfg.precision in ("bf16", "fp8"):
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit (collective: every rank must call it)."""
        from kexaone.train.checkpoint import capture_rng_state

        data_state = self.data.state_dict() if hasattr(self.data, "state_dict") else None
        if self.dist.distributed:
            import torch.distributed as tdist

            gathered: list[Any] = [None] * self.dist.world_size
            tdist.all_gather_object(gathered, data_state)
            data_states = gathered
        else:
            data_states = [data_state]
        if self.parallel.sharded:  # DCP-ready: each rank holds its shards (see kexaone.train.parallelize)
            model_sd = self.parallel.model_state()
            optim_sd = self.parallel.optimizer_state(self.optimizer)
        else:
            model_sd = self.raw_model.state_dict()
            optim_sd = self.optimizer.state_dict()
        return {
            "sharded": self.parallel.sharded,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "bad_in_row": self.bad_in_row,
            "skipped_steps": self.skipped_steps,
            "stage": self.stage,
            "model": model_sd,
            "optimizer": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            "data": data_states,
            "rng": capture_rng_state(),
            "metrics_offset": self.logger.position() if self.logger is not None else 0,
            "world_size": self.dist.world_size,
            "tokens_per_step": self.tokens_per_step,
            "torch_threads": torch.get_num_threads(),
            "train_config": self.cfg.to_dict(),
            "model_config": self.config.to_hf_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from kexaone.train.checkpoint import restore_rng_state

        saved_world = int(state.get("world_size", 1))
        if state.get("sharded"):
            # A Distributed Checkpoint reshards to any number of ranks; the run continues identically when the
            # global batch (tokens per step) is the same.
            saved_tokens = int(state.get("tokens_per_step", -1))
            if saved_tokens not in (-1, self.tokens_per_step):
                raise ValueError(f"checkpoint was written with {saved_tokens} tokens per step ({saved_world} "
                                 f"rank(s)) but this run has {self.tokens_per_step} ({self.dist.world_size} "
                                 "rank(s)); choose --batch-size so that batch size x ranks is unchanged")
            self.parallel.load_model_state(state["model"])
            self.parallel.load_optimizer_state(self.optimizer, state["optimizer"])
        elif saved_world != self.dist.world_size:
            raise ValueError(f"checkpoint was written by {saved_world} rank(s) but this run has "
                             f"{self.dist.world_size}; resume with the same number of processes")
        elif self.parallel.sharded:
            raise ValueError("this checkpoint holds full (unsharded) weights but this run shards them (FSDP or "
                             "expert parallelism); resume with the layout that wrote it")
        else:
            try:
                self.raw_model.load_state_dict(state["model"])
            except RuntimeError as e:  # missing/unexpected keys or shape mismatches
                raise ValueError(f"the checkpoint does not fit this model (resume with the same --preset, "
                                 f"model_overrides and tokenizer): {str(e).splitlines()[0]}") from None
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        threads = int(state.get("torch_threads", 0))
        if self.device.type == "cpu" and threads and threads != torch.get_num_threads():
            # CPU kernels may split reductions differently with another thread count: continue with the
            # checkpointed run's count so the result stays bit-identical to an uninterrupted run.
            warnings.warn(f"using {threads} torch thread(s) as the checkpointed run did (not "
                          f"{torch.get_num_threads()}), for a bit-exact continuation", stacklevel=2)
            torch.set_num_threads(threads)
        # Loader states are world-size independent (each holds the global position): another world size reads
        # rank 0's.
        data_state = state["data"][self.dist.rank if saved_world == self.dist.world_size else 0]
        if data_state is not None:
            if not hasattr(self.data, "load_state_dict"):
                raise ValueError("checkpoint holds a data-loader position but this data source cannot restore one")
            self.data.load_state_dict(data_state)
        restore_rng_state(state["rng"])
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.bad_in_row = int(state.get("bad_in_row", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.stage = state.get("stage")
        self._metrics_offset = int(state.get("metrics_offset", 0))

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step. Full layouts: rank 0 writes. Sharded layouts (FSDP, expert
        parallelism): every rank writes its shards through Distributed Checkpoint into the same atomic directory."""
        state = self.state_dict()
        if state["sharded"]:
            sharded = {k: state.pop(k) for k in ("model", "optimizer")}
            path = self.ckpt.save(self.step, state, sharded=sharded)
        else:
            path = self.ckpt.save(self.step, state) if self.dist.is_main else None
        barrier(self.dist)
        return path if self.dist.is_main else None

    def resume(self, path: str | Path | None = None) -> int:
        """Load the latest (or the given) checkpoint; returns the step it continues after."""
        target = Path(path) if path is not None else self.ckpt.latest()
        if target is None:
            raise FileNotFoundError(f"--resume: no checkpoint found in {self.ckpt.directory}")
        state = self.ckpt.load(target)
        if state.get("sharded"):
            # Fill this layout's (sharded) state dicts in place from the shards, whatever world size wrote them.
            # Building the optimizer's target takes one zero-learning-rate step to create its state; the expert
            # bias update must not run on it.
            if self.balancer is not None:
                self.balancer.remove()
            try:
                sharded = {"model": self.parallel.model_state(),
                           "optimizer": self.parallel.optimizer_state(self.optimizer)}
            finally:
                if self.balancer is not None:
                    self.balancer.install(self.optimizer)
            self.ckpt.load_sharded(target, sharded)
            state.update(sharded)
        self.load_state_dict(state)
        return self.step

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._stop_signal is not None:
                # A second signal: the user does not want to wait. Checkpoints are atomic, so the last complete
                # one stays valid.
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(128 + signum)
            self._stop_signal = name
            warnings.warn(f"{name} received: finishing the current step, saving a checkpoint, then exiting "
                          "(send it again to stop at once)", stacklevel=1)

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    # ------------------------------------------------------------------ one step
    def _check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        ids = batch["input_ids"]
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = hi if hi >= self.vocab_size else lo
            raise ValueError(f"batch contains token id {bad} outside the model's vocabulary [0, {self.vocab_size}); "
                             "was the data tokenized with a different tokenizer?")

    def _next_batch(self, data_iter: Any) -> dict[str, torch.Tensor]:
        try:
            batch = next(data_iter)
        except StopIteration:
            raise ValueError(f"the training data ran out at step {self.step + 1} of {self.total_steps}; "
                             "give more data or fewer steps/tokens") from None
        self._check_batch(batch)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}

    def train_step(self, data_iter: Any) -> dict[str, Any]:
        """One optimizer step over grad_accum micro-batches (on every rank); returns the step's log record.

        Each objective term is a sum over the step's units divided by their count over ALL micro-batches and
        ranks (`Objective.denominators`, all-reduced before the first backward), not a mean of micro-batch means:
        packed rows lose a different number of targets at document boundaries, and weighting each micro-batch by
        its unit count makes accumulation and data parallelism equal to one big batch."""
        c = self.cfg
        W = self.dist.world_size
        terms = self.objective.terms
        self.model.train()
        batches = [self._next_batch(data_iter) for _ in range(c.grad_accum)]
        counts = [self.objective.denominators(b) for b in batches]
        totals = dict(zip([t.name for t in terms], (max(1.0, x) for x in all_reduce_sum(
            [float(sum(n.get(t.name, 0.0) for n in counts)) for t in terms], self.dist))))
        sums: dict[str, Any] = {t.name: 0.0 for t in terms}
        extra: dict[str, float] = {}
        for micro, batch in enumerate(batches):
            with self.parallel.no_sync(skip_sync=micro < c.grad_accum - 1):
                with self._autocast():
                    values, metrics = self.objective.loss(self.model, batch)
                total = None
                for t in terms:
                    # Each rank's gradient is averaged over W ranks by DDP/FSDP, hence the factor W.
                    scale = (counts[micro][t.name] if t.mean else 1.0) * W / totals[t.name]
                    part = values[t.name] * scale
                    sums[t.name] = sums[t.name] + part.detach() / W
                    total = t.weight * part if total is None else total + t.weight * part
                total.backward()
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + float(v) / (c.grad_accum * W)
        keys = [t.name for t in terms] + sorted(extra)
        local = torch.stack([torch.as_tensor(sums[t.name], dtype=torch.float32) for t in terms]).cpu().tolist()
        local += [extra[k] for k in sorted(extra)]
        # Pre-clip global norm (over every rank's shards); a non-finite norm leaves the gradients untouched and the
        # step is skipped below.
        grad_norm = self.parallel.clip_grad_norm_(c.grad_clip if c.grad_clip > 0 else None)
        bad = any_true(not all(math.isfinite(x) for x in local) or not math.isfinite(grad_norm), self.dist)
        vals = dict(zip(keys, all_reduce_sum(local, self.dist)))
        loss = terms[0].weight * vals[terms[0].name]  # 1.0 * x == x: pre-training's numbers are unchanged
        for t in terms[1:]:
            loss = loss + t.weight * vals[t.name]
        vals["loss"] = loss
        # The schedule's LR (`lr`): a Muon group's when there is one (AdamW groups may run at their own adamw_lr).
        groups = self.optimizer.param_groups
        lr = next((g["lr"] for g in groups if g.get("kind") == "muon"), groups[0]["lr"])
        record: dict[str, Any] = {"kind": "train", "step": self.step + 1, **vals, "lr": lr, "grad_norm": grad_norm}
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            if self.balancer is not None:
                self.balancer.discard()  # this step's routed counts must not drive the bias update
            self.bad_in_row += 1
            self.skipped_steps += 1
            record["skipped"] = True
            warnings.warn(f"step {self.step + 1}: non-finite loss or gradient (loss={vals.get('loss')}, "
                          f"grad_norm={grad_norm}); step skipped ({self.bad_in_row} in a row)", stacklevel=2)
        else:
            self.bad_in_row = 0
            self.optimizer.step()  # the ExpertBalancer's post-step hook updates the expert biases here
            self.optimizer.zero_grad(set_to_none=True)
            stats = self.balancer.pop_stats() if self.balancer is not None else None
            if stats is not None and stats.max_vio:
                record["max_vio"] = stats.mean_max_vio
                record["max_vio_layers"] = list(stats.max_vio)
                self._last_load = stats.load
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        record["tokens"] = self.tokens_seen
        if hasattr(self.data, "tokens_consumed"):
            record["data_tokens"] = int(self.data.tokens_consumed)
        return record

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Held-out CE (nats per scored token), perplexity and bits per byte over the EvalSet, scored by
        kexaone.model.scoring.token_logprobs (batches sharded over ranks under DDP). `bpb` is left out when the
        set does not know its bytes (n_bytes 0, e.g. SFT's conversations scored on the assistant tokens only):
        a record never carries a NaN for a number that was not measured."""
        if self.eval_set is None or not len(self.eval_set):
            return None
        from kexaone.model.scoring import bits_per_byte
        from kexaone.train.evaluation import heldout_nats

        self.model.eval()
        shard = self.parallel.eval_sharded_batches
        batches = self.eval_set.batches
        mine = batches[self.dist.rank::self.dist.world_size] if shard else batches
        nats, count = heldout_nats(self.raw_model if shard else self.model, mine, self.device, self._autocast)
        if shard:
            nats, count = all_reduce_sum([nats, float(count)], self.dist)
        self.model.train()
        ce = nats / max(count, 1)
        m = {"loss": ce}
        if self.eval_set.n_bytes:
            m["bpb"] = bits_per_byte(nats, self.eval_set.n_bytes)
        m["ppl"] = math.exp(min(ce, 50.0))
        return m

    # ------------------------------------------------------------------ the loop
    def _throughput(self, dt: float, steps: int) -> tuple[float, float | None]:
        tok_s = self.tokens_per_step * steps / max(dt, 1e-9)
        if self._flops_per_token is None:
            try:
                self._flops_per_token = training_flops_per_token(self.config, self.cfg.seq_len,
                                                                 include_mtp=self.objective.uses_mtp(self.raw_model))
            except Exception as e:  # MFU is informative only; never stop a run for it
                warnings.warn(f"MFU disabled: could not count model FLOPs ({e})", stacklevel=2)
                self._flops_per_token = float("nan")
        dtype = torch.float32 if self.cfg.precision == "fp32" else torch.bfloat16
        if self._peak_flops is None:
            self._peak_flops = measure_peak_flops(self.device, dtype)
        mfu = tok_s * self._flops_per_token / (self._peak_flops * self.dist.world_size)
        if mfu > 1.0 and self.cfg.peak_flops is None:
            # The peak was measured while the (shared) machine was busier than now: a utilisation above 100% only
            # says the denominator is stale. The peak is the best matmul rate seen, so measure again and keep the max.
            self._peak_flops = max(self._peak_flops, measure_peak_flops(self.device, dtype))
            mfu = tok_s * self._flops_per_token / (self._peak_flops * self.dist.world_size)
        return tok_s, (mfu if math.isfinite(mfu) else None)

    def fit(self) -> TrainResult:
        """Train until total_steps, an interruption (checkpoint saved, `interrupted=True`) or divergence
        (TrainingDiverged raised; checkpoints are untouched)."""
        c = self.cfg
        if c.resume:
            self.resume()
        self.logger = MetricsLogger(self.out_dir, enabled=self.dist.is_main, tensorboard=c.tensorboard,
                                    resume_offset=self._metrics_offset if c.resume else None)
        if not c.resume:
            self.logger.log({"kind": "config", "step": 0, "train_config": c.to_dict(),
                             "model_config": self.config.to_hf_dict(), "world_size": self.dist.world_size,
                             "total_steps": self.total_steps, "tokens_per_step": self.tokens_per_step})
        if c.peak_flops is None and self.dist.is_main:
            dtype = torch.float32 if c.precision == "fp32" else torch.bfloat16
            self._peak_flops = measure_peak_flops(self.device, dtype)
        pbar = None
        if c.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            pbar = tqdm(total=self.total_steps, initial=self.step, desc=self.label, unit="step", dynamic_ncols=True)
        old_handlers = self._install_signal_handlers()
        data_iter = iter(self.data)
        last_saved = self.step if c.resume else -1
        result_ckpt = None
        t_last, steps_since = time.perf_counter(), 0
        last_record: dict[str, Any] | None = None
        eval_metrics = None
        try:
            while self.step < self.total_steps:
                record = self.train_step(data_iter)
                stage = _stage_of(self.data)  # the stage of the batches this step consumed
                if stage is not None and stage != self.stage:
                    # "step" = the steps finished before the stage began (where its boundary line is drawn).
                    self.logger.log({"kind": "stage", "step": self.step - 1, "stage": stage,
                                     "tokens": self.tokens_seen - self.tokens_per_step})
                    self.stage = stage
                if stage is not None:
                    record["stage"] = stage
                steps_since += 1
                if self.dist.is_main and (self.step % c.log_every == 0 or self.step == self.total_steps):
                    now = time.perf_counter()
                    tok_s, mfu = self._throughput(now - t_last, steps_since)
                    t_last, steps_since = now, 0
                    record["tok_per_s"] = tok_s
                    if mfu is not None:
                        record["mfu"] = mfu
                    self.logger.log(record)
                    load = getattr(self, "_last_load", None)
                    if load is not None and not record.get("skipped"):
                        self.logger.save_expert_load(self.step, load)
                    if pbar is not None:
                        post = {"loss": f"{record.get('loss', float('nan')):.4f}", "tok/s": f"{tok_s:,.0f}"}
                        if mfu is not None:
                            post["mfu"] = f"{100 * mfu:.1f}%"
                        pbar.set_postfix(post, refresh=False)
                if pbar is not None:
                    pbar.update(1)
                if self.bad_in_row >= c.max_bad_steps:
                    raise TrainingDiverged(
                        f"{self.bad_in_row} consecutive steps had a non-finite loss or gradient (last at step "
                        f"{self.step}); stopping. The last good checkpoint in {self.out_dir / 'checkpoints'} is "
                        "intact: lower --lr, check the data, or use --precision fp32, then --resume.")
                self.history.append(record)
                last_record = record
                if c.eval_every and self.step % c.eval_every == 0 and self.step < self.total_steps:
                    eval_metrics = self._eval_and_log()
                for cb in self.callbacks:
                    cb(self, self.step, record)
                stop = any_true(self._stop_signal is not None, self.dist)
                if (c.save_every and self.step % c.save_every == 0) or stop:
                    result_ckpt = self.save_checkpoint()
                    last_saved = self.step
                if stop:
                    sig = self._stop_signal or "signal on another rank"
                    self.logger.log({"kind": "interrupt", "step": self.step, "signal": sig})
                    return self._result(last_record, eval_metrics, result_ckpt, interrupted=True, sig=sig)
            eval_metrics = self._eval_and_log() or eval_metrics
            if last_saved != self.step:
                result_ckpt = self.save_checkpoint()
            return self._result(last_record, eval_metrics, result_ckpt, interrupted=False, sig=None)
        finally:
            self._restore_signal_handlers(old_handlers)
            if pbar is not None:
                pbar.close()
            self.logger.close()

    def _eval_and_log(self) -> dict[str, float] | None:
        m = self.evaluate()
        if m is not None:
            self.logger.log({"kind": "eval", "step": self.step, "tokens": self.tokens_seen, **m})
        return m

    def _result(self, last: dict[str, Any] | None, ev: dict[str, float] | None, ckpt: Path | None,
                interrupted: bool, sig: str | None) -> TrainResult:
        return TrainResult(steps=self.step, tokens=self.tokens_seen,
                           final_loss=None if last is None else last.get("loss"),
                           eval_loss=None if ev is None else ev["loss"], eval_bpb=None if ev is None else ev.get("bpb"),
                           interrupted=interrupted, signal_name=sig, skipped_steps=self.skipped_steps,
                           checkpoint=ckpt, history=list(self.history))
