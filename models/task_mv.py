"""The arithmetic task in the Multiverse format, with nested blocks (``models/loom-arith-mv``).

The questions of ``models/task.py`` with one change: a product's multiplier may have two
digits, ``345*67``. The trace keeps task.py's keyed scratchpad and writes the plan in
Multiverse's tags (``<Think>``, ``<Parallel>``, ``<Goal>``, ``<Outline>``, ``<Path>``,
``<Conclusion>``; docs/formats.md): one block with one path per product when there are two or
more products, and inside a product with a two-digit multiplier a nested block with one path
per multiplier digit, ids ``2.1`` and ``2.2`` under path ``2`` as Multiverse numbers them. So
a question forks at depth 2 exactly when it has two or more products and one of them has a
two-digit multiplier.

For ``Q: 345*67+89+12*3`` the product ``a 345*67`` works in its path:
- a nested block: path ``1.1`` writes ``a1 345*7``, the digit steps and ``a1=`` with the
  value; path ``1.2`` writes ``a2 345*6``, the steps and ``a2=`` with ten times the value
  (the tens digit's partial product, shifted), so the conclusion only adds;
- the conclusion ``a:<a1>+<a2>=<a>`` (a colon, so ``a=`` stays a unique key), then, after
  ``</Parallel>``, the path's result ``a=<a>``;
and the outer block's conclusion holds the running total, one line per term, as in task.py,
then ``A=`` and the total forwards (``A=023555``), which ``A: 23555`` copies.
Values are reversed and zero-padded to six digits (5 * 999 * 99 < 10**6). Multiverse writes
``Let's think in parallel.`` before each block; this model does not (it would only cost tokens).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from models import task
from models.task import LABELS, Forks, Question, Term, product_steps
from orchestrator.plan.formats import Outline
from orchestrator.plan.published import MULTIVERSE as MV

WIDTH = 6


@dataclass(frozen=True)
class Sample:
    """A path as the orchestrator runs it alone: its context and what the model writes."""
    context: str
    completion: str


@dataclass(frozen=True)
class Work:
    """Text the model writes, and the samples of the paths it forks, their contexts relative
    to the text's start."""
    text: str
    samples: tuple[Sample, ...] = ()


def parse_question(text: str) -> Question:
    """``Q: <expr>``: 1..5 terms, ``a`` or ``a*b`` with a of 1-3 digits and b of 1-2 digits."""
    return task.parse_question(text, multiplier_digits=2)


def random_question(rng: random.Random, term_weights: list[int] | None = None, product_p: float = 0.75,
                    two_digit_p: float = 0.5) -> Question:
    """1..5 terms (``term_weights`` skews the count), each a product with probability
    ``product_p`` whose multiplier has two digits with probability ``two_digit_p``."""
    n_terms = rng.choices(range(1, 6), weights=term_weights)[0] if term_weights else rng.randint(1, 5)
    terms = []
    for _ in range(n_terms):
        a = rng.randint(0, 10 ** rng.randint(1, 3) - 1)
        if rng.random() < product_p:
            terms.append(Term(a, rng.randint(10, 99) if rng.random() < two_digit_p else rng.randint(0, 9)))
        else:
            terms.append(Term(a))
    return Question(tuple(terms))


def rev(n: int) -> str:
    return str(n).rjust(WIDTH, "0")[::-1]


def expected_threads(q: Question) -> Forks:
    """k paths for k >= 2 products, plus two per two-digit multiplier, one level deeper."""
    outer = len(q.products) >= 2
    nested = sum(2 for t in q.products if t.b >= 10)
    return Forks((len(q.products) if outer else 0) + nested, int(outer) + int(nested > 0))


def digit_work(key: str, a: int, digit: int, shift: int) -> str:
    """``a2 345*6``, the digit steps, ``a2=`` and the partial product times 10**shift."""
    term = Term(a, digit)
    return f"{key} {term}\n{product_steps(term)}\n{key}={rev(term.value * 10 ** shift)}"


