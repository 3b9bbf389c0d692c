"""Agents and tools: a tool registry, a search agent with a summarizer and a trajectory compressor, and synthetic
tool-use environments with verifiable pass criteria (SPEC section 5).

Every name loads on first use, so `kexaone --help` (which imports the command modules under this package) stays
fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Tool": "kexaone.agents.tools", "ToolRegistry": "kexaone.agents.tools", "ToolResult": "kexaone.agents.tools",
    "function_schema": "kexaone.agents.tools", "make_tool": "kexaone.agents.tools", "tool": "kexaone.agents.tools",
    "run_agent": "kexaone.agents.loop", "AgentConfig": "kexaone.agents.loop", "AgentResult": "kexaone.agents.loop",
    "DocumentIndex": "kexaone.agents.search",
    "evaluate_tools": "kexaone.agents.envs.evaluate", "pass_hat_k": "kexaone.agents.envs.evaluate",
    "gold_conversation": "kexaone.agents.envs.evaluate",
    "ToolTask": "kexaone.agents.envs.tasks", "generate_candidates": "kexaone.agents.envs.tasks",
    "load_tasks": "kexaone.agents.envs.tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kexaone.agents' has no attribute {name!r}")
