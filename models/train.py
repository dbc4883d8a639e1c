"""Train Loom's default model from scratch: ``python -m models.train --out models/loom-arith``.

A LlamaForCausalLM with a character-level tokenizer learns the task in models/task.py on a
CPU. Every example is drawn fresh from a seeded generator, so the recipe (seed, config,
steps) fully determines the weights on a given machine; recipe.json records it.
Each batch mixes whole traces (the model's sequential view, also the joined context) with
thread samples (threads 2..k seeing only the shared prefix and their own header, which is
exactly what the orchestrator sends), so parallel and sequential runs agree.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models import task, task_mv
from models import tokenizer as chartok

IGNORE = -100


@dataclass
class Recipe:
    seed: int = 1234
    hidden: int = 192
    layers: int = 4
    heads: int = 6
    intermediate: int = 576
    batch: int = 40
    steps: int = 2600
    lr: float = 2e-3
    warmup: int = 150
    weight_decay: float = 0.05
    thread_sample_p: float = 0.5
    max_minutes: float = 44.0
    term_weights: str = "1,2,2,3,3"  # draw weights of 1..5 terms: long questions need the most practice
    product_p: float = 0.0  # > 0: each term is a product with this probability (else: uniform count)
    digit_weights: str = ""  # draw weights of 1..3 digits per term ("": uniform)
    sum_loss_weight: float = 1.0  # loss weight of the running-total lines' tokens (the copies)
    copy_loss_weight: float = 1.0  # loss weight of the terms copied from the question and the outlines
    answer_loss_weight: float = 1.0  # loss weight of the answer line ``A: 23555`` (a copy of the total, zeros dropped)
    init: str = ""  # a saved model to start from ("": random weights)
    task: str = "threadweaver"  # the plan format of the traces: threadweaver (models/task.py) or multiverse
    two_digit_p: float = 0.5  # multiverse: a product's multiplier has two digits with this probability
    max_len: int = 1024  # the model's max positions
    autocast: str = ""  # "bfloat16": bf16 autocast (fast only on CPUs with bf16 units); "": float32
    threads: int = 2
    # pad each batch's length up to a multiple of this (1: to its longest sequence). 64 kept the Multiverse
    # recipe's stage 2 at 10.0k tokens/s over 8 minutes, where with 1 the run's average fell from 9.4k to 8.3k (and to
    # 7.6k by 14 minutes): with hundreds of batch lengths the CPU kernels slow down as a run goes on (AMX VM,
    # 2026-12-02). 1 is the default because the committed models' recipes were trained with it
    pad_to: int = 1
    compile: bool = False  # torch.compile the forward (dynamic shapes). With pad_to 64, 12.3k tokens/s against 10.2k
    # eager over 4 minutes (Multiverse task, bf16, no AMX, 2026-12-02); with pad_to 1 loom-arith-mv v2's whole run
    # averaged 8.9k tokens/s against v1's 9.5k eager


def model_config(r: Recipe, vocab: int, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=r.hidden, intermediate_size=r.intermediate,
        num_hidden_layers=r.layers, num_attention_heads=r.heads, num_key_value_heads=r.heads,
        max_position_embeddings=r.max_len, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<pad>"), torch_dtype="float32",
    )


def examples(q: task.Question, r: Recipe, rng: random.Random) -> list[tuple[str, str]]:
    """The whole trace, and with probability ``thread_sample_p`` one thread as it runs alone."""
    if r.task == "multiverse":
        w = task_mv.work(q)
        trace, samples = w.text, [(s.context, s.completion) for s in w.samples]
    else:
        trace, samples = task.trace(q), task.thread_samples(q)
    out = [(q.prompt, trace + "</s>")]
    if samples and rng.random() < r.thread_sample_p:
        out.append(rng.choice(samples))
    return out


def question(r: Recipe, rng: random.Random) -> task.Question:
    if r.task == "multiverse":
        return task_mv.random_question(rng, ints(r.term_weights), r.product_p or 0.75, r.two_digit_p)
    return task.random_question(rng, ints(r.term_weights), r.product_p or None, ints(r.digit_weights))


# running totals, Multiverse's nested conclusions and its forward total
SUM_LINE = re.compile(r"[a-e][=:]\d+\+\d+=\d+|A=\d+")
# a term copied from the question or from an outline: ``b 89``, ``a 345*67``, ``a1 345*7``
COPY = re.compile(r"\b[a-e]\d? \d+(?:\*\d+)?")
ANSWER = re.compile(r"A: \d+")


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # IGNORE on the context
    weights: list[float]  # per-token loss weight


def encode(tok, context: str, completion: str, sum_weight: float, copy_weight: float = 1.0,
           answer_weight: float = 1.0) -> Example:
    ctx = tok.encode(context).ids  # starts with <s>
    comp = tok.encode(completion, add_special_tokens=False)
    by_char = [1.0] * len(completion)
    for pattern, w in ((COPY, copy_weight), (SUM_LINE, sum_weight), (ANSWER, answer_weight)):
        for m in pattern.finditer(completion):
            by_char[m.start():m.end()] = [w] * (m.end() - m.start())
    weights = [by_char[start] for start, _ in comp.offsets]
    return Example(ctx + comp.ids, [IGNORE] * len(ctx) + comp.ids, [0.0] * len(ctx) + weights)


def ints(text: str) -> list[int] | None:
    return [int(w) for w in text.split(",")] if text else None


def batches(tok, r: Recipe, rng: random.Random):
    """Length-bucketed batches of fresh examples, forever."""
    pad = tok.token_to_id("<pad>")
    while True:
        pool = []
        while len(pool) < r.batch * 16:
            for ctx, comp in examples(question(r, rng), r, rng):
                pool.append(encode(tok, ctx, comp, r.sum_loss_weight, r.copy_loss_weight, r.answer_loss_weight))
        pool.sort(key=lambda e: len(e.ids))
        chunks = [pool[i:i + r.batch] for i in range(0, len(pool), r.batch)]
        rng.shuffle(chunks)
        for chunk in chunks:
            n = -(-max(len(e.ids) for e in chunk) // r.pad_to) * r.pad_to
            ids = torch.tensor([e.ids + [pad] * (n - len(e.ids)) for e in chunk])
            labels = torch.tensor([e.labels + [IGNORE] * (n - len(e.labels)) for e in chunk])
            weights = torch.tensor([e.weights + [0.0] * (n - len(e.weights)) for e in chunk])
            yield ids, labels, weights, (ids != pad).long()


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy, each target token weighted, normalised by the weights' sum."""
    logits, labels, weights = logits[:, :-1].float(), labels[:, 1:], weights[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                           ignore_index=IGNORE, reduction="none")
    w = weights.reshape(-1)
    return (ce * w).sum() / w.sum()


