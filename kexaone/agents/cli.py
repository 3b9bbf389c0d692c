"""`kexaone agent`: answer a question with the search agent over a local document collection.

    kexaone agent --model DIR --docs notes/ --docs faq.jsonl --question "..." --out run.json [--compress-every 4]
    kexaone agent --endpoint http://127.0.0.1:8000 --docs corpus.parquet --question "..." --out run.json

The model is a local checkpoint (`--model`, through the in-process engine) or any OpenAI-compatible server
(`--endpoint`, e.g. `kexaone serve` or vLLM with auto tool choice). Documents are any kexaone data source (txt, md,
JSONL, Parquet, directories, globs). `--tools FILE.py` adds the functions marked `@kexaone.agents.tool` in that
file. The answer is printed; the trajectory (every call, result, summary and compression) is written to `--out`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HELP = "Answer a question with the search agent (BM25 search, summarizer, trajectory compressor, sandboxed python)."


def add_backend_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--model DIR | --endpoint URL (with --api-model, --api-key-env), shared by the agent and tools commands."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--model", metavar="DIR", help="a local model directory (HF layout, with tokenizer)")
    g.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-model", default=None, help="model name at the endpoint (default: the first of /v1/models)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the endpoint's API key (never pass keys on the command line)")


def make_backend(model: str | None, endpoint: str | None, api_model: str | None = None,
                 api_key_env: str | None = None, seed: int = 0):
    from kexaone.eval.backends import LocalBackend, OpenAIBackend

    if model:
        if not Path(model).is_dir():
            raise FileNotFoundError(f"--model {model!r} is not a directory")
        return LocalBackend.from_pretrained(model, seed=seed)
    if endpoint:
        return OpenAIBackend(endpoint, model=api_model, api_key_env=api_key_env)
    raise ValueError("give a model: --model DIR or --endpoint URL")


def load_user_tools(path: str):
    """A ToolRegistry with the `@tool`-marked functions of the Python file `path`."""
    from kexaone.agents.tools import ToolRegistry

    p = Path(path)
    if not p.is_file() or p.suffix != ".py":
        raise FileNotFoundError(f"--tools {path!r} is not a Python file")
    spec = importlib.util.spec_from_file_location(f"kexaone_user_tools_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the user's own file, run as they asked (unlike model-written code)
    reg = ToolRegistry()
    if not reg.register_marked(vars(module).values()):
        raise ValueError(f"--tools {path}: no function is marked with @kexaone.agents.tool")
    return reg


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_backend_arguments(p)
    p.add_argument("--question", required=True, help="the question to answer")
    p.add_argument("--docs", action="append", default=[], metavar="SPEC",
                   help="documents to search (repeatable): files, directories, globs (kexaone data source specs)")
    p.add_argument("--text-field", default="text", help="JSONL/Parquet field holding the document text")
    p.add_argument("--txt-mode", choices=("file", "line"), default="file",
                   help="a .txt file is one document (file) or one per line (line)")
    p.add_argument("--out", required=True, metavar="FILE.json", help="where to write the trajectory")
    p.add_argument("--tools", default=None, metavar="FILE.py", help="a Python file with @kexaone.agents.tool functions")
    p.add_argument("--compress-every", type=int, default=0, metavar="N",
                   help="replace the history with a JSON record every N tool steps (0: never)")
    p.add_argument("--compress-at-tokens", type=int, default=0, metavar="T",
                   help="also compress after a step whose prompt had at least T tokens (0: never)")
    p.add_argument("--max-steps", type=int, default=16, help="tool calls allowed in all")
    p.add_argument("--max-tokens", type=int, default=200_000,
                   help="prompt + completion tokens allowed over every model call")
    p.add_argument("--max-reply-tokens", type=int, default=512)
    p.add_argument("--no-summarize", action="store_true", help="open returns raw passages, not the summarizer's")
    p.add_argument("--no-python", action="store_true", help="do not offer the sandboxed python tool")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--thinking", choices=("on", "off", "default"), default="default",
                   help="K-EXAONE reasoning mode for the agent's turns")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from kexaone.agents.loop import AgentConfig, run_agent
    from kexaone.agents.search import DocumentIndex

    config = AgentConfig(max_steps=args.max_steps, max_total_tokens=args.max_tokens,
                         compress_every=args.compress_every, compress_at_tokens=args.compress_at_tokens,
                         summarize=not args.no_summarize,
                         python=not args.no_python, max_reply_tokens=args.max_reply_tokens,
                         temperature=args.temperature, top_p=args.top_p,
                         enable_thinking={"on": True, "off": False, "default": None}[args.thinking], seed=args.seed)
    out = Path(args.out)
    if not out.parent.exists():
        raise FileNotFoundError(f"--out directory {out.parent} does not exist")
    registry = load_user_tools(args.tools) if args.tools else None
    index = DocumentIndex.from_sources(args.docs, text_field=args.text_field, txt_mode=args.txt_mode) \
        if args.docs else None
    backend = make_backend(args.model, args.endpoint, args.api_model, args.api_key_env, seed=args.seed)
    result = run_agent(args.question, backend, index=index, registry=registry, config=config, trajectory_path=out)
    print(result.answer)
    print(f"[{result.stopped}: {result.steps} tool steps, {result.compressions} compressions, {result.tokens} tokens; "
          f"trajectory in {out}]", file=sys.stderr)
    return 0
