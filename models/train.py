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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models import task
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
    threads: int = 2


def model_config(r: Recipe, vocab: int, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=r.hidden, intermediate_size=r.intermediate,
        num_hidden_layers=r.layers, num_attention_heads=r.heads, num_key_value_heads=r.heads,
        max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<pad>"), torch_dtype="float32",
    )


def examples(q: task.Question, rng: random.Random, p_thread: float) -> list[tuple[str, str]]:
    out = [(q.prompt, task.trace(q) + "</s>")]
    samples = task.thread_samples(q)
    if samples and rng.random() < p_thread:
        out.append(rng.choice(samples))
    return out


def encode(tok, context: str, completion: str) -> tuple[list[int], list[int]]:
    ctx = tok.encode(context).ids  # starts with <s>
    comp = tok.encode(completion, add_special_tokens=False).ids
    return ctx + comp, [IGNORE] * len(ctx) + comp


def batches(tok, r: Recipe, rng: random.Random):
    """Length-bucketed batches of fresh examples, forever."""
    pad = tok.token_to_id("<pad>")
    weights = [int(w) for w in r.term_weights.split(",")] if r.term_weights else None
    while True:
        pool = []
        while len(pool) < r.batch * 16:
            q = task.random_question(rng, weights)
            for ctx, comp in examples(q, rng, r.thread_sample_p):
                pool.append(encode(tok, ctx, comp))
        pool.sort(key=lambda e: len(e[0]))
        chunks = [pool[i:i + r.batch] for i in range(0, len(pool), r.batch)]
        rng.shuffle(chunks)
        for chunk in chunks:
            n = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([e[0] + [pad] * (n - len(e[0])) for e in chunk])
            labels = torch.tensor([e[1] + [IGNORE] * (n - len(e[1])) for e in chunk])
            yield ids, labels, (ids != pad).long()


def lr_at(step: int, r: Recipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    frac = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train(r: Recipe, out: Path, checkpoint_every: int = 0) -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(r.seed)
    torch.set_num_threads(r.threads)
    rng = random.Random(r.seed)
    tok = chartok.build()
    vocab = 128  # the tokenizer's 118 entries, rounded up
    model = LlamaForCausalLM(model_config(r, vocab, tok))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f}M", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay, betas=(0.9, 0.98))
    start, tokens, step = time.time(), 0, 0
    model.train()
    for step, (ids, labels, mask) in enumerate(batches(tok, r, rng)):
        elapsed = (time.time() - start) / 60
        if step >= r.steps or elapsed > r.max_minutes:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, r)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        if step % 25 == 0:
            print(f"step {step} loss {loss.item():.4f} lr {lr_at(step, r):.2e} "
                  f"tok/s {tokens / (time.time() - start):.0f} min {elapsed:.1f}", flush=True)
        if checkpoint_every and step and step % checkpoint_every == 0:
            save(model, tok, out.with_name(f"{out.name}-step{step}"))
    minutes = (time.time() - start) / 60
    save(model, tok, out)
    recipe = {"recipe": asdict(r), "steps_done": step, "train_minutes": round(minutes, 1),
              "tokens_seen": tokens, "params": n_params, "torch": torch.__version__}
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"saved to {out} after {step} steps, {minutes:.1f} min", flush=True)


def save(model, tok, out: Path) -> None:
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id,
                     pad_token_id=model.config.pad_token_id, do_sample=False).save_pretrained(out)
    chartok.save(tok, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("models/loom-arith"))
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also save every N steps to OUT-stepN (does not change the weights)")
    for name, default in asdict(Recipe()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = vars(p.parse_args(argv))
    out, every = args.pop("out"), args.pop("checkpoint_every")
    train(Recipe(**args), out, every)


if __name__ == "__main__":
    main()
