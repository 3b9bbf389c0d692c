"""K-EXAONE's sparse mixture-of-experts layer: sigmoid top-k router, dropless grouped experts, shared expert.

- `TopKRouter`: fp32 sigmoid scores; the aux-loss-free correction bias is added only to *choose* experts;
  optional group-limited choice; gate weights are the unbiased scores of the chosen experts, normalised and scaled.
  Numerically identical to transformers' `ExaoneMoeTopkRouter` (which returns logits where we return scores).
- `GroupedExperts`: all routed experts as two stacked weights; tokens are sorted by expert and every projection is
  one grouped matmul (`torch._grouped_mm` where the device has it). Dropless: every (token, slot) pair is computed,
  whatever the imbalance. In bf16/fp16 on CPU each expert's rows are padded to a bucket (`CPU_LOWP_ROW_BUCKET`)
  so the matmul library reuses its per-shape kernels. (`config.moe_capacity_factor`, an ablation switch, off by
  default, drops the pairs beyond an expert's capacity: `capacity_keep`.)
- `KExaoneMoE`: router + experts + shared expert, plus the balance statistics the training recipe needs (the
  sequence-level aux loss of SPEC section 3 and the per-expert token counts for the bias update).

Not here: the bias update itself (`balance.py`), the on-disk expert layout (experts one by one; `hf.py` converts),
expert parallelism (applied from outside), FP8 kernels (the FP8 module plugs into `GroupedExperts.fp8_recipe`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kexaone.config import KExaoneConfig
from kexaone.model.mlp import SwiGLU

# transformers adds this to the denominator when normalising the chosen scores; keep it for bit-level parity.
_NORM_EPS = 1e-20

# CPU inference with at most this many (token, slot) pairs (decode steps) multiplies only the experts that received
# tokens, one matmul per routed expert, instead of calling `torch._grouped_mm`, whose CPU kernel runs one matmul per
# expert even when the expert got no row (32-128 empty calls for one decoded token). The per-expert matmuls are the
# same ones the CPU kernel runs, so results are bit-identical; reading the counts on the host is free on CPU.
# Gathering the routed experts' weights (index_select + bmm) was measured too and lost beyond 2 tokens: the copy
# of [M, 3I, H] weights costs more than it saves. Threshold measured on the `small` preset (see
# benchmarks/bench_decode_step.py); the grouped kernel wins for prefill-sized inputs.
SEGMENT_MAX_PAIRS = 16

# At most this many (token, slot) pairs (one decoded token at top-2..4) skip even that path's bookkeeping (counts,
# argsort, gathers, offsets, index_add) in `_few_pairs_experts`, which costs more calls per chosen expert instead:
# it wins while few experts are chosen. Operator calls (dispatcher level) of one MoE layer of the `small` preset:
# one token (2 pairs) 63 -> 50; eight tokens (16 pairs) would go 129 -> 215, so they keep the segment path.
FEW_PAIRS_MAX = 4

# On CPUs, bf16/fp16 matmuls run through oneDNN, which builds (JIT-compiles) a kernel for every new shape: about
# 1 ms, more than the multiply itself at these sizes. Each expert's row count changes every step, so without care
# nearly every per-expert matmul of a reduced-precision training step builds a new kernel (measured on this
# machine's AMX CPU: 5x slower than a cached shape, and bf16 training slower than fp32). Rounding every expert's
# rows up to a multiple of this bucket (zero rows, dropped afterwards) keeps the set of shapes small, so kernels
# are reused. The bucket trades padding work for kernel reuse; the sweep in benchmarks/bench_moe.py
# (results/moe.md) picks it. fp32 goes through a BLAS without per-shape kernels and is left unpadded.
CPU_LOWP_ROW_BUCKET = 64


def capacity_keep(idx_NK: torch.Tensor, num_experts: int, capacity_factor: float) -> torch.Tensor:
    """[N, K] bool: which (token, slot) pairs fit their expert's capacity ceil(factor x N x K / E). Pairs claim
    capacity in token order (slot order within a token), as in GShard / Switch: the later tokens are dropped."""
    import math

    n, k = idx_NK.shape
    cap = math.ceil(capacity_factor * n * k / num_experts)
    onehot_ME = F.one_hot(idx_NK.reshape(-1), num_experts)
    rank_M = (onehot_ME.cumsum(0) * onehot_ME).sum(-1) - 1  # 0-based position of each pair inside its expert
    return (rank_M < cap).view(n, k)


# ---------------------------------------------------------------------------------------------------------- router
class TopKRouter(nn.Module):
    """Chooses `num_experts_per_tok` experts per token and their gate weights.

    forward(x_NH) -> (scores_NE fp32 sigmoid scores, topk_weights_NK fp32, topk_idx_NK int64).
    The index order inside a token's K slots is unspecified (compare as sets).
    """

    def __init__(self, config: KExaoneConfig) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.hidden_size = config.hidden_size
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = float(config.routed_scaling_factor)
        self.init_std = config.initializer_range
        self.weight = nn.Parameter(torch.empty(self.num_experts, self.hidden_size))
        # Moved by the bias update (balance.py), never by the optimizer: a buffer, saved with the weights, and kept
        # in fp32 whatever dtype the module is cast to (see _apply): 1e-4 steps vanish in bf16.
        self.register_buffer("e_score_correction_bias", torch.zeros(self.num_experts, dtype=torch.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)
        with torch.no_grad():
            self.e_score_correction_bias.zero_()

    def _apply(self, fn: Any, recurse: bool = True) -> "TopKRouter":
        bias_fp32 = self.e_score_correction_bias
        super()._apply(fn, recurse)
        moved = self.e_score_correction_bias
        if moved.dtype != torch.float32:
            # `model.to(torch.bfloat16)` must move the bias but not round it: rebuild it from the fp32 original.
            self.e_score_correction_bias = bias_fp32.to(device=moved.device, dtype=torch.float32)
        return self

    def forward(self, x_NH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_NH = x_NH.reshape(-1, self.hidden_size)
        # Routing is precision-sensitive (near-tied scores pick different experts): fp32 even under autocast.
        if torch.is_autocast_enabled(x_NH.device.type):
            with torch.autocast(device_type=x_NH.device.type, enabled=False):
                logits_NE = F.linear(x_NH.float(), self.weight.float())
        else:  # (entering the context costs more than the decode step's router matmul itself)
            logits_NE = F.linear(x_NH.float(), self.weight.float())
        scores_NE = logits_NE.sigmoid()
        choice_NE = scores_NE.detach() + self.e_score_correction_bias
        if self.n_group > 1 and self.topk_group < self.n_group:
            choice_NE = self._mask_to_top_groups(choice_NE)
        topk_idx_NK = torch.topk(choice_NE, k=self.top_k, dim=-1, sorted=False).indices
        topk_weights_NK = scores_NE.gather(1, topk_idx_NK)
        if self.norm_topk_prob:
            topk_weights_NK = topk_weights_NK / (topk_weights_NK.sum(dim=-1, keepdim=True) + _NORM_EPS)
        topk_weights_NK = topk_weights_NK * self.routed_scaling_factor
        return scores_NE, topk_weights_NK, topk_idx_NK

    def _mask_to_top_groups(self, choice_NE: torch.Tensor) -> torch.Tensor:
        """Keep only the experts of each token's `topk_group` best groups (group score = sum of its top-2)."""
        n = choice_NE.shape[0]
        per_group = self.num_experts // self.n_group
        choice_NGP = choice_NE.view(n, self.n_group, per_group)
        group_scores_NG = choice_NGP.topk(2, dim=-1).values.sum(dim=-1)
        group_idx_NK = torch.topk(group_scores_NG, k=self.topk_group, dim=-1, sorted=False).indices
        keep_NG = torch.zeros_like(group_scores_NG, dtype=torch.bool).scatter_(1, group_idx_NK, True)
        return choice_NGP.masked_fill(~keep_NG.unsqueeze(-1), float("-inf")).view(n, self.num_experts)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, top_k={self.top_k}, n_group={self.n_group}, "
                f"topk_group={self.topk_group}, scaling={self.routed_scaling_factor}")


