"""`kexaone chat`: an interactive, streaming, multi-turn terminal chat.

Commands: `/think on|off` (reasoning mode), `/reset` (forget the conversation), `/system TEXT` (set the system
message and reset), `/exit` (or Ctrl-D), `/help`. Reasoning streams dimmed (on a terminal) before the answer;
tool calls the model makes are printed as JSON (this command runs no tools).

`ChatSession` holds the conversation and is independent of the terminal, so the loop (`repl`) is testable with
any input function and output stream.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TextIO

from kexaone.engine.cli_generate import add_sampling_arguments, format_stats, sampling_kwargs

HELP = "interactive terminal chat with a saved model (streaming, multi-turn, /think on|off, /reset)"

COMMANDS_HELP = "/think on|off   reasoning mode\n/reset          new conversation\n/system TEXT    set the " \
                "system message (resets)\n/stats          toggle statistics\n/exit           quit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p, default_max_tokens=1024)
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--no-think", action="store_true", help="start with reasoning off")
    p.add_argument("--stats", action="store_true", help="print tokens/s and MTP acceptance after each reply")


class ChatSession:
    """A conversation with an engine: user turns in, streamed assistant turns out."""

    def __init__(self, engine, system: str | None = None, enable_thinking: bool = True, **gen):
        self.engine = engine
        self.system = system
        self.enable_thinking = enable_thinking
        self.gen = gen
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str, on_event: Callable[[str, str], None] | None = None):
        """Add a user turn and generate the reply; `on_event(kind, delta)` streams ("reasoning"|"content", text)."""
        from kexaone.engine.chat_io import ReplyStreamParser, chat_prompt

        self.messages.append({"role": "user", "content": text})
        _, opened = chat_prompt(self.messages, enable_thinking=self.enable_thinking)
        parser = ReplyStreamParser(opened)

        def on_text(delta: str) -> None:
            for kind, piece in parser.feed(delta):
                if on_event:
                    on_event(kind, piece)

        try:
            res = self.engine.chat(self.messages, enable_thinking=self.enable_thinking, on_text=on_text, **self.gen)
        except BaseException:
            self.messages.pop()  # the turn never happened
            raise
        for kind, piece in parser.finish():
            if on_event:
                on_event(kind, piece)
        self.messages.append(res.message())
        return res


def repl(session: ChatSession, read: Callable[[str], str], out: TextIO, color: bool = False,
         show_stats: bool = False) -> int:
    """Run the chat loop until /exit or end of input."""
    dim, reset = ("\x1b[2m", "\x1b[0m") if color else ("", "")
    out.write(f"kexaone chat: reasoning {'on' if session.enable_thinking else 'off'}; /help for commands\n")
    while True:
        try:
            line = read("> ")
        except EOFError:
            out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            arg = arg.strip()
            if cmd in ("/exit", "/quit"):
                return 0
            if cmd == "/help":
                out.write(COMMANDS_HELP + "\n")
            elif cmd == "/reset":
                session.reset()
                out.write("(conversation reset)\n")
            elif cmd == "/think" and arg in ("on", "off"):
                session.enable_thinking = arg == "on"
                out.write(f"(reasoning {arg})\n")
            elif cmd == "/system":
                session.system = arg or None
                session.reset()
                out.write("(system message set; conversation reset)\n")
            elif cmd == "/stats":
                show_stats = not show_stats
                out.write(f"(statistics {'on' if show_stats else 'off'})\n")
            else:
                out.write(f"unknown command {text!r}; /help lists the commands\n")
            out.flush()
            continue

        state = {"kind": None}

        def show(kind: str, delta: str) -> None:
            if kind != state["kind"]:
                if kind == "reasoning":
                    out.write(f"{dim}[thinking] ")
                elif state["kind"] == "reasoning":
                    out.write(f"{reset}\n")
                state["kind"] = kind
            out.write(delta)
            out.flush()

        try:
            res = session.send(text, show)
        except ValueError as e:
            out.write(f"{reset}error: {e}\n")
            continue
        if state["kind"] == "reasoning":
            out.write(reset)
        out.write("\n")
        if res.tool_calls:
            out.write("[tool calls] " + json.dumps(res.message()["tool_calls"], ensure_ascii=False) + "\n")
        if res.generation.finish_reason == "length":
            out.write("(reply cut at --max-tokens)\n")
        if show_stats:
            out.write(f"({format_stats(res.stats)})\n")
        out.flush()


def run(args) -> int:
    from kexaone.engine.cli_generate import load_engine

    engine = load_engine(args)
    if engine.tokenizer is None:
        raise FileNotFoundError(f"{args.model} has no tokenizer.json: `kexaone chat` needs a tokenizer")
    session = ChatSession(engine, system=args.system, enable_thinking=not args.no_think, **sampling_kwargs(args))
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    return repl(session, input, sys.stdout, color=sys.stdout.isatty(), show_stats=args.stats)
