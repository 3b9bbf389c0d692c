"""Agents and tools: a tool registry, a search agent with a summarizer and a trajectory compressor, and synthetic
tool-use environments with verifiable pass criteria (SPEC section 5).

Imports are light: the agent loop, the index and the environments load on first use.
"""

from __future__ import annotations

from kexaone.agents.tools import Tool, ToolRegistry, ToolResult, function_schema, make_tool, tool

__all__ = ["Tool", "ToolRegistry", "ToolResult", "function_schema", "make_tool", "tool", "run_agent", "AgentConfig",
           "AgentResult", "DocumentIndex", "evaluate_tools", "pass_hat_k"]


def __getattr__(name):
    if name in ("run_agent", "AgentConfig", "AgentResult"):
        from kexaone.agents import loop
        return getattr(loop, name)
    if name == "DocumentIndex":
        from kexaone.agents.search import DocumentIndex
        return DocumentIndex
    if name in ("evaluate_tools", "pass_hat_k"):
        from kexaone.agents.envs import evaluate
        return getattr(evaluate, name)
    raise AttributeError(f"module 'kexaone.agents' has no attribute {name!r}")
