"""Report figures as PNG bytes (matplotlib, headless Agg backend): loss curves per curriculum stage, MTP loss,
expert-load heat map, MaxVio over time, accuracy against baselines, tokenizer bytes per token.

Each function takes plain lists/arrays (what the run's JSON files hold) and returns the encoded PNG; none reads
files or decides what to plot (`kexaone.report.data` does).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display needed, and never pick an interactive backend in a server
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_STAGE_COLORS = ["#a50034", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def loss_curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                heldout: tuple[Sequence[float], Sequence[float]] | None = None,
                ce: tuple[Sequence[float], Sequence[float]] | None = None, xlabel: str = "step",
                title: str = "training loss by curriculum stage") -> bytes:
    """The one training-loss figure (report card and `kexaone pretrain` alike): the total training loss as one
    coloured line per curriculum stage ({stage: (x, loss)}), the training CE dashed when given (the held-out loss
    is a CE, so this is the curve to compare it with), and the held-out loss points when given."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, color=_STAGE_COLORS[i % len(_STAGE_COLORS)], lw=1.2, label=name)
    if ce is not None and len(ce[0]):
        ax.plot(ce[0], ce[1], color="#7f7f7f", ls="--", lw=0.9, label="training CE")
    if heldout is not None and len(heldout[0]):
        ax.plot(heldout[0], heldout[1], "ko--", ms=4, lw=1, label="held-out CE")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series or ce is not None or heldout is not None:
        ax.legend()
    return _png(fig)


def mtp_curve(x: Sequence[float], ce: Sequence[float], mtp: Sequence[float], xlabel: str = "step") -> bytes:
    """Main next-token loss beside the MTP head's (token t+2) loss."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(x, ce, color="#1f77b4", lw=1.2, label="next token (main CE)")
    ax.plot(x, mtp, color="#a50034", lw=1.2, label="token t+2 (MTP head)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("multi-token prediction loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def expert_load_heatmap(load_LE: Sequence[Sequence[float]], layer_names: Sequence[str] | None = None,
                        title: str = "expert load (share of routed tokens)") -> bytes:
    """Layers x experts heat map of the share of tokens each expert received (1/E everywhere = balanced)."""
    a = np.asarray(load_LE, dtype=float)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"load must be a non-empty [layers, experts] table, got shape {a.shape}")
    share = a / np.clip(a.sum(axis=1, keepdims=True), 1e-12, None)
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.5, 2 + 0.25 * a.shape[1])), 1.6 + 0.35 * a.shape[0]))
    im = ax.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_yticks(range(a.shape[0]))
    ax.set_yticklabels(layer_names if layer_names is not None else [f"MoE {i}" for i in range(a.shape[0])])
    ax.set_title(f"{title}; balanced = {1 / a.shape[1]:.3f}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _png(fig)


def maxvio_curve(x: Sequence[float], maxvio_by_layer: Mapping[str, Sequence[float]], xlabel: str = "step") -> bytes:
    """MaxVio = (max load - mean load) / mean load of each MoE layer over training (0 = perfectly balanced)."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, (name, ys) in enumerate(maxvio_by_layer.items()):
        ax.plot(x, ys, lw=0.8, alpha=0.45, label=name, color=plt.cm.viridis(i / max(1, len(maxvio_by_layer) - 1)))
    if maxvio_by_layer and len(x) > 1:
        # Per-step MaxVio comes from one batch of counts and is noisy; the trend is the layer mean, smoothed.
        mean = np.mean(np.asarray(list(maxvio_by_layer.values()), dtype=float), axis=0)
        w = max(1, min(len(mean), len(mean) // 15 or 1))
        smooth = np.convolve(mean, np.ones(w) / w, mode="valid")
        ax.plot(np.asarray(x, dtype=float)[w - 1:], smooth, color="#a50034", lw=2.2,
                label=f"mean over layers ({w}-step average)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("MaxVio")
    ax.set_title("expert load imbalance over training (bias update + sequence aux loss)")
    ax.grid(alpha=0.3)
    if len(maxvio_by_layer) <= 12:
        ax.legend(fontsize=7, ncol=3)
    return _png(fig)


def accuracy_bars(tasks: Sequence[str], trained: Sequence[float], chance: Sequence[float],
                  untrained: Sequence[float | None]) -> bytes:
    """Per task: chance, untrained model and trained model accuracy side by side."""
    x = np.arange(len(tasks))
    w = 0.27
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 3.8))
    ax.bar(x - w, chance, w, color="#bbbbbb", label="chance")
    ax.bar(x, [u if u is not None else 0.0 for u in untrained], w, color="#7f7f7f", label="untrained model")
    ax.bar(x + w, trained, w, color="#a50034", label="trained model")
    ax.set_xticks(x)
    ax.set_xticklabels(tasks, rotation=15, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("held-out synthetic tasks")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _png(fig)


def bytes_per_token_bars(groups: Sequence[str], superbpe: Sequence[float], bpe: Sequence[float]) -> bytes:
    """Bytes per token of the SuperBPE tokenizer and the plain BPE baseline, per text group (higher = better)."""
    x = np.arange(len(groups))
    w = 0.4
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups)), 3.6))
    ax.bar(x - w / 2, bpe, w, color="#7f7f7f", label="plain BPE")
    ax.bar(x + w / 2, superbpe, w, color="#a50034", label="SuperBPE")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("bytes per token")
    ax.set_title("tokenizer compression (same data, same vocabulary size)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _png(fig)


def probe_curves(records: Sequence[dict]) -> bytes:
    """The induction / key-value recall probe accuracy over pre-training steps, onsets dashed: the figure of
    kexaone.eval.induction.plot_probe_curves (one drawing of it), read back as PNG bytes."""
    import tempfile
    from pathlib import Path

    from kexaone.eval.induction import plot_probe_curves

    with tempfile.TemporaryDirectory() as d:
        return plot_probe_curves(records, Path(d) / "probes.png", title="in-context copying probes").read_bytes()
