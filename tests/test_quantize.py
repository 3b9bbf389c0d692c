"""Weight-only int8 generation (kexaone.engine.quantize through torchao): which modules are quantized, the
arithmetic against an independent per-row int8 reference, and the engine and command line on a quantized model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("torchao", reason="weight-only int8 needs torchao (the `fp8` extra)")

from kexaone.cli import main  # noqa: E402
from kexaone.engine import Engine  # noqa: E402
from kexaone.engine.quantize import quantize_weights  # noqa: E402
from test_engine_models import byte_tokenizer, one_thread, tiny_model  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_thread():
        yield


def int8_rows_reference(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8 (written from the scheme, not from torchao's code): scale = max|row| / 127.5,
    q = round(w / scale) in [-128, 127]. Returns (q * scale, scale)."""
    scale = w.abs().amax(dim=1, keepdim=True) / 127.5
    return torch.clamp(torch.round(w / scale), -128, 127) * scale, scale


def test_int8_quantizes_every_linear_and_nothing_else():
    model = tiny_model(0).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    names = quantize_weights(model, "int8")
    assert set(names) == linears and "lm_head" in linears
    assert any(n.startswith("mtp.") for n in names) and any(".shared_experts." in n for n in names)
    for n, m in model.named_modules():
        if n in linears:
            assert type(m.weight) not in (nn.Parameter, torch.Tensor), n
    # experts, router, embeddings and norms are untouched (the router must route exactly as before)
    for n, p in model.named_parameters():
        if n.rsplit(".", 1)[0] not in linears:
            assert type(p) is nn.Parameter and torch.equal(p, before[n]), n
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantize_weights(tiny_model(0), "int4")


def test_int8_linear_is_per_row_symmetric_int8():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=False)
    w = lin.weight.detach().clone()
    quantize_weights(nn.Sequential(lin), "int8")
    with torch.inference_mode():
        used = lin(torch.eye(64)).T  # the weight the layer multiplies by, read through its outputs
    ref, scale = int8_rows_reference(w)
    steps = used / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 128  # int8 multiples of the scale
    # equal to the reference up to the rounding of exact ties (w / scale == k + 0.5), at most one step off
    assert ((used - ref).abs() <= scale * 1.001).all()
    assert (used - ref).abs().gt(scale / 2).float().mean() < 0.01
    assert (used - w).abs().max() > 1e-5  # it really is quantized
    x = torch.randn(5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), x @ used.T, rtol=0, atol=1e-5)


def test_quantized_model_stays_close_and_mtp_equals_plain_greedy():
    model = tiny_model(0).eval().requires_grad_(False)
    q = copy.deepcopy(model)
    quantize_weights(q, "int8")
    x = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = model(x).logits, q(x).logits
    assert (a - b).norm() <= 0.1 * a.norm()  # random weights: small, near-tied logits, the hardest case
    eng = Engine(q, draft_vocab=40)  # a draft vocabulary slices the output of a quantized head, not its weight
    plain = eng.generate(list(range(3, 19)), max_new_tokens=40, temperature=0)
    for k in (1, 3):
        spec = eng.generate(list(range(3, 19)), max_new_tokens=40, temperature=0, speculative="mtp", draft_tokens=k)
        assert spec.tokens == plain.tokens


def test_generate_cli_quantize_int8(tmp_path, capsys):
    tok = byte_tokenizer()
    tiny_model(0, vocab_size=tok.vocab_size).save_pretrained(tmp_path)
    tok.save(tmp_path)
    rc = main(["generate", "--model", str(tmp_path), "--prompt", "hello", "--max-tokens", "12", "--temperature", "0",
               "--quantize", "int8"])
    out, _ = capsys.readouterr()
    expect = Engine.from_pretrained(tmp_path, quantize="int8").generate("hello", max_new_tokens=12, temperature=0)
    assert rc == 0 and out == expect.text + "\n"
    assert type(Engine.from_pretrained(tmp_path, quantize="int8").model.lm_head.weight) is not nn.Parameter
