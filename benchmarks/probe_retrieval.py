"""Retrieval probe: how many optimizer steps does a model need before it retrieves a value from its context?

The speedrun's `default` budget leaves in-context retrieval (and the operand copying that arithmetic-with-reasoning
starts with) at chance. This probe asks whether that is the data mixture or the step budget: it trains a fresh model
on nothing but the corpus's retrieval documents (kexaone.data.synthetic.retrieval, the training format of the
speedrun) with the speedrun's optimizer and peak LRs (held after a linear warmup; packed rows without document
masking, so the probe stays a few lines of plain training), and every `--eval-every` steps scores the held-out
retrieval task:
- `exact`: the speedrun's own metric (greedy answer restates the whole record, kexaone.eval.tasks.evaluate_task);
- `value_top1`: teacher-forced, the share of items whose value's first token is the model's top choice once the
  answer has been given up to the value ("Answer: Locker 7306:" -> " Talvik"): a softer sign of retrieval.
Chance for both is about 1 / records in the context (guessing one of the context's values).

`--reference gpt2` trains transformers' GPT-2 of the same width and depth instead (learned absolute positions, no
QK-norm, no MoE, AdamW at --reference-lr): a control that tells a slow-to-learn architecture or implementation from
a step budget that is simply too small for the skill.

Usage: python benchmarks/probe_retrieval.py --tokenizer runs/speedrun/tokenizer/tokenizer [--steps 600]
       [--eval-every 100] [--override '{"hidden_size": 128}'] [--reference gpt2] [--out runs/probe_retrieval.json]
       python benchmarks/probe_retrieval.py --format RUN.json [RUN.json ...] [--md benchmarks/results/probe_retrieval.md]
(--format writes the markdown table of finished probes; every number in it is read from their JSON.)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kexaone.config import KExaoneConfig
from kexaone.data.synthetic.retrieval import make_document
from kexaone.data.synthetic.tasks import retrieval_task
from kexaone.eval.tasks import evaluate_task
from kexaone.model.transformer import KExaoneForCausalLM
from kexaone.report.machine import machine_info
from kexaone.tokenizer import KExaoneTokenizer
from kexaone.train.optim import build_optimizer
from kexaone.train.schedule import WSDSchedule, make_scheduler
from kexaone.utils.io import atomic_write_text


def retrieval_rows(tok, seed: int, batch_size: int, seq_len: int, long_fraction: float):
    """Endless [batch_size, seq_len] batches of packed retrieval training documents (each followed by eot)."""
    rng = random.Random(f"probe-retrieval|{seed}")
    stream: list[int] = []
    need = batch_size * seq_len
    while True:
        while len(stream) < need:
            stream += list(tok.encode(make_document(rng, rng.random() < long_fraction))) + [tok.eot_id]
        yield torch.tensor(stream[:need]).view(batch_size, seq_len)
        del stream[:need]


@torch.inference_mode()
def value_top1(model, tok, items) -> float:
    """Teacher-forced: share of items whose value's first token is the argmax after the answer's key part."""
    model.eval()
    hits = 0
    for it in items:
        key_part = it.answer.rpartition(" ")[0]  # "Locker 7306:" or "key 1078 =": all but the value
        prefix = list(tok.encode(it.prompt + " " + key_part))
        whole = list(tok.encode(it.prompt + " " + it.answer))
        if whole[:len(prefix)] != prefix or len(whole) == len(prefix):
            continue  # a merge crossed the key/value boundary: the item cannot be scored this way
        logits = model(input_ids=torch.tensor([prefix])).logits[0, -1]
        hits += int(logits.argmax()) == whole[len(prefix)]
    model.train()
    return hits / len(items)


def _describe(log: dict) -> str:
    """'kexaone H256 L8 32 experts; Muon 0.003, AdamW groups 0.03' or 'GPT-2 H128 L4; AdamW 0.001'."""
    a = log["args"]
    c = KExaoneConfig.preset(a["preset"]).replace(**json.loads(a["override"] or "{}"))
    if a.get("reference") == "gpt2":
        return f"GPT-2 H{c.hidden_size} L{c.num_hidden_layers}; AdamW {a['reference_lr']:g}"
    return (f"kexaone H{c.hidden_size} L{c.num_hidden_layers} {c.num_experts} experts; Muon {a['lr']:g}, "
            f"AdamW groups {a['adamw_lr']:g}")


def format_probes(paths: list[str]) -> str:
    """Markdown: one row per evaluation of each probe run (read from the JSON files the probe wrote)."""
    logs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    # The machine the probes ran on (recorded by each run; older logs without it: this machine).
    m = next((log["machine"] for log in logs if "machine" in log), None) or machine_info()
    lines = ["# Retrieval probe: steps before in-context retrieval appears", "",
             (f"Machine: {m.get('cpu')}, {m.get('cores_usable')} usable cores, torch {m.get('torch')}. Written by "
              "`benchmarks/probe_retrieval.py --format`; each run trains a fresh model on retrieval documents only "
              "(batch 8 x 256 tokens) and scores the speedrun's held-out retrieval task."), "",
             "| run | model | parameters | step | seconds | train loss | exact record | value first token | chance |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path, log in zip(paths, logs):
        for e in log["evals"]:
            lines.append(f"| {Path(path).stem} | {_describe(log)} | {log['params'] / 1e6:.1f}M | {e['step']} | "
                         f"{e['seconds']:.0f} | {e['loss']:.3f} | {e['exact']:.2f} | {e['value_top1']:.2f} | "
                         f"{log['chance']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", nargs="+", metavar="RUN_JSON", help="format finished probes as markdown and exit")
    ap.add_argument("--md", default="benchmarks/results/probe_retrieval.md")
    ap.add_argument("--tokenizer", help="a trained kexaone tokenizer directory")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--override", default="{}", help="JSON of KExaoneConfig fields changed from the preset")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--adamw-lr", type=float, default=3e-2)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--long-fraction", type=float, default=0.05, help="as the default corpus")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", choices=["gpt2"], default=None,
                    help="train transformers' GPT-2 of the same width/depth instead (a control)")
    ap.add_argument("--reference-lr", type=float, default=1e-3)
    ap.add_argument("--out", default="runs/probe_retrieval.json")
    a = ap.parse_args()
    if a.format:
        atomic_write_text(Path(a.md), format_probes(a.format))
        print(f"wrote {a.md}")
        return
    if not a.tokenizer:
        ap.error("--tokenizer is required to run a probe")

    torch.set_num_threads(a.threads)
    tok = KExaoneTokenizer.from_dir(a.tokenizer)
    config = KExaoneConfig.preset(a.preset).replace(vocab_size=tok.vocab_size, **json.loads(a.override))
    torch.manual_seed(a.seed)
    if a.reference == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=max(1024, 2 * a.seq_len),
                                           n_embd=config.hidden_size, n_layer=config.num_hidden_layers,
                                           n_head=config.num_attention_heads, bos_token_id=tok.eot_id,
                                           eos_token_id=tok.eot_id))
        opt = torch.optim.AdamW(model.parameters(), lr=a.reference_lr, weight_decay=0.0)
    else:
        model = KExaoneForCausalLM(config)
        opt = build_optimizer(model, "muon", lr=a.lr, adamw_lr=a.adamw_lr)
    # Linear warmup, then the peak LRs held (no decay: the probe asks when retrieval appears, not where it ends).
    # Without decay total_steps only bounds the warmup, so a probe shorter than its warmup just stops inside it.
    scheduler = make_scheduler(opt, WSDSchedule(max_lr=a.lr, total_steps=max(a.steps, a.warmup),
                                                warmup_steps=a.warmup, decay_fraction=0.0))
    task = retrieval_task(a.items, tokenizer=tok, max_prompt_tokens=a.seq_len, seed=a.seed)
    batches = retrieval_rows(tok, a.seed, a.batch_size, a.seq_len, a.long_fraction)
    log = {"args": vars(a), "machine": machine_info(), "model": type(model).__name__,
           "chance": task.chance_baseline, "params": sum(p.numel() for p in model.parameters()), "evals": []}
    print(f"{log['params'] / 1e6:.1f}M parameters; {task.description}; chance {task.chance_baseline:.2f}", flush=True)
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        x = next(batches)
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        scheduler.step()
        loss = float(out.loss.detach())
        if step % a.eval_every == 0 or step == a.steps:
            r = evaluate_task(model, tok, task.name, task.items, chance=task.chance_baseline,
                              max_new_tokens=task.max_new_tokens, keep_examples=2)
            row = {"step": step, "seconds": round(time.perf_counter() - t0, 1), "loss": round(loss, 4),
                   "exact": r.accuracy, "value_top1": value_top1(model, tok, task.items),
                   "example": r.examples[0]["output"][:80] if r.examples else ""}
            log["evals"].append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(a.out), json.dumps(log, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