def product_work(label: str, term: Term, path_id: str) -> Work:
    """A product's work after its ``a 345*67`` line; a two-digit multiplier opens a nested
    block whose paths are ``path_id.1`` (ones) and ``path_id.2`` (tens)."""
    if term.b < 10:
        return Work(f"{label} {term}\n{product_steps(term)}\n{label}={rev(term.value)}")
    ones, tens = term.b % 10, term.b // 10
    pre = f"{path_id}." if path_id else ""
    outlines = [Outline(f"{pre}1", f"{label}1 {term.a}*{ones}"), Outline(f"{pre}2", f"{label}2 {term.a}*{tens}")]
    bodies = [" " + digit_work(f"{label}1", term.a, ones, 0), " " + digit_work(f"{label}2", term.a, tens, 1)]
    v1, v2 = term.a * ones, term.a * tens * 10
    head = f"{label} {term}\n"
    block = MV.render_block(outlines, closed(bodies), conclusion=f"{label}:{rev(v1)}+{rev(v2)}={rev(term.value)}",
                            after=f"{label}={rev(term.value)}")
    return Work(head + block, _path_samples(head + MV.render_plan(outlines), outlines, bodies))


def closed(bodies: list[str]) -> list[str]:
    """Each path's text as the model writes it: its body, then its closer."""
    return [b + MV.thread_close for b in bodies]


def _path_samples(context: str, outlines: list[Outline], bodies: list[str]) -> tuple[Sample, ...]:
    """Paths 2..k as the orchestrator runs them: the block's context and their own header."""
    return tuple(Sample(context + MV.thread_header(o), b + MV.thread_close)
                 for o, b in list(zip(outlines, bodies))[1:])


def sum_lines(values: list[int]) -> str:
    """task.py's running total, then ``A=`` and the total written forwards, zero-padded: the
    reversal happens next to the last total, and the answer line only copies it forwards
    without the leading zeros."""
    return task.sum_lines(values, rev) + f"\nA={str(sum(values)).rjust(WIDTH, '0')}"


def term_lines(q: Question, inline: bool) -> Work:
    """One labelled line per term in question order; bare integers get their value line, and
    a product is worked out here only when there is no outer block."""
    text, samples = "", []
    for label, t in zip(LABELS, q.terms):
        if not t.is_product:
            text += f"{label} {t}\n{label}={rev(t.a)}\n"
        elif not inline:
            text += f"{label} {t}\n"
        else:
            w = product_work(label, t, "")
            samples += [Sample(text + s.context, s.completion) for s in w.samples]
            text += w.text + "\n"
    return Work(text, tuple(samples))


def work(q: Question) -> Work:
    """The trace after ``q.prompt`` and every path sample, contexts absolute (prompt included)."""
    tail = f"</Think>\nA: {q.answer}"
    labelled = [(label, t) for label, t in zip(LABELS, q.terms) if t.is_product]
    start = q.prompt + "<Think>\n"
    if len(labelled) < 2:
        terms = term_lines(q, inline=True)
        text = terms.text + sum_lines([t.value for t in q.terms]) + "\n" + tail
        return Work("<Think>\n" + text, tuple(Sample(start + s.context, s.completion) for s in terms.samples))
    terms = term_lines(q, inline=False)
    outlines = [Outline(str(i + 1), f"{label} {t}") for i, (label, t) in enumerate(labelled)]
    works = [product_work(label, t, o.id) for o, (label, t) in zip(outlines, labelled)]
    bodies = [" " + w.text for w in works]
    block = MV.render_block(outlines, closed(bodies), conclusion=sum_lines([t.value for t in q.terms]), after=tail)
    fork_context = start + terms.text + MV.render_plan(outlines)
    samples = list(_path_samples(fork_context, outlines, bodies))
    for o, w in zip(outlines, works):  # nested paths, inside their own path's context
        path_start = fork_context + MV.thread_header(o) + " "
        samples += [Sample(path_start + s.context, s.completion) for s in w.samples]
    return Work("<Think>\n" + terms.text + block, tuple(samples))


def trace(q: Question) -> str:
    return work(q).text
