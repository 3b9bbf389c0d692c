"""`kexaone sft`: supervised fine-tuning on chat conversations (reasoning and non-reasoning, tool use), the full
model or LoRA adapters through peft; and `run_sft(cfg)`, the same run as a Python call (what the speedrun uses).

A thin stage over the shared scaffold and trainer (`kexaone.train.run`, `kexaone.train.trainer`): the same
Muon/AdamW, schedule, precision, checkpoints, exact resume, signals and torchrun as pre-training. What is SFT's own:
- data: `--data` conversation sources (kexaone.data.conversations: `messages` or `prompt`/`completion` records,
  rendered by the chat template, loss mask on the assistant bodies only), or without --data the embedded default
  set (kexaone.data.synthetic.chat_set, train split; its held-out split is the evaluation set). Whole
  conversations are packed best-fit (kexaone.data.docpacking) and never cut; a longer one is skipped and reported.
  `--rehearsal` pre-training text sources take `--rehearsal-share` of the rows (loss on every token, the
  pre-training held-out documents left out) so SFT keeps the base model's language modelling.
- the objective `kexaone.train.sft_objective.SFTObjective`: CE on the masked-in (assistant) targets + 0.05 x the
  MTP CE on the same targets (so MTP self-speculative decoding keeps paying after SFT) + the MoE aux loss. The
  MTP acceptance rate of greedy speculative decoding on held-out prompts is measured before and after training
  (result.json `mtp_acceptance`; the training data's prompts when there is no evaluation data).
- length: --max-steps, else --tokens, else --epochs (default 1) passes over the packed rows.
- LoRA (`--lora-rank R`): peft adapters on attention / dense / shared-expert projections (routed experts with
  `--lora-targets ... experts`); AdamW over the adapter parameters only; the base model, the MTP head and the
  routers are frozen (no MTP loss, no expert-bias update: the adapter must apply to the unchanged base).
  Writes `<out>/adapter` (peft format, loads onto transformers' ExaoneMoe); `--merge` also writes the merged model
  to `<out>/model`. Without --merge no `<out>/model` is written (the base is `--init-from`).

Exit codes: 0 finished; 130 interrupted by SIGINT/SIGTERM after saving a checkpoint (continue with `--resume`); 1
training diverged; 2 bad input (the CLI maps ValueError / FileNotFoundError).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kexaone.train.config import (CheckpointSection, DataSection, ModelSection, ObjectiveSection, OptimSection,
                                  ParallelSection, StageConfig, _is_num, opt)

HELP = ("Supervised fine-tuning on chat conversations (reasoning / non-reasoning, tool use); full or LoRA (peft), "
        "same trainer as pre-training.")

THINKING_MODES = ("on", "off", "mixed")
LORA_GROUPS = ("attention", "dense", "shared", "experts")
"""Target groups of kexaone.model.lora (kept here so building a config imports no torch; tested equal)."""


# ---------------------------------------------------------------------------------------------- config
@dataclass
class SFTSection:
    """supervised fine-tuning"""

    epochs: float | None = None
    """passes over the packed SFT rows (default 1 when neither --max-steps nor --tokens is given)"""
    thinking: str = opt("mixed", choices=THINKING_MODES)
    """reasoning mode of the rendered conversations: on, off (reasoning dropped, empty think block) or mixed (each
    record's enable_thinking, true when absent)"""
    lora_rank: int = 0
    """train LoRA adapters of this rank instead of the full model (0 = full fine-tuning)"""
    lora_alpha: float | None = None
    """LoRA alpha (default: the rank, i.e. scale 1)"""
    lora_targets: list[str] = opt([], cli=False)
    """LoRA target groups: attention, dense, shared, experts (default attention dense shared)"""
    merge: bool = False
    """with --lora-rank: also write the adapter merged into the base weights to <out>/model (without it a LoRA run
    writes only <out>/adapter, to apply to the --init-from base)"""
    default_examples: int = 4000
    """training conversations of the embedded default set (used when --data is empty)"""
    acceptance_prompts: int = 8
    """held-out prompts on which the MTP acceptance rate is measured before and after SFT (0 = skip)"""
    rehearsal: list[str] = opt([], metavar="PATH[@WEIGHT]", append=True)
    """pre-training text source mixed into the SFT rows (whole documents, loss on every token), repeatable: keeps
    the language modelling that SFT alone washes out"""
    rehearsal_share: float = 0.25
    """fraction of the packed rows drawn from the --rehearsal sources (when there are any)"""
    rehearsal_heldout: float = 0.01
    """documents of each rehearsal source never trained on, so the pre-training held-out split stays held out: a
    fraction < 1 by content hash (what `kexaone pretrain --data` holds out), a whole number n >= 1 the n documents
    per tag (the speedrun's curriculum holds out 40)"""

    def _check_sft(self, need: Any) -> None:
        need(self.epochs is None or (isinstance(self.epochs, (int, float)) and not isinstance(self.epochs, bool)
                                     and math.isfinite(self.epochs) and self.epochs > 0), "epochs",
             "must be a number > 0 (or None)")
        need(self.thinking in THINKING_MODES, "thinking", f"choose one of {list(THINKING_MODES)}")
        need(isinstance(self.lora_rank, int) and self.lora_rank >= 0, "lora_rank", "must be an integer >= 0")
        need(isinstance(self.lora_targets, list) and all(t in LORA_GROUPS for t in self.lora_targets),
             "lora_targets", f"choose groups from {list(LORA_GROUPS)}")
        need(not self.lora_targets or self.lora_rank > 0, "lora_targets", "needs --lora-rank > 0")
        need(not self.lora_targets or set(self.lora_targets) != {"experts"}, "lora_targets",
             "needs at least one module group besides experts (attention, dense, shared)")
        need(self.lora_alpha is None or (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0),
             "lora_alpha", "must be > 0 (or None)")
        need(not self.merge or self.lora_rank > 0, "merge", "merges a LoRA adapter: needs --lora-rank > 0")
        need(isinstance(self.default_examples, int) and self.default_examples >= 1, "default_examples",
             "must be an integer >= 1")
        need(isinstance(self.acceptance_prompts, int) and self.acceptance_prompts >= 0, "acceptance_prompts",
             "must be an integer >= 0")
        need(isinstance(self.rehearsal, list) and all(isinstance(r, str) and r for r in self.rehearsal),
             "rehearsal", "must be a list of 'path[@weight]' strings")
        need(_is_num(self.rehearsal_share) and 0.0 <= self.rehearsal_share < 1.0, "rehearsal_share",
             "must be a number in [0, 1)")
        need(_is_num(self.rehearsal_heldout) and self.rehearsal_heldout >= 0
             and (self.rehearsal_heldout < 1 or float(self.rehearsal_heldout).is_integer()), "rehearsal_heldout",
             "must be a fraction in [0, 1) or a whole number of documents per tag")

    def rehearsal_split(self) -> float | int:
        """--rehearsal-heldout as TokenShards.heldout_mask takes it (a fraction, or an int count per tag)."""
        h = self.rehearsal_heldout
        return int(h) if h >= 1 else float(h)


@dataclass
class SFTConfig(ModelSection, DataSection, OptimSection, ObjectiveSection, ParallelSection, CheckpointSection,
                SFTSection, StageConfig):
    """An SFT run. Field names are the keys of a `--config` file and (with `-` for `_`) the CLI flags."""

    seq_len: int = 512
    """tokens per packed row (--max-seq-len): a longer conversation is skipped and reported, never cut"""
    packing: str = "document"
    decay_fraction: float = 0.5
    out: str = "runs/sft"

    def _check_stage(self, need: Any) -> None:
        need(self.packing == "document", "packing", "SFT packs whole conversations: must be 'document'")
        if self.lora_rank:
            need(self.parallel == "ddp", "parallel", "LoRA runs with parallel='ddp' only")
            need(not self.expert_parallel, "expert_parallel", "cannot be combined with LoRA")
            need(self.precision != "fp8", "precision", "LoRA runs in bf16 or fp32")


SFT_SECTIONS = (ModelSection, DataSection, SFTSection, OptimSection, ObjectiveSection, ParallelSection,
                CheckpointSection)
"""The sections of SFTConfig in CLI order."""


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kexaone.train.cli_fields import add_config_arguments

    parser.add_argument("--config", metavar="FILE",
                        help="JSON or TOML file of SFTConfig fields (flat or one table per section); flags override it")
    add_config_arguments(parser, SFT_SECTIONS, skip=("packing", "truncate_documents"), config_cls=SFTConfig)
    parser.add_argument("--max-seq-len", dest="seq_len", type=int, default=None, metavar="T",
                        help="the same as --seq-len: tokens per packed row (default 512)")
    parser.add_argument("--lora-targets", dest="lora_targets", nargs="+", default=None, metavar="GROUP",
                        choices=LORA_GROUPS, help="LoRA target groups (default attention dense shared; add experts "
                                                  "for the routed experts)")


def config_from_args(args: argparse.Namespace) -> SFTConfig:
    from kexaone.train import cli_fields

    return cli_fields.config_from_args(SFTConfig, args)


def run(args: argparse.Namespace) -> int:
    from kexaone.train.run import run_stage_command

    return run_stage_command("sft", SFTConfig, args, run_sft, summarise=_summarise)


def _summarise(cfg: SFTConfig, result: SFTResult) -> Any:
    """SFT's own closing lines (rank 0): conversations skipped as too long, MTP acceptance, the adapter; returns
    the scaffold's StageResult for `report`."""
    if result.rank == 0:
        for s in result.sources:
            if s["skipped_too_long"]:
                print(f"skipped {s['skipped_too_long']} conversation(s) of {s['spec']} longer than --max-seq-len "
                      f"{cfg.seq_len} (the longest needs {s['longest_skipped_tokens']} tokens), e.g. "
                      f"{', '.join(s['skipped_ids'])}", file=sys.stderr)
        acc = result.mtp_acceptance
        if acc.get("before") is not None or acc.get("after") is not None:
            print(f"MTP acceptance (greedy, {acc.get('prompts')} held-out prompts): before {_pct(acc.get('before'))}"
                  f", after {_pct(acc.get('after'))}")
        if result.adapter_dir is not None:
            print(f"adapter: {result.adapter_dir}")
            if result.stage.model_dir is None:  # say where the weights are, as no <out>/model was written
                print(f"(no {result.stage.out_dir / 'model'} without --merge: the adapter is in peft format on the "
                      f"base {cfg.init_from}; load it with kexaone.model.lora.load_adapter or peft, or run with "
                      "--merge to also get the merged model there)")
    return result.stage


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


# ---------------------------------------------------------------------------------------------- objective
def sft_objective(model: Any, cfg: SFTConfig) -> Any:
    """The run's objective: weights from the model config unless the run overrides them; LoRA trains no MTP (its
    head is frozen) and no aux loss (the routers are frozen)."""
    from kexaone.train.objectives import resolve_weights
    from kexaone.train.sft_objective import SFTObjective

    w = resolve_weights(model.config, mtp_loss_weight=cfg.mtp_loss_weight, aux_loss_coef=cfg.aux_loss_coef)
    if cfg.lora_rank:
        return SFTObjective(0.0, 0.0, has_mtp=False)
    return SFTObjective(w["mtp_loss_weight"], w["aux_loss_coef"], has_mtp=getattr(model, "mtp", None) is not None)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class SFTData:
    batches: Any
    """kexaone.data.docpacking.DocumentPackedBatches over the training conversations."""
    sources: list[Any]
    """ConversationShards per training source."""
    rehearsal: list[dict[str, Any]]
    """Per --rehearsal source: spec, documents, training documents, tokens, row share."""
    eval_sources: list[Any]
    """ConversationShards of the evaluation conversations (may be empty)."""
    prompts: list[tuple[list[dict], list[dict] | None, bool]]
    """(messages before the first assistant turn, tools, enable_thinking) of held-out conversations."""
    rows_per_epoch: int


def default_set_files(cfg: SFTConfig) -> dict[str, Any]:
    """The embedded default SFT set written as train.jsonl / heldout.jsonl under the cache, read back through the
    same conversation reader as user data. The set is built every time (well under a second) and its directory is
    named by a hash of its content, so a changed generator (new examples, strings) never trains on a stale copy."""
    import hashlib

    from kexaone.data.synthetic.chat_set import build_chat_set, chat_set_texts, write_chat_set
    from kexaone.train.run import cache_root

    chat_set = build_chat_set(n_train=cfg.default_examples, seed=cfg.seed)
    texts = chat_set_texts(chat_set, cfg.seed)
    digest = hashlib.sha256((texts["train"] + "\0" + texts["heldout"]).encode()).hexdigest()[:16]
    d = cache_root() / "sft" / f"default-{cfg.default_examples}-seed{cfg.seed}-{digest}"
    if not ((d / "train.jsonl").is_file() and (d / "heldout.jsonl").is_file()):
        write_chat_set(d, chat_set, cfg.seed, texts=texts)
    return {"train": d / "train.jsonl", "heldout": d / "heldout.jsonl"}


def rows_per_epoch(sources: Sequence[Any], seq_len: int, chunk_docs: int) -> int:
    """Packed rows one pass over every source takes: best-fit decreasing over chunks of chunk_docs conversations,
    as the packer does (the chunks of a real epoch hold other conversations, so this is close, not exact)."""
    from kexaone.data.docpacking import best_fit_decreasing

    total = 0
    for s in sources:
        lengths = [int(n) + 1 for n in s.shards.doc_lengths()]
        for i in range(0, len(lengths), chunk_docs):
            total += len(best_fit_decreasing(lengths[i:i + chunk_docs], seq_len))
    return max(1, total)


CHUNK_DOCS = 256


def build_sft_data(cfg: SFTConfig, tok: Any, dist: Any) -> SFTData:
    """Training batches, evaluation conversations and held-out prompts of a run. Rank 0 encodes first (the shards
    are cached by content), then the other ranks read the cache."""
    from kexaone.data.conversations import build_conversation_shards, iter_conversations
    from kexaone.data.docpacking import DocumentPackedBatches
    from kexaone.train.distributed import barrier
    from kexaone.train.run import cache_root

    cache = cache_root() / "tokens"
    if cfg.data:
        train_specs, eval_specs = list(cfg.data), list(cfg.eval_data)
    else:
        files = default_set_files(cfg) if dist.is_main else None
        barrier(dist)
        files = files or default_set_files(cfg)
        train_specs, eval_specs = [str(files["train"])], list(cfg.eval_data) or [str(files["heldout"])]

    def build(specs: list[str]) -> list[Any]:
        return [build_conversation_shards(s, tok, cache, cfg.seq_len, cfg.thinking) for s in specs]

    sources = build(train_specs) if dist.is_main else []
    evals = build(eval_specs) if dist.is_main else []
    barrier(dist)
    if not dist.is_main:
        sources, evals = build(train_specs), build(eval_specs)
    mixture, heldout, rehearsal = rehearsal_mixture(cfg, tok, [(s.shards, s.weight) for s in sources], dist)
    global_rows = cfg.batch_size * dist.world_size
    batches = DocumentPackedBatches(mixture, cfg.seq_len, global_rows, seed=cfg.seed, rank=dist.rank,
                                    world_size=dist.world_size, heldout=heldout, truncate=True, chunk_docs=CHUNK_DOCS)
    prompts = []
    # Held-out prompts for the MTP acceptance rate: the evaluation conversations, else the training data's.
    for spec in eval_specs or train_specs:
        for conv in iter_conversations(spec, cfg.thinking):
            if len(prompts) >= cfg.acceptance_prompts:
                break
            first = next(i for i, m in enumerate(conv.messages) if m.get("role") == "assistant")
            if first > 0:
                prompts.append((conv.messages[:first], conv.tools, conv.enable_thinking))
    # An epoch is one pass over the conversations; rehearsal rows come on top of theirs.
    conv_share = 1.0 - (cfg.rehearsal_share if rehearsal else 0.0)
    epoch_rows = math.ceil(rows_per_epoch(sources, cfg.seq_len, CHUNK_DOCS) / conv_share)
    return SFTData(batches, sources, rehearsal, evals, prompts, epoch_rows)


def rehearsal_mixture(cfg: SFTConfig, tok: Any, conversations: list[tuple[Any, float]], dist: Any
                      ) -> tuple[list[tuple[Any, float]], list[float | int], list[dict[str, Any]]]:
    """(shards, weight) of the packer, the held-out split per source, and a summary per rehearsal source. Without
    --rehearsal: the conversations alone. With it, the conversation sources share 1 - rehearsal_share of the rows
    and the rehearsal sources (pre-training text, tokenized as `kexaone pretrain` does, cached) the rest, each
    group by its specs' weights. Conversations hold nothing out (their held-out set is separate); a rehearsal source
    holds out --rehearsal-heldout, the pre-training run's split, so held-out loss stays on unseen documents."""
    from kexaone.data.sources import parse_spec
    from kexaone.train.distributed import barrier
    from kexaone.train.pretrain import tokenize_sources

    if not cfg.rehearsal or cfg.rehearsal_share <= 0:
        return conversations, [0] * len(conversations), []
    texts = tokenize_sources(cfg.rehearsal, tok, cfg.workers, dist.is_main, lambda: barrier(dist))
    split = cfg.rehearsal_split()

    def shared(group: list[tuple[Any, float]], share: float) -> list[tuple[Any, float]]:
        total = sum(w for _, w in group)
        if total <= 0:
            raise ValueError(f"the weights of {len(group)} SFT source(s) sum to {total}; give weights > 0")
        return [(s, share * w / total) for s, w in group]

    mixture = shared(conversations, 1.0 - cfg.rehearsal_share) + shared(texts, cfg.rehearsal_share)
    summary = []
    for spec, (s, share) in zip(cfg.rehearsal, mixture[len(conversations):]):
        trained = len(s.split_indices(split)[0])
        if not trained:
            raise ValueError(f"--rehearsal {parse_spec(spec).path}: every document is held out by "
                             f"--rehearsal-heldout {cfg.rehearsal_heldout}")
        summary.append({"spec": spec, "documents": int(s.num_documents), "training_documents": int(trained),
                        "tokens": int(s.num_tokens), "row_share": share, "heldout": split})
    return mixture, [0] * len(conversations) + [split] * len(texts), summary


def eval_set_from_conversations(sources: Sequence[Any], batch_size: int, max_rows: int) -> Any:
    """An EvalSet of whole held-out conversations, one per row (padded), labels -100 outside the assistant
    tokens: its loss is the CE per assistant token. None when there is none. (n_bytes 0: no bits per byte.)"""
    import torch

    from kexaone.train.evaluation import EvalSet

    rows = []
    for s in sources:
        for d in range(s.shards.num_documents):
            if len(rows) >= max_rows:
                break
            ids = torch.from_numpy(s.shards.document(d).astype("int64"))
            mask = torch.from_numpy(s.shards.loss_mask(d).astype("int64"))
            rows.append((ids, ids.masked_fill(mask == 0, -100)))
    if not rows:
        return None
    pad = int(sources[0].shards.pad_id)
    batches, n_tok = [], 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        T = max(len(r[0]) for r in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        labels = torch.full((len(chunk), T), -100, dtype=torch.long)
        for b, (x, y) in enumerate(chunk):
            ids[b, :len(x)], labels[b, :len(y)] = x, y
            n_tok += int((y[1:] != -100).sum())
        batches.append({"input_ids": ids, "labels": labels, "doc_ids": torch.zeros_like(ids)})
    return EvalSet(batches, n_tok, 0)


# ---------------------------------------------------------------------------------------------- MTP acceptance
def mtp_acceptance(model: Any, tok: Any, prompts: Sequence[tuple[list[dict], Any, bool]], max_new_tokens: int = 48,
                   draft_tokens: int = 1) -> float | None:
    """Share of MTP drafts the main model accepts in greedy self-speculative decoding of `prompts` (accepted /
    drafted over all of them); None without prompts or without an MTP head. The RNG state is left unchanged."""
    import torch

    from kexaone.engine.chat_io import chat_prompt
    from kexaone.engine.engine import Engine

    if not prompts or getattr(model, "mtp", None) is None:
        return None
    engine = Engine(model, tok)
    drafted = accepted = 0
    with torch.random.fork_rng(devices=[]):
        for messages, tools, thinking in prompts:
            text, _ = chat_prompt(messages, tools=tools, enable_thinking=thinking)
            res = engine.generate(tok.encode(text), max_new_tokens=max_new_tokens, temperature=0.0,
                                  speculative="mtp", draft_tokens=draft_tokens)
            drafted += res.stats.draft_tokens
            accepted += res.stats.accepted_tokens
    return accepted / drafted if drafted else None


# ---------------------------------------------------------------------------------------------- Python API
@dataclass
class SFTResult:
    stage: Any
    """kexaone.train.run.StageResult (model_dir: <out>/model, None for LoRA without --merge)."""
    adapter_dir: Any = None
    sources: list[dict] = field(default_factory=list)
    mtp_acceptance: dict[str, Any] = field(default_factory=dict)
    steps_per_epoch: float | None = None

    @property
    def rank(self) -> int:
        return self.stage.rank

    @property
    def model_dir(self) -> Any:
        return self.stage.model_dir


def resolve_steps(cfg: SFTConfig, rows_per_epoch: int, world_size: int) -> int:
    """--max-steps, else --tokens, else --epochs (default 1) x rows per epoch / rows per step (rounded up)."""
    if cfg.max_steps is not None or cfg.tokens is not None:
        return cfg.total_steps(world_size)
    rows_per_step = cfg.batch_size * cfg.grad_accum * world_size
    return max(1, math.ceil((cfg.epochs if cfg.epochs is not None else 1.0) * rows_per_epoch / rows_per_step))


def run_sft(cfg: SFTConfig, callbacks: Sequence[Callable[..., Any]] = ()) -> SFTResult:
    """Run (or resume) one SFT run end to end; see the module docstring. Under torchrun every rank calls this;
    rank 0 writes. Raises TrainingDiverged when the loss keeps being non-finite."""
    import dataclasses
    import json
    from pathlib import Path

    from kexaone.train.run import finish_stage, stage_run
    from kexaone.train.trainer import Trainer
    from kexaone.utils.io import atomic_write_text

    with stage_run(cfg) as run:
        tok, model, dist = run.tokenizer, run.model, run.dist
        data = build_sft_data(cfg, tok, dist)
        steps = resolve_steps(cfg, data.rows_per_epoch, dist.world_size)
        lora = cfg.lora_rank > 0
        # LoRA: AdamW over the adapters; frozen routers (no bias update) so the adapter fits the unchanged base.
        train_cfg = cfg.replace(max_steps=steps, **({"optimizer": "adamw", "router_frozen": True} if lora else {}))
        eval_set = None
        if cfg.eval_batches and data.eval_sources:
            eval_set = eval_set_from_conversations(data.eval_sources, cfg.batch_size,
                                                   cfg.eval_batches * cfg.batch_size * dist.world_size)
        before = mtp_acceptance(model, tok, data.prompts) if dist.is_main else None
        if lora:
            from kexaone.model.lora import DEFAULT_TARGETS, apply_lora

            model = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets) or DEFAULT_TARGETS)
        trainer = Trainer(model, tok, data.batches, train_cfg, objective=sft_objective(run.model, cfg), label="sft",
                          eval_set=eval_set, dist=dist, out_dir=run.out, callbacks=callbacks)
        res = trainer.fit()
        stage_ctx = dataclasses.replace(run, cfg=train_cfg.replace(export=False) if lora else train_cfg)
        stage = finish_stage(stage_ctx, trainer, res, stage="sft")
        adapter_dir = None
        if lora and not res.interrupted and cfg.export and dist.is_main:
            adapter_dir, model_dir = export_lora(trainer.raw_model, run.out, tok, cfg)
            stage = dataclasses.replace(stage, model_dir=model_dir)
        after = None
        if dist.is_main and not res.interrupted:
            from kexaone.model.lora import unwrap_lora

            trained = unwrap_lora(trainer.raw_model) if not (lora and cfg.merge) else _load(stage.model_dir)
            after = mtp_acceptance(trained, tok, data.prompts)
        result = SFTResult(stage=stage, adapter_dir=adapter_dir, sources=[s.summary() for s in data.sources],
                           mtp_acceptance={"before": before, "after": after, "prompts": len(data.prompts),
                                           "draft_tokens": 1, "greedy": True},
                           steps_per_epoch=data.rows_per_epoch / (cfg.batch_size * cfg.grad_accum * dist.world_size))
        if dist.is_main:
            path = Path(run.out) / "result.json"
            record = json.loads(path.read_text(encoding="utf-8"))
            record.update(model_dir=None if stage.model_dir is None else str(stage.model_dir),
                          adapter_dir=None if adapter_dir is None else str(adapter_dir), sources=result.sources,
                          eval_sources=[s.summary() for s in data.eval_sources], rehearsal=data.rehearsal,
                          mtp_acceptance=result.mtp_acceptance, steps_per_epoch=result.steps_per_epoch,
                          lora=({"rank": cfg.lora_rank, "alpha": cfg.lora_alpha or cfg.lora_rank,
                                 "targets": list(cfg.lora_targets) or ["attention", "dense", "shared"],
                                 "merged": cfg.merge, "frozen": "base model, MTP head, routers"} if lora else None))
            atomic_write_text(path, json.dumps(record, indent=1))
        return result


def _load(model_dir: Any) -> Any:
    from kexaone.model.transformer import KExaoneForCausalLM

    return KExaoneForCausalLM.from_pretrained(model_dir)


def export_lora(peft_model: Any, out: Any, tok: Any, cfg: SFTConfig) -> tuple[Any, Any]:
    """<out>/adapter (peft format + the tokenizer; base_model_name_or_path = --init-from), and with --merge the
    merged model in the HF layout at <out>/model. Returns (adapter dir, model dir or None)."""
    from pathlib import Path

    from kexaone.model.lora import merge_lora, save_adapter

    adapter = Path(out) / "adapter"
    base = str(Path(cfg.init_from).resolve()) if cfg.init_from else None
    save_adapter(peft_model, adapter, base_model_path=base)
    tok.save(adapter)
    if not cfg.merge:
        return adapter, None
    merged = merge_lora(peft_model)
    model_dir = Path(out) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(model_dir)
    tok.save(model_dir)
    return adapter, model_dir