def lr_at(step: int, r: Recipe, minutes: float = 0.0) -> float:
    """Linear warm-up, then cosine to 5% by the last step or the minute cap, whichever comes
    first: a run that the cap ends still ends annealed."""
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    frac = max((step - r.warmup) / max(1, r.steps - r.warmup), minutes / r.max_minutes)
    return r.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train(r: Recipe, out: Path, checkpoint_every: int = 0) -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(r.seed)
    torch.set_num_threads(r.threads)
    rng = random.Random(r.seed)
    tok = chartok.build()
    vocab = 128  # the tokenizer's 118 entries, rounded up
    model = LlamaForCausalLM.from_pretrained(r.init) if r.init else LlamaForCausalLM(model_config(r, vocab, tok))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f}M", flush=True)
    forward = torch.compile(model, dynamic=True) if r.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay, betas=(0.9, 0.98))
    start, tokens, step = time.time(), 0, 0
    model.train()
    for step, (ids, labels, weights, mask) in enumerate(batches(tok, r, rng)):
        elapsed = (time.time() - start) / 60
        if step >= r.steps or elapsed > r.max_minutes:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, r, elapsed)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=r.autocast == "bfloat16"):
            # No attention mask: batches are padded on the right, so causal attention never lets a real
            # token see a pad, and without a mask SDPA runs its causal kernel (5% more tokens/s in bf16, 20% in float32 here)
            logits = forward(input_ids=ids).logits
        loss = weighted_loss(logits, labels, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        if step % 25 == 0:
            print(f"step {step} loss {loss.item():.4f} lr {lr_at(step, r, elapsed):.2e} "
                  f"tok/s {tokens / (time.time() - start):.0f} min {elapsed:.1f}", flush=True)
        if checkpoint_every and step and step % checkpoint_every == 0:
            save(model, tok, out.with_name(f"{out.name}-step{step}"), r.task)
    minutes = (time.time() - start) / 60
    save(model, tok, out, r.task)
    recipe = {"recipe": asdict(r), "steps_done": step, "train_minutes": round(minutes, 1),
              "tokens_seen": tokens, "params": n_params, "torch": torch.__version__}
    if r.init:  # the run it continued, so the whole training is on record
        recipe["init_recipe"] = json.loads((Path(r.init) / "recipe.json").read_text())
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"saved to {out} after {step} steps, {minutes:.1f} min", flush=True)


def save(model, tok, out: Path, fmt: str) -> None:
    """The weights, the tokenizer, and a generation config that declares the model's plan format
    (``parallel_format``: how Loom knows which format to serve it in)."""
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id,
                     pad_token_id=model.config.pad_token_id, do_sample=False,
                     parallel_format=fmt).save_pretrained(out)
    chartok.save(tok, out, model.config.max_position_embeddings)


def _flag(text: str) -> bool:
    if text.lower() not in ("0", "1", "false", "true"):
        raise argparse.ArgumentTypeError(f"expected 0, 1, true or false, got {text!r}")
    return text.lower() in ("1", "true")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("models/loom-arith"))
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also save every N steps to OUT-stepN (does not change the weights)")
    for name, default in asdict(Recipe()).items():
        kind = _flag if isinstance(default, bool) else type(default)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    args = vars(p.parse_args(argv))
    if args["pad_to"] < 1:
        p.error(f"--pad-to must be at least 1 (1: no padding beyond the longest sequence), got {args['pad_to']}")
    out, every = args.pop("out"), args.pop("checkpoint_every")
    train(Recipe(**args), out, every)


if __name__ == "__main__":
    main()
