"""Models and tokenizers built for the engine tests (no test functions here).

- `tiny_model`: the random `tiny` preset.
- `aligned_model`: a random model whose lm_head is built so that the next token is mostly a fixed permutation of
  the current one, and whose MTP head is built to predict that permutation of the token it reads. Its drafts are
  then often, but not always, accepted (the attention and FFN branches, kept at a reduced scale, perturb the
  main model), which exercises every branch of the speculative decoder: full, partial and zero acceptance.
- `byte_tokenizer`: a byte-level tokenizer with the K-EXAONE special tokens and no merges (every UTF-8 byte is a
  token, so Korean characters span several tokens).
- `ScriptedProcessor`: a logits processor that forces a fixed token sequence (for deterministic server tests).
"""

from __future__ import annotations

import contextlib
import time

import torch

from kexaone.config import KExaoneConfig


@contextlib.contextmanager
def one_thread():
    """Tiny models run far faster on one thread on a loaded machine (no cross-thread synchronisation)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def tiny_config(**changes) -> KExaoneConfig:
    return KExaoneConfig.preset("tiny").replace(**changes)


def tiny_model(seed: int = 0, **changes):
    from kexaone.model.transformer import KExaoneForCausalLM

    torch.manual_seed(seed)
    return KExaoneForCausalLM(tiny_config(**changes)).eval()


@torch.no_grad()
def aligned_model(seed: int = 0, residual_scale: float = 0.5, **changes):
    model = tiny_model(seed, **changes)
    V = model.config.vocab_size
    H = model.config.hidden_size
    g = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(V, generator=g)
    E = model.model.embed_tokens.weight
    W = torch.empty_like(model.lm_head.weight)
    W[perm] = E * 8.0  # logits of token perm[x] are large when the hidden state points along embed(x)
    model.lm_head.weight.copy_(W)
    for name, p in model.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")) or name.endswith("experts.down_proj"):
            p.mul_(residual_scale)
    fc = torch.zeros(H, 2 * H)
    fc[:, :H] = torch.eye(H)  # the MTP input is dominated by embed(token t+1): it predicts perm[token t+1]
    model.mtp.fc.weight.copy_(fc + 0.02 * torch.randn(H, 2 * H, generator=g))
    model.perm = perm
    return model


def byte_tokenizer():
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.specials import SPECIAL_TOKENS

    token_bytes = [b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)]
    return KExaoneTokenizer.from_merges(token_bytes, [])


class ScriptedProcessor:
    """Forces generated token i to be script[i] (then the last script token forever)."""

    def __init__(self, script: list[int]):
        self.script = list(script)

    def __call__(self, generated: list[int], logits_V: torch.Tensor) -> torch.Tensor:
        tok = self.script[min(len(generated), len(self.script) - 1)]
        out = torch.full_like(logits_V, float("-inf"))
        out[tok] = 0.0
        return out


class SwitchableProcessor:
    """A logits processor the server tests steer between requests: `script` forces a token sequence, `fail`
    raises inside the engine (to check that one failing request does not take the server down), None of both
    leaves the model's logits alone. `delay` seconds of sleep per token pace the stream, so a client sees it arrive
    in pieces however fast the machine decodes."""

    def __init__(self):
        self.script: list[int] | None = None
        self.fail = False
        self.delay = 0.0

    def __call__(self, generated: list[int], logits_V: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("injected failure")
        if self.script is None:
            return logits_V
        return ScriptedProcessor(self.script)(generated, logits_V)


class ServerThread:
    """uvicorn serving an app on 127.0.0.1 at a free port, in a background thread (stopped by `stop`)."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> "ServerThread":
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
