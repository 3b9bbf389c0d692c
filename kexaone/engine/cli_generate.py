"""`kexaone generate`: generate from a saved model, streaming to stdout.

Plain mode continues the prompt text; `--chat` wraps it as a user turn in the K-EXAONE chat format (reasoning on,
or off with `--no-think`) and prints the assistant turn. Statistics (tokens/s, MTP acceptance) go to stderr with
`--stats`, so stdout holds only the generated text.
"""

from __future__ import annotations

import argparse
import sys

from kexaone.engine.quantize import QUANTIZE_MODES

HELP = "generate text from a saved model (plain or chat, optional MTP self-speculative decoding)"


def add_sampling_arguments(p: argparse.ArgumentParser, default_max_tokens: int = 256) -> None:
    """Model, device and sampling flags shared by `generate` and `chat`."""
    p.add_argument("--model", required=True, help="model directory (Hugging Face layout, with tokenizer.json)")
    p.add_argument("--max-tokens", type=int, default=default_max_tokens, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0, K-EXAONE's choice)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    p.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens (0 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--speculative", choices=["mtp"], default=None, help="MTP self-speculative decoding")
    p.add_argument("--draft-tokens", type=int, default=2, help="tokens the MTP head drafts per step (default 2)")
    p.add_argument("--draft-vocab", type=int, default=None, metavar="N", help=DRAFT_VOCAB_HELP)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weights dtype (default: bfloat16 on CUDA, where the grouped-expert and flash kernels need "
                        "it; as saved on CPU)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default=None, help=QUANTIZE_HELP)


QUANTIZE_HELP = ("weight-only quantization of the Linear layers (int8: one scale per output row, through torchao, "
                 "pip install 'kexaone[fp8]'); routed experts, router, embeddings stay as loaded")
DRAFT_VOCAB_HELP = ("MTP drafts choose among token ids [0, N) only (specials, bytes, the most frequent merges): "
                    "fewer bytes read per draft at batch 1, same output (default: the whole vocabulary)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p)
    p.add_argument("--prompt", required=True, help="prompt text ('-' reads stdin)")
    p.add_argument("--chat", action="store_true", help="treat the prompt as a user message in the chat format")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--no-think", action="store_true", help="chat without reasoning (empty think block)")
    p.add_argument("--stats", action="store_true", help="print tokens/s and MTP acceptance to stderr")


def default_serving_dtype(device):
    """bfloat16 on CUDA (fp32 would send every MoE layer to the per-expert loop instead of grouped GEMM), None
    (the checkpoint's dtype) elsewhere. Training defaults are not affected."""
    import torch

    return torch.bfloat16 if torch.device(device).type == "cuda" else None


def load_engine(args):
    """Engine from --model/--device/--dtype (heavy imports happen here, not at CLI start-up)."""
    import torch

    from kexaone.engine.engine import Engine

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = default_serving_dtype(device) if args.dtype is None else getattr(torch, args.dtype)
    return Engine.from_pretrained(args.model, dtype=dtype, device=device, draft_vocab=args.draft_vocab,
                                  quantize=args.quantize)


def sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                seed=args.seed, stop=args.stop, speculative=args.speculative, draft_tokens=args.draft_tokens)


def format_stats(stats) -> str:
    parts = [f"{stats.generated_tokens} tokens", f"prefill {stats.prefill_seconds:.2f}s"]
    if stats.decode_tokens_per_second:
        parts.append(f"decode {stats.decode_tokens_per_second:.1f} tok/s")
    if stats.acceptance_rate is not None:
        parts.append(f"MTP acceptance {stats.acceptance_rate:.1%}")
        parts.append(f"{stats.tokens_per_forward:.2f} tokens/forward")
    return ", ".join(parts)


def run(args) -> int:
    import json

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    engine = load_engine(args)
    if engine.tokenizer is None:
        raise FileNotFoundError(f"{args.model} has no tokenizer.json: `kexaone generate` needs a tokenizer")
    out = sys.stdout

    def write(delta: str) -> None:
        out.write(delta)
        out.flush()

    kw = sampling_kwargs(args)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": prompt}]
        from kexaone.engine.chat_io import chat_prompt

        _, opened = chat_prompt(messages, enable_thinking=not args.no_think)
        write(opened)  # the part of the assistant turn the generation prompt already holds
        res = engine.chat(messages, enable_thinking=not args.no_think, on_text=write, **kw)
        write("\n")
        if res.tool_calls:
            write(json.dumps({"tool_calls": res.message()["tool_calls"]}, ensure_ascii=False) + "\n")
        stats = res.stats
    else:
        res = engine.generate(prompt, on_text=write, **kw)
        write("\n")
        stats = res.stats
    if args.stats:
        print(format_stats(stats), file=sys.stderr)
    return 0
