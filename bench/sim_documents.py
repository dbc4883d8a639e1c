"""Synthetic ThreadWeaver-like documents for the simulated engine: jobs that fork as a reasoning
model does, at the lengths such models write.

    python -m bench.sim_documents --jobs 500 --seed 1 --out synthetic.jsonl

Each document is a question line ``Q: synthetic <seed>-<n>``, then ``<think>``, a preamble, one
parallel block in ThreadWeaver's layout (orchestrator.plan.published.THREADWEAVER.render_block:
the plan, each thread after its header, joined as the authors' controller joins them), a
conclusion, ``</think>`` and an answer line. Lengths are in the shipped tokenizer's tokens (one
character each), drawn from a seeded distribution (a document's critical path: all it writes but
the threads other than the longest, which run beside it):
- outlines per plan: uniform over 2..8;
- thread length: log-normal, median THREAD_MEDIAN tokens, sigma THREAD_SIGMA, clipped to
  THREAD_MIN..THREAD_MAX (a few hundred to a few thousand);
- preamble: uniform PREAMBLE tokens; conclusion: uniform CONCLUSION tokens.
Text is lines of random lowercase words, so no tag or stop string appears by chance. A document
needs ``engine.max_model_len`` above its length (the longest is printed).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import string
from dataclasses import dataclass
from pathlib import Path

from orchestrator.plan.formats import Outline
from orchestrator.plan.published import THREADWEAVER as TW

THREAD_MEDIAN, THREAD_SIGMA, THREAD_MIN, THREAD_MAX = 600, 0.8, 100, 4000
OUTLINES = (2, 8)
PREAMBLE = (50, 400)
CONCLUSION = (50, 300)


def words(rng: random.Random, n: int) -> str:
    """About ``n`` characters of lowercase words, a line break every dozen words."""
    out, size = [], 0
    while size < n:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8)))
        out.append(word + ("\n" if len(out) % 12 == 11 else " "))
        size += len(out[-1])
    return "".join(out)[:n].rstrip() + "\n"


def thread_length(rng: random.Random) -> int:
    return int(min(THREAD_MAX, max(THREAD_MIN, rng.lognormvariate(math.log(THREAD_MEDIAN), THREAD_SIGMA))))


@dataclass(frozen=True)
class Document:
    question: str  # its first line: the prompt a job sends
    text: str  # the whole document, the question first
    critical_tokens: int  # tokens written on its critical path: all but the threads other than the longest


def document(rng: random.Random, name: str) -> Document:
    k = rng.randint(*OUTLINES)
    outlines = [Outline(str(i + 1), words(rng, rng.randint(20, 60)).strip()) for i in range(k)]
    bodies = [f" {o.text}\n{words(rng, thread_length(rng))}{TW.tags.thread_close}" for o in outlines]
    tail = words(rng, rng.randint(*CONCLUSION)) + f"</think>\nA: {rng.randint(0, 99999)}"
    block = TW.render_block(outlines, bodies, after=tail)
    question = f"Q: synthetic {name}\n"
    text = question + "<think>\n" + words(rng, rng.randint(*PREAMBLE)) + block
    lengths = [len(b) for b in bodies]
    return Document(question, text, len(text) - len(question) - sum(lengths) + max(lengths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    docs = [document(rng, f"{args.seed}-{n}").text for n in range(args.jobs)]
    Path(args.out).write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    print(json.dumps({"documents": len(docs), "longest_tokens": max(map(len, docs)) + 1,
                      "mean_tokens": round(sum(map(len, docs)) / len(docs))}))


if __name__ == "__main__":
    main()
