"""KExaoneForCausalLM: the K-EXAONE decoder (SPEC section 1) with its MTP head, losses and HF-format I/O.

Pre-norm blocks (dense SwiGLU where `mlp_layer_types` says "dense", the MoE layer elsewhere), hybrid attention
(sliding-window + RoPE / global + NoPE), final RMSNorm, untied (or tied) lm_head. The forward returns the
next-token loss, the MTP loss and the MoE balance loss separately plus their weighted total.

Not here: parallelism (applied from outside), sampling and speculative decoding (kexaone.engine), the on-disk layout
(hf.py), the bias update (balance.py).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kexaone.config import KExaoneConfig
from kexaone.model.attention import AttentionInputs
from kexaone.model.cache import KVCache
from kexaone.model.layer import DecoderLayer
from kexaone.model.mlp import SwiGLU
from kexaone.model.moe import GroupedExperts, KExaoneMoE, TopKRouter
from kexaone.model.mtp import MTPBlock, masked_cross_entropy, mtp_loss, shifted_targets
from kexaone.model.vocab_loss import linear_cross_entropy
from kexaone.model.norm import RMSNorm
from kexaone.model.outputs import KExaoneOutput
from kexaone.model.rope import RotaryEmbedding

_FEW_ROWS = 4
"""Rows up to which a no-grad CPU vocabulary projection runs as W @ h^T (see _vocab_logits)."""


class KExaoneModel(nn.Module):
    """The decoder stack: `embed_tokens`, `layers`, `norm` (names as in the HF layout, under `model.`)."""

    def __init__(self, config: KExaoneConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([
            DecoderLayer(config, i, sliding=config.is_sliding(i), use_rope=config.uses_rope(i),
                         mlp=KExaoneMoE(config) if config.is_sparse(i)
                         else SwiGLU(config.hidden_size, config.intermediate_size))
            for i in range(config.num_hidden_layers)
        ])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_parameters)


class KExaoneForCausalLM(nn.Module):
    def __init__(self, config: KExaoneConfig) -> None:
        super().__init__()
        if not isinstance(config, KExaoneConfig):
            raise ValueError(f"config must be a KExaoneConfig, got {type(config).__name__}")
        self.config = config
        self.model = KExaoneModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mtp = MTPBlock(config) if config.num_nextn_predict_layers else None
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False
        # Fixed by the config: whether any main / MTP layer rotates (then cos/sin are built once per forward).
        self._main_uses_rope = any(config.uses_rope(i) for i in range(config.num_hidden_layers))
        """Recompute each decoder layer in backward (saves activation memory; MoE counts stay exact)."""
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: KExaoneConfig, device: torch.device | str = "meta",
                    dtype: torch.dtype | None = None) -> "KExaoneForCausalLM":
        """Build without touching memory on the meta device (count parameters of the 236B config), or on a real
        device (initialised)."""
        with torch.device(device):
            model = cls(config)
        return model if dtype is None else model.to(dtype)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, initializer_range) for linear, embedding, expert and router weights; ones for norms; zeros for
        the router bias; derived buffers recomputed."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, (RMSNorm, TopKRouter, GroupedExperts)):
                m.reset_parameters()
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (needed after `to_empty`, which leaves them uninitialised)."""
        self.model.rotary_emb.reset_buffers()
        for m in self.modules():
            if isinstance(m, KExaoneMoE):
                m.tokens_per_expert.zero_()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None, **kwargs: Any) -> "KExaoneForCausalLM":
        """Load a Hugging Face `exaone_moe` directory (written by kexaone, transformers or a release)."""
        from kexaone.model.hf import load_pretrained

        return load_pretrained(cls, path, dtype=dtype, device=device, **kwargs)

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None,
                        max_shard_bytes: int = 5 * 1024**3) -> None:
        """Write config.json and safetensors (sharded with an index above max_shard_bytes) in the HF layout."""
        from kexaone.model.hf import save_pretrained

        save_pretrained(self, path, dtype=dtype, max_shard_bytes=max_shard_bytes)

    def num_parameters(self, include_mtp: bool = True, include_embeddings: bool = True) -> int:
        seen: set[int] = set()
        total = 0
        skip: set[int] = set()
        if not include_mtp and self.mtp is not None:
            skip |= {id(p) for p in self.mtp.parameters()}
        if not include_embeddings:
            skip |= {id(self.model.embed_tokens.weight), id(self.lm_head.weight)}
        for p in self.parameters():
            if id(p) in seen or id(p) in skip:
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def new_cache(self, batch_size: int, extra_slots: int = 8, dtype: torch.dtype | None = None,
                  max_seq_len: int | None = None) -> KVCache:
        """A KVCache on this model's device and dtype (see KVCache for the arguments)."""
        p = self.lm_head.weight
        return KVCache(self.config, batch_size, dtype=dtype or p.dtype, device=p.device, extra_slots=extra_slots,
                       max_seq_len=max_seq_len)

    # ------------------------------------------------------------------ input checks
    def _check_ids(self, ids: torch.Tensor, name: str) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ValueError(f"{name} must be a 2-D LongTensor [batch, seq], got "
                             f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
        if ids.shape[1] == 0:
            raise ValueError(f"{name} is empty (sequence length 0)")
        lo, hi = torch.aminmax(ids)  # one pass and one host read for both bounds (it runs on every decode step)
        lo, hi = int(lo), int(hi)
        V = self.config.vocab_size
        if lo < 0 or hi >= V:
            bad = hi if hi >= V else lo
            raise ValueError(f"{name} holds token id {bad}, outside [0, {V - 1}] (vocab_size {V})")

    def _check_like(self, t: torch.Tensor | None, name: str, ref: torch.Tensor) -> None:
        if t is not None and tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{name} must have the shape of input_ids {tuple(ref.shape)}, got {tuple(t.shape)}")

    # ------------------------------------------------------------------ forward
    def _positions_and_validity(self, B: int, T: int, dev, cache: KVCache | None, attention_mask, position_ids,
                                mtp: bool = False):
        """-> (position_ids [B, T], token_valid_BT without a cache or None, valid_BT of the new tokens or None)."""
        token_valid = None
        if cache is not None:
            if attention_mask is not None and not mtp:
                cache.set_left_padding(attention_mask, T)
            if position_ids is None:
                position_ids = cache.position_ids(T, mtp=mtp)
            start = cache.mtp_seq_len if mtp else cache.seq_len
            new_valid = cache.key_valid(0, start, T)
        else:
            if attention_mask is not None:
                if tuple(attention_mask.shape) != (B, T):
                    raise ValueError(f"attention_mask must be [batch, seq] = {(B, T)} without a cache, got "
                                     f"{tuple(attention_mask.shape)}")
                token_valid = attention_mask.to(dev).bool()
                if bool(token_valid.all()):
                    token_valid = None
            if position_ids is None:
                if token_valid is not None:
                    position_ids = (token_valid.long().cumsum(1) - 1).clamp_min(0)
                else:
                    position_ids = torch.arange(T, device=dev)[None].expand(B, T)
            new_valid = token_valid
        if tuple(position_ids.shape) != (B, T):
            if position_ids.dim() == 2 and position_ids.shape == (1, T):
                position_ids = position_ids.expand(B, T)
            else:
                raise ValueError(f"position_ids must be [batch, seq] = {(B, T)}, got {tuple(position_ids.shape)}")
        return position_ids.to(dev), token_valid, new_valid

    def _rope(self, position_ids, dtype, needed: bool):
        # (cos, signed sin): the form the attention layers apply (kexaone.model.rope.apply_rope_tables)
        return self.model.rotary_emb.tables(position_ids, dtype) if needed else None

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None, logits_to_keep: int = 0,
                compute_mtp: bool | None = None, return_logits: bool | None = None) -> KExaoneOutput:
        """Run the model on input_ids [B, T].

        labels [B, T]: aligned with input_ids (the shift happens inside), -100 ignored; gives ce/mtp/aux losses.
        cache: a KVCache to append to (generation); position_ids then default to each row's position after its
          left padding. attention_mask [B, T] (or [B, cached + T] with a cache): 1 = token, 0 = left padding.
        doc_ids [B, T]: packed documents; attention and targets never cross a change of id (training only).
        logits_to_keep: 0 = logits at every position, n = only the last n. compute_mtp: default = labels given and
        the model has MTP; MTP logits are computed for positions 0..T-2.
        return_logits: default = labels not given. With labels and return_logits false, the losses are computed in
        row chunks through the lm_head (vocab_loss.py) and `logits` / `mtp_logits` are None: [B, T, V] never exists.
        return_logits=True with labels computes the full logits and the losses from them."""
        self._check_ids(input_ids, "input_ids")
        B, T = input_ids.shape
        dev = self.lm_head.weight.device
        input_ids = input_ids.to(dev)
        self._check_like(labels, "labels", input_ids)
        self._check_like(doc_ids, "doc_ids", input_ids)
        if doc_ids is not None and cache is not None:
            raise ValueError("doc_ids (packed training documents) cannot be combined with a KV cache")
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an integer >= 0 (0 = all positions), got {logits_to_keep!r}")
        if labels is not None and 0 < logits_to_keep < T:
            raise ValueError("labels need logits at every position: use logits_to_keep=0 when passing labels")
        if compute_mtp is None:
            compute_mtp = labels is not None and self.mtp is not None
        if compute_mtp and self.mtp is None:
            raise ValueError("compute_mtp=True but the model has no MTP block (num_nextn_predict_layers == 0)")
        if compute_mtp and cache is not None:
            raise ValueError("compute_mtp with a cache is not supported: call mtp_forward for drafting")
        if doc_ids is not None:
            doc_ids = doc_ids.to(dev)
        position_ids, token_valid, new_valid = self._positions_and_validity(
            B, T, dev, cache, attention_mask, position_ids)

        x = self.model.embed_tokens(input_ids)
        rope = self._rope(position_ids, x.dtype, self._main_uses_rope)
        inputs = AttentionInputs(token_valid_BT=token_valid, doc_ids_BT=doc_ids)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, rope, inputs, cache, new_valid, use_reentrant=False)
            else:
                x = layer(x, rope, inputs, cache, new_valid)
        hidden = self.model.norm(x)
        if return_logits is None:
            return_logits = labels is None
        chunked = labels is not None and not return_logits

        logits = None if chunked else self._vocab_logits(hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:])
        aux = self._aux_loss(hidden)

        mtp_logits = mtp_hidden = None
        if compute_mtp and T >= 2:
            mtp_doc = None if doc_ids is None else doc_ids[:, :-1]
            mtp_valid = None if token_valid is None else token_valid[:, :-1]
            mtp_inputs = AttentionInputs(token_valid_BT=mtp_valid, doc_ids_BT=mtp_doc)
            if chunked:
                mtp_hidden = self._mtp_hidden(hidden[:, :-1], input_ids[:, 1:], position_ids[:, :-1], mtp_inputs, None)
            else:
                mtp_logits, _ = self._mtp(hidden[:, :-1], input_ids[:, 1:], position_ids[:, :-1], mtp_inputs, None)

        out = KExaoneOutput(logits=logits, hidden_states=hidden, aux_loss=aux, mtp_logits=mtp_logits)
        if labels is not None:
            labels = labels.to(dev)
            if token_valid is not None:
                labels = labels.masked_fill(~token_valid, -100)
            targets = shifted_targets(labels, 1, doc_ids, length=T)
            out.ce_loss = linear_cross_entropy(hidden, self.lm_head, targets, self.config.vocab_size) if chunked \
                else masked_cross_entropy(logits, targets)
            loss = out.ce_loss + self.config.aux_loss_coef * aux
            if mtp_logits is not None:
                out.mtp_loss = mtp_loss(mtp_logits, labels, doc_ids)
            elif mtp_hidden is not None:
                out.mtp_loss = linear_cross_entropy(
                    mtp_hidden, self.lm_head, shifted_targets(labels, 2, doc_ids, length=mtp_hidden.shape[1]),
                    self.config.vocab_size)
            if out.mtp_loss is not None:
                loss = loss + self.config.mtp_loss_weight * out.mtp_loss
            out.loss = loss
        return out

    def _aux_loss(self, like: torch.Tensor) -> torch.Tensor:
        losses = [l.mlp.last_aux_loss for l in self.model.layers if l.is_moe and l.mlp.last_aux_loss is not None]
        if not losses:
            return like.new_zeros((), dtype=torch.float32)
        return torch.stack([a.float() for a in losses]).sum()

    def _mtp_hidden(self, hidden_BTH, next_ids_BT, position_ids, inputs, cache):
        emb = self.model.embed_tokens(next_ids_BT)
        rope = self._rope(position_ids, emb.dtype, any(l.self_attn.use_rope for l in self.mtp.layers))
        return self.mtp(emb, hidden_BTH, rope, inputs, cache)

    def _mtp(self, hidden_BTH, next_ids_BT, position_ids, inputs, cache, logits_to_keep: int = 0,
             vocab_rows: int | None = None):
        mtp_hidden = self._mtp_hidden(hidden_BTH, next_ids_BT, position_ids, inputs, cache)
        kept = mtp_hidden if logits_to_keep == 0 else mtp_hidden[:, -logits_to_keep:]
        return self._vocab_logits(kept, vocab_rows), mtp_hidden

    def _vocab_logits(self, hidden: torch.Tensor, vocab_rows: int | None = None) -> torch.Tensor:
        """lm_head(hidden), or only its first `vocab_rows` outputs (token ids [0, vocab_rows)) when given: a slice of
        the plain head's weight, so those rows alone are read. A few rows on CPU without autograd (decoding, MTP
        verification) are projected as W @ hidden^T: for the [vocab, hidden] weight that is 2-3x faster than
        F.linear's hidden @ W^T there (8192 x 256 with 3 rows: 0.45 vs 1.04 ms), and the speculative verify forward
        is exactly such a call. Same maths; the sum may round differently in the last bit."""
        head = self.lm_head
        # A wrapped head (LoRA, FSDP) runs whole, hooks included; so does a quantized weight (a tensor subclass,
        # kexaone.engine.quantize), which is neither sliced nor multiplied as a plain tensor.
        if type(head) is not nn.Linear or type(head.weight) not in (nn.Parameter, torch.Tensor):
            out = head(hidden)
            return out if vocab_rows is None else out[..., :vocab_rows]
        weight = head.weight if vocab_rows is None else head.weight[:vocab_rows]
        rows = hidden.numel() // hidden.shape[-1]
        if (1 < rows <= _FEW_ROWS and hidden.device.type == "cpu" and head.bias is None
                and weight.dtype == hidden.dtype and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu")):
            return (weight @ hidden.reshape(rows, -1).T).T.reshape(*hidden.shape[:-1], -1)
        if vocab_rows is None:
            return head(hidden)
        return F.linear(hidden, weight, None if head.bias is None else head.bias[:vocab_rows])

    def mtp_forward(self, hidden_BTH: torch.Tensor, next_ids_BT: torch.Tensor, cache: KVCache | None = None,
                    position_ids: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None,
                    logits_to_keep: int = 0, vocab_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft with the MTP head: input at t is h[t] (main model, final-normed) and token t+1; the logits at t
        predict token t+2. With a cache, the MTP layer's keys go to its slot, whose entry i is the pair at main
        position i (cache.mtp_seq_len counts them): feed the pairs from position 0 on (the prompt's pairs first), so
        that the left padding recorded by the main model's forward lines up.
        Returns (logits [B, T, V] (only the last `logits_to_keep` positions when > 0: drafting needs just the last;
        only token ids [0, vocab_rows) when `vocab_rows` is given: the engine's draft vocabulary),
        mtp_hidden [B, T, H] after mtp.norm, reusable as h for a further draft step)."""
        if self.mtp is None:
            raise ValueError("this model has no MTP block (config.num_nextn_predict_layers == 0)")
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an integer >= 0 (0 = all positions), got {logits_to_keep!r}")
        self._check_ids(next_ids_BT, "next_ids")
        B, T = next_ids_BT.shape
        if hidden_BTH.dim() != 3 or tuple(hidden_BTH.shape[:2]) != (B, T) \
                or hidden_BTH.shape[2] != self.config.hidden_size:
            raise ValueError(f"hidden must be [batch, seq, hidden] = {(B, T, self.config.hidden_size)}, got "
                             f"{tuple(hidden_BTH.shape)}")
        dev = self.lm_head.weight.device
        position_ids, token_valid, _ = self._positions_and_validity(
            B, T, dev, cache, attention_mask if cache is None else None, position_ids, mtp=True)
        if vocab_rows is not None and not (isinstance(vocab_rows, int) and 1 <= vocab_rows <= self.config.vocab_size):
            raise ValueError(f"vocab_rows must be an integer in [1, {self.config.vocab_size}], got {vocab_rows!r}")
        return self._mtp(hidden_BTH.to(dev), next_ids_BT.to(dev), position_ids,
                         AttentionInputs(token_valid_BT=token_valid), cache, logits_to_keep, vocab_rows)