# ------------------------------------------------------------------------------------------------- grouped matmul
class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    The CPU `_grouped_mm` backward rejects expanded (stride-0) gradients, such as the one `y.sum().backward()`
    produces; placing this after each grouped matmul keeps any downstream loss legal."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def native_grouped_mm_supported(x: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` has a kernel for this device and dtype (checked by rule, no trial call)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    return False


def _strides_16b_aligned(t: torch.Tensor) -> bool:
    # The grouped-matmul kernels require every non-unit stride to be a multiple of 16 bytes.
    return all(s == 1 or (s * t.element_size()) % 16 == 0 for s in t.stride())


def grouped_mm(x_MK: torch.Tensor, w_EKN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """out[rows of group e] = x[rows of group e] @ w[e]; rows are sorted by group, `offs_E` (int32) holds the
    cumulative row counts (offs[-1] == M). Returns [M, N]. Autograd-friendly."""
    if native_grouped_mm_supported(x_MK) and _strides_16b_aligned(x_MK) and _strides_16b_aligned(w_EKN):
        return _ContiguousGrad.apply(torch._grouped_mm(x_MK, w_EKN, offs=offs_E))
    return _segment_mm(x_MK, w_EKN, offs_E)


def _segment_mm(x_MK: torch.Tensor, w_EKN: torch.Tensor, offs_E: torch.Tensor,
                counts: list[int] | None = None) -> torch.Tensor:
    """One matmul per non-empty expert: the fallback where `torch._grouped_mm` is missing (for example CUDA fp32,
    or pre-Ampere GPUs), and the CPU path for a few rows (decode). `counts` (rows per expert) when already known."""
    if counts is None:  # a host sync: this path is the fallback, or used where syncing is free (CPU)
        counts = torch.diff(offs_E.long(), prepend=offs_E.new_zeros(1).long()).tolist()
    outs = []
    start = 0
    for e, c in enumerate(counts):  # slice only the non-empty experts (a split would make E views)
        if c:
            outs.append(x_MK[start:start + c] @ w_EKN[e])
            start += c
    if not outs:
        return x_MK.new_zeros(0, w_EKN.shape[-1])
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def _small_cpu_inference(x: torch.Tensor, pairs: int, limit: int, fp8_recipe: Any) -> bool:
    """At most `limit` (token, slot) pairs of `x` in CPU inference, outside torch.compile and FP8: where the
    per-expert decode paths apply (`limit` is read by the caller at call time, so tests can move it)."""
    return (x.device.type == "cpu" and pairs <= limit and fp8_recipe is None
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling())


def takes_few_pairs(x: torch.Tensor, pairs: int, fp8_recipe: Any = None) -> bool:
    """Whether `pairs` (token, slot) pairs of `x` run on the one-token path (`_few_pairs_experts`, see
    FEW_PAIRS_MAX)."""
    return _small_cpu_inference(x, pairs, FEW_PAIRS_MAX, fp8_recipe)


def _few_pairs_experts(x_NH: torch.Tensor, gate_up_EJH: torch.Tensor, down_EHI: torch.Tensor,
                       idx_NK: torch.Tensor, w_NK: torch.Tensor, inter: int) -> torch.Tensor:
    """The routed experts of a decode step: one host read of the K choices per token, then, for each chosen expert
    in increasing id, its rows (tokens in order) through gate_up and down, accumulated into the output.

    The same row groups, matmuls and order of accumulation as the grouped path (argsort by expert, per-expert
    matmuls, index_add in sorted order), so the result is bit-identical (tested), without the counting scatter,
    argsort, cumsum, offsets and gathers (see FEW_PAIRS_MAX)."""
    n, k = idx_NK.shape
    flat = idx_NK.reshape(-1).tolist()
    order = sorted(range(n * k), key=flat.__getitem__)  # stable: tokens keep their order inside an expert
    w_M = w_NK.reshape(-1)
    y_NH = None
    j = 0
    while j < len(order):
        e, end = flat[order[j]], j + 1
        while end < len(order) and flat[order[end]] == e:
            end += 1
        pairs = order[j:end]
        if len(pairs) == 1:
            t = pairs[0] // k
            x_rH, w_r = x_NH[t:t + 1], w_M[pairs[0]:pairs[0] + 1]
        else:
            rows = torch.tensor([p // k for p in pairs])
            x_rH, w_r = x_NH.index_select(0, rows), w_M.index_select(0, torch.tensor(pairs))
        h_rJ = F.linear(x_rH, gate_up_EJH[e])
        gate_rI, up_rI = h_rJ.split(inter, dim=-1)
        a_rI = F.silu(gate_rI) * up_rI * w_r.unsqueeze(-1)
        out_rH = F.linear(a_rI if a_rI.dtype == h_rJ.dtype else a_rI.to(h_rJ.dtype), down_EHI[e])
        j = end
        if y_NH is None:
            if n == 1:
                y_NH = out_rH  # one token: its first expert's output is what index_add_ onto zeros would give
                continue
            y_NH = out_rH.new_zeros(n, out_rH.shape[-1])
        if len(pairs) == 1:
            y_NH[t:t + 1].add_(out_rH)
        else:
            y_NH.index_add_(0, rows, out_rH)
    return y_NH


def count_per_expert(topk_idx_NK: torch.Tensor, num_experts: int, keep_NK: torch.Tensor | None = None) -> torch.Tensor:
    """[E] int64 number of (token, slot) pairs routed to each expert (only where `keep_NK` is true, if given).
    A scatter-add rather than bincount: bincount synchronises with the host on GPUs to size its output."""
    ones = torch.ones_like(topk_idx_NK) if keep_NK is None else keep_NK.to(topk_idx_NK.dtype)
    counts = torch.zeros(num_experts, dtype=torch.long, device=topk_idx_NK.device)
    return counts.scatter_add_(0, topk_idx_NK.reshape(-1), ones.reshape(-1))


def _pad_rows_per_expert(token_M: torch.Tensor, w_M: torch.Tensor, counts_E: torch.Tensor, pad_token: int,
                         bucket: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows sorted by expert -> the same rows with every expert's group rounded up to a multiple of `bucket`.

    Returns (token_P, w_P, offs_E): the padding slots hold `pad_token` and gate weight 0; `offs_E` (int32) are the
    padded groups' cumulative sizes. Reads the padded total on the host (CPU only, where that is free)."""
    padded_E = (counts_E + bucket - 1) // bucket * bucket
    offs_E = padded_E.cumsum(0)
    total = int(offs_E[-1])
    # sorted pair j of expert e moves from j to j - start_e + padded_start_e
    shift_E = (offs_E - padded_E) - (counts_E.cumsum(0) - counts_E)
    dest_M = torch.arange(token_M.numel()) + shift_E.repeat_interleave(counts_E, output_size=token_M.numel())
    token_P = token_M.new_full((total,), pad_token).index_copy(0, dest_M, token_M)
    w_P = w_M.new_zeros(total).index_copy(0, dest_M, w_M)
    return token_P, w_P, offs_E.to(torch.int32)


# ---------------------------------------------------------------------------------------------------------- experts
class GroupedExperts(nn.Module):
    """All routed experts of one layer, executed dropless with grouped matmuls.

    Parameters (the transformers in-memory layout, nn.Linear orientation per expert):
      gate_up_proj [E, 2I, H]: rows [:I] are expert e's gate_proj.weight, rows [I:] its up_proj.weight;
      down_proj    [E, H, I]: expert e's down_proj.weight.
    `fp8_recipe`: None, or an object whose `grouped_mm(x_MK, w_EKN, offs_E) -> [M, N]` replaces the matmuls
    (same semantics as `grouped_mm` above), set by the FP8 module.
    """

    def __init__(self, config: KExaoneConfig) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.moe_intermediate_size
        self.init_std = config.initializer_range
        e, h, i = self.num_experts, self.hidden_size, self.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))
        self.fp8_recipe: Any = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.gate_up_proj, mean=0.0, std=self.init_std)
        nn.init.normal_(self.down_proj, mean=0.0, std=self.init_std)

    def _mm(self, x_MK: torch.Tensor, w_EKN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
        if self.fp8_recipe is not None:
            return self.fp8_recipe.grouped_mm(x_MK, w_EKN, offs_E)
        return grouped_mm(x_MK, w_EKN, offs_E)

    def forward(self, x_NH: torch.Tensor, topk_idx_NK: torch.Tensor, topk_weights_NK: torch.Tensor,
                counts_E: torch.Tensor | None = None) -> torch.Tensor:
        """y[n] = sum_k w[n,k] * expert_{idx[n,k]}(x[n]). `counts_E` (tokens per expert) may be passed when the
        caller already has it. Output dtype = input dtype (the autocast dtype under autocast)."""
        n, k = topk_idx_NK.shape
        if n == 0:
            return x_NH.new_zeros(x_NH.shape)
        gate_up_EJH, down_EHI = self.gate_up_proj, self.down_proj
        if torch.is_autocast_enabled(x_NH.device.type):
            # Grouped matmul is not an autocast op: cast explicitly, as autocast would for nn.Linear. Cast the
            # contiguous parameters, then transpose: converting a transposed view is a slow strided copy.
            dtype = torch.get_autocast_dtype(x_NH.device.type)
            x_NH, gate_up_EJH, down_EHI = x_NH.to(dtype), gate_up_EJH.to(dtype), down_EHI.to(dtype)
        elif x_NH.dtype != gate_up_EJH.dtype:
            x_NH = x_NH.to(gate_up_EJH.dtype)
        if takes_few_pairs(x_NH, n * k, self.fp8_recipe):
            return _few_pairs_experts(x_NH, gate_up_EJH, down_EHI, topk_idx_NK, topk_weights_NK,
                                      self.intermediate_size)
        gate_up_EHJ = gate_up_EJH.transpose(1, 2)  # [E, H, 2I] view: x @ W^T per expert
        down_EIH = down_EHI.transpose(1, 2)  # [E, I, H]
        with torch.no_grad():
            flat_e_M = topk_idx_NK.reshape(-1)  # M = N*K (token, slot) pairs
            if counts_E is None:
                counts_E = count_per_expert(topk_idx_NK, self.num_experts)
            offs_E = counts_E.cumsum(0).to(torch.int32)
            order_M = torch.argsort(flat_e_M, stable=True)  # stable: tokens keep their order inside an expert
            token_M = order_M // k
        w_M = topk_weights_NK.reshape(-1).index_select(0, order_M)
        if (x_NH.device.type == "cpu" and x_NH.dtype in (torch.bfloat16, torch.float16)
                and n * k > SEGMENT_MAX_PAIRS and self.fp8_recipe is None and not torch.compiler.is_compiling()):
            # pad every expert's rows to the bucket with a zero token (row n) whose gate weight is 0 and whose
            # output goes to a dropped row n: mathematically the same result, kernels reused (see the constant)
            token_M, w_M, offs_E = _pad_rows_per_expert(token_M, w_M, counts_E, n, CPU_LOWP_ROW_BUCKET)
            x_NH = torch.cat([x_NH, x_NH.new_zeros(1, x_NH.shape[1])])
        x_MH = x_NH.index_select(0, token_M)
        mm = self._mm
        if _small_cpu_inference(x_NH, n * k, SEGMENT_MAX_PAIRS, self.fp8_recipe):
            counts = counts_E.tolist()
            mm = lambda x_MK, w_EKN, offs: _segment_mm(x_MK, w_EKN, offs, counts)  # noqa: E731
        h_MJ = mm(x_MH, gate_up_EHJ, offs_E)
        gate_MI, up_MI = h_MJ.split(self.intermediate_size, dim=-1)
        # The gate weight is applied before down_proj (which is linear): scaling [M, I] is cheaper than [M, H].
        a_MI = (F.silu(gate_MI) * up_MI * w_M.unsqueeze(-1)).to(h_MJ.dtype)
        y_MH = mm(a_MI, down_EIH, offs_E)
        rows = x_NH.shape[0]  # n, or n + 1 with the padding token, whose row is dropped
        return y_MH.new_zeros(rows, self.hidden_size).index_add_(0, token_M, y_MH)[:n]

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, intermediate_size={self.intermediate_size}"


# ------------------------------------------------------------------------------------------------------ aux loss
def sequence_aux_loss(scores_BTE: torch.Tensor, topk_idx_BTK: torch.Tensor,
                      valid_BT: torch.Tensor | None = None) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss (SPEC section 3), unweighted, averaged over sequences.

    Per sequence of T tokens: f_i = E / (K*T) * count_i (no gradient), P_i = mean_t s_ti / sum_j s_tj;
    loss = sum_i f_i * P_i (1.0 when perfectly balanced). `valid_BT` (1 = real token) excludes padding; T is then
    the number of real tokens, and sequences without any are left out of the mean."""
    b, t, e = scores_BTE.shape
    k = topk_idx_BTK.shape[-1]
    probs_BTE = scores_BTE / scores_BTE.sum(dim=-1, keepdim=True)
    if valid_BT is None:
        ntok_B = torch.full((b,), float(t), device=scores_BTE.device)
        slot_w = torch.ones(b, t * k, device=scores_BTE.device)
    else:
        v_BT = valid_BT.to(scores_BTE.dtype)
        probs_BTE = probs_BTE * v_BT.unsqueeze(-1)
        ntok_B = v_BT.sum(dim=1)
        slot_w = v_BT.unsqueeze(-1).expand(b, t, k).reshape(b, t * k)
    with torch.no_grad():
        counts_BE = torch.zeros(b, e, device=scores_BTE.device).scatter_add_(1, topk_idx_BTK.reshape(b, t * k), slot_w)
        f_BE = counts_BE * (e / k) / ntok_B.clamp(min=1).unsqueeze(-1)
    p_BE = probs_BTE.sum(dim=1) / ntok_B.clamp(min=1).unsqueeze(-1)
    per_seq_B = (f_BE * p_BE).sum(dim=-1)
    # no data-dependent branch (a host sync on GPUs): empty sequences contribute 0 and are not counted
    has_tokens_B = (ntok_B > 0).to(per_seq_B.dtype)
    return (per_seq_B * has_tokens_B).sum() / has_tokens_B.sum().clamp(min=1)


def _inside_backward() -> bool:
    """True while the autograd engine runs a backward pass (e.g. an activation-checkpoint recomputation)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


# -------------------------------------------------------------------------------------------------------- the layer
class KExaoneMoE(nn.Module):
    """Sparse FFN of K-EXAONE layers 1..L-1: y = sum_k gate_k * expert_k(x) + shared_expert(x).

    forward(x_BTH, valid_BT=None) -> y_BTH. After each forward:
      `last_aux_loss`: 0-d tensor (with grad) = sequence-level aux loss, unweighted (the model multiplies by
        config.aux_loss_coef); a zero tensor when the layer is in eval mode under torch.inference_mode;
      `tokens_per_expert` [E] int64 (non-persistent buffer): routed (token, slot) counts accumulated, in training
        mode only, until `balance.update_expert_biases` reads and resets them. Summed across micro-batches, so
        gradient accumulation needs nothing special.
    Activation checkpointing trap: a checkpointed layer runs its forward twice (the recomputation happens inside
    backward), which would double the counts. Counting is skipped while the autograd engine is executing backward
    (`_inside_backward`), so only the first forward counts, for reentrant and non-reentrant checkpointing alike.
    Set `count_tokens = False` to stop counting altogether (e.g. RL with a frozen router).
    """

    def __init__(self, config: KExaoneConfig) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.gate = TopKRouter(config)
        self.experts = GroupedExperts(config)
        self.shared_experts = (
            SwiGLU(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts)
            if config.num_shared_experts > 0 else None
        )
        self.register_buffer("tokens_per_expert", torch.zeros(self.num_experts, dtype=torch.long), persistent=False)
        self.count_tokens = True
        self.last_aux_loss: torch.Tensor | None = None
        self.capacity_factor = getattr(config, "moe_capacity_factor", None)
        self.last_dropped_fraction = 0.0
        """Share of (token, slot) pairs dropped by the capacity limit in the last forward (0 when dropless)."""

    def forward(self, x_BTH: torch.Tensor, valid_BT: torch.Tensor | None = None) -> torch.Tensor:
        """`valid_BT` (optional, 1 = real token, 0 = padding): padding is still computed (dropless, shapes fixed)
        but is left out of the aux loss and of the expert counts."""
        shape = x_BTH.shape
        x_3d = x_BTH if x_BTH.dim() == 3 else x_BTH.reshape(1, -1, shape[-1])
        b, t, h = x_3d.shape
        x_NH = x_3d.reshape(b * t, h)
        scores_NE, weights_NK, idx_NK = self.gate(x_NH)
        counting = self.training and self.count_tokens and not _inside_backward()
        counts_E = None
        # (the experts may be wrapped, e.g. by peft for LoRA on routed experts: the FP8 recipe is read with a default)
        if counting or not takes_few_pairs(x_NH, idx_NK.numel(), getattr(self.experts, "fp8_recipe", None)):
            with torch.no_grad():
                counts_E = count_per_expert(idx_NK, self.num_experts)
        if self.capacity_factor is not None:
            # Dropped pairs get gate weight 0 (they still run through their expert, so shapes stay static: this
            # measures what dropping costs in quality, not the compute it would save).
            with torch.no_grad():
                keep_NK = capacity_keep(idx_NK, self.num_experts, self.capacity_factor)
                self.last_dropped_fraction = 1.0 - float(keep_NK.float().mean())
            weights_NK = weights_NK * keep_NK.to(weights_NK.dtype)
        y_NH = self.experts(x_NH, idx_NK, weights_NK, counts_E=counts_E)
        if self.shared_experts is not None:
            y_NH = y_NH + self.shared_experts(x_NH)
        if valid_BT is not None:
            valid_BT = valid_BT.reshape(b, t)
        if self.training or not torch.is_inference_mode_enabled():
            self.last_aux_loss = sequence_aux_loss(scores_NE.view(b, t, self.num_experts),
                                                   idx_NK.view(b, t, self.top_k), valid_BT)
        else:
            # Inference mode in eval (generation, scoring): nothing can use a balance loss there, and it cost ~7%
            # of a decode step. Kept as a 0-d zero so that callers summing it need no special case. (Plain
            # no_grad evaluation still computes it: the trainer logs it on held-out batches.)
            self.last_aux_loss = scores_NE.new_zeros(())
        if counting:
            with torch.no_grad():
                if valid_BT is not None:
                    keep_NK = (valid_BT.reshape(-1, 1) != 0).expand(-1, self.top_k)
                    counts_E = count_per_expert(idx_NK, self.num_experts, keep_NK)
                self.tokens_per_expert += counts_E
        return y_NH.view(shape)
