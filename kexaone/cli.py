"""The `kexaone` command line: one sub-command per job, each defined in the module that does the work.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and keeps heavy
imports (torch, tokenizers, fastapi) inside `run`, so `kexaone --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kexaone.utils.cpu import keep_freed_memory

# command name -> module implementing it
COMMANDS: dict[str, str] = {
    "info": "kexaone.model.info",
    "tokenizer": "kexaone.tokenizer.cli",
    "data": "kexaone.data.cli",
    "pretrain": "kexaone.train.pretrain",
    "generate": "kexaone.engine.cli_generate",
    "chat": "kexaone.engine.cli_chat",
    "serve": "kexaone.engine.server",
    "speedrun": "kexaone.speedrun",
    # Stages and tools of the rest of the recipe; a command whose module is not there yet is left out.
    "eval": "kexaone.eval.cli",
    "safety": "kexaone.eval.safety.cli",
    "sft": "kexaone.train.sft",
    "rl": "kexaone.rl.cli",
    "pref": "kexaone.rl.pref_cli",
    "extend": "kexaone.train.extend",
    "agent": "kexaone.agents.cli",
    "tools": "kexaone.agents.tools_cli",
    "ablate": "kexaone.pipeline.ablate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kexaone",
        description="K-EXAONE in PyTorch: model, SuperBPE tokenizer, pre-training recipe, inference and serving.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
                raise  # a missing dependency inside an existing command module is a real error
            continue  # command not part of this build
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    keep_freed_memory()  # every command trains or runs a model: reuse large CPU buffers (kexaone.utils.cpu)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        # Errors a user can cause carry a message that names the problem: print it, not a traceback.
        print(f"kexaone {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
