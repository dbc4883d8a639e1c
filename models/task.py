"""The fixed arithmetic task and its reasoning traces in the ThreadWeaver format.

A question is ``Q: <expr>``: a sum of 1..5 terms, each a product ``a*b`` (a: 1-3 digits,
b: one digit) or a bare integer of 1-3 digits. The trace is the exact text the model is
trained to write after the prompt; with two or more products it contains one parallel
block, one thread per product, laid out as ThreadWeaver's controller joins it
(``orchestrator.plan.published.THREADWEAVER``: ``</Thread><Thread>`` between threads, a newline
before each ``</Thread>`` and after the last), so a parallel run and a sequential run of the
model produce the same text.

Scratchpads are built so that a 2M-parameter model learns them: every value is looked up
by a unique key or at a fixed distance, never by counting lines or groups.
- every term gets a label by position (``a`` .. ``e``) and is copied from the question on
  its own line, ``b 89``; a bare integer is reversed and zero-padded to five digits on the
  next line, ``b=98000``;
- a product multiplies digit by digit from the right, every step written as
  ``d*b+carry=XY`` (two digits, the tens digit is the next carry), and ends with its
  labelled reversed result, ``a=54180`` for 8145; inside a thread the outline is the
  labelled term (``a 905*9``), so the thread's result line carries the same key;
- the sum keeps a running total, one fixed-width line per term in question order:
  ``b=98000+07020=96020`` is the term's value (looked up by its key ``b=``), the previous
  total (the line above, at a fixed distance) and the new total, all reversed so carries run
  left to right; the answer is the last total read backwards.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.plan.formats import Outline
from orchestrator.plan.published import THREADWEAVER as TW

WIDTH = 5  # 5 * 999 * 9 = 44955 < 10**5: five digits always hold the sum
LABELS = "abcde"  # one per term, by position in the question


@dataclass(frozen=True)
class Term:
    a: int
    b: int | None = None  # None: a bare integer

    @property
    def is_product(self) -> bool:
        return self.b is not None

    @property
    def value(self) -> int:
        return self.a * self.b if self.b is not None else self.a

    def __str__(self) -> str:
        return f"{self.a}*{self.b}" if self.b is not None else str(self.a)


@dataclass(frozen=True)
class Question:
    terms: tuple[Term, ...]

    @property
    def expr(self) -> str:
        return "+".join(str(t) for t in self.terms)

    @property
    def prompt(self) -> str:
        return f"Q: {self.expr}\n"

    @property
    def answer(self) -> int:
        return sum(t.value for t in self.terms)

    @property
    def products(self) -> list[Term]:
        return [t for t in self.terms if t.is_product]


@dataclass(frozen=True)
class Forks:
    """What a right run forks: threads in all, and the deepest fork (0: none)."""
    threads: int
    depth: int


def expected_threads(q: Question) -> Forks:
    """One block with one thread per product when there are two or more, else none."""
    k = len(q.products)
    return Forks(k, 1) if k >= 2 else Forks(0, 0)


def parse_question(text: str, multiplier_digits: int = 1) -> Question:
    """Parse ``Q: <expr>`` (or a bare expr; spaces ignored, as the chat template does); raise
    ValueError naming the problem. A multiplier has at most ``multiplier_digits`` digits."""
    expr = text.strip()
    expr = expr.removeprefix("Q:")
    expr = expr.replace(" ", "")
    parts = expr.split("+")
    if not 1 <= len(parts) <= 5:
        raise ValueError(f"expected 1 to 5 terms, got {len(parts)} in {expr!r}")
    return Question(tuple(_parse_term(p, multiplier_digits) for p in parts))


def _parse_term(part: str, multiplier_digits: int) -> Term:
    a, _, b = part.partition("*")
    if not (a.isdigit() and 1 <= len(a) <= 3):
        raise ValueError(f"term {part!r}: expected 1 to 3 digits before '*'")
    if not _:
        return Term(int(a))
    if not (b.isdigit() and 1 <= len(b) <= multiplier_digits):
        raise ValueError(f"term {part!r}: expected {'one digit' if multiplier_digits == 1 else f'1 to {multiplier_digits} digits'}"
                         " after '*'")
    return Term(int(a), int(b))


def random_question(rng: random.Random, term_weights: list[int] | None = None, product_p: float | None = None,
                    digit_weights: list[int] | None = None) -> Question:
    """A question of the task. By default the number of terms is uniform in 1..5, the number of
    products uniform in 0..terms and a term's digit count uniform in 1..3. ``term_weights``
    skews the number of terms, ``product_p`` makes each term a product with that probability
    (4 and 5 products get frequent), ``digit_weights`` skews the digit count."""
    n_terms = rng.choices(range(1, 6), weights=term_weights)[0] if term_weights else rng.randint(1, 5)
    if product_p is None:
        n_products = rng.randint(0, n_terms)
        kinds = [True] * n_products + [False] * (n_terms - n_products)
        rng.shuffle(kinds)
    else:
        kinds = [rng.random() < product_p for _ in range(n_terms)]
    return Question(tuple(_random_term(rng, k, digit_weights) for k in kinds))


def _random_term(rng: random.Random, product: bool, digit_weights: list[int] | None) -> Term:
    digits = rng.choices((1, 2, 3), weights=digit_weights)[0] if digit_weights else rng.randint(1, 3)
    a = rng.randint(0, 10 ** digits - 1)
    return Term(a, rng.randint(0, 9)) if product else Term(a)


def rev5(n: int) -> str:
    return str(n).rjust(WIDTH, "0")[::-1]


def product_steps(term: Term) -> str:
    """Digit-by-digit product, ``3*4+0=12`` lines; the result line is added by the caller."""
    lines, carry = [], 0
    for d in reversed(str(term.a)):
        v = int(d) * term.b + carry
        lines.append(f"{d}*{term.b}+{carry}={v:02d}")
        carry = v // 10
    return "\n".join(lines)


def term_work(label: str, term: Term) -> str:
    """``a 345*6`` then the steps and ``a=07020`` for a product, ``b 89`` then ``b=98000``
    for a bare integer: the text of a thread after its header, or of an inline term."""
    steps = product_steps(term) + "\n" if term.is_product else ""
    return f"{label} {term}\n{steps}{label}={rev5(term.value)}"


def sum_lines(values: list[int], rev: Callable[[int], str] = rev5) -> str:
    """One ``x=value+previous=total`` line per term, each number written by ``rev`` (reversed,
    fixed width)."""
    lines, total = [], 0
    for label, v in zip(LABELS, values):
        lines.append(f"{label}={rev(v)}+{rev(total)}={rev(total + v)}")
        total += v
    return "\n".join(lines)


def trace(q: Question) -> str:
    """The exact completion the model is trained to write after ``q.prompt``."""
    tail = sum_lines([t.value for t in q.terms]) + f"\n</think>\nA: {q.answer}"
    if len(q.products) >= 2:
        bodies = [thread_text(label, t) for label, t in labelled_products(q)]
        return "<think>\n" + term_lines(q, inline=False) + TW.render_block(outlines(q), bodies, after=tail)
    return "<think>\n" + term_lines(q, inline=True) + tail


def labelled_products(q: Question) -> list[tuple[str, Term]]:
    return [(label, t) for label, t in zip(LABELS, q.terms) if t.is_product]


def outlines(q: Question) -> list[Outline]:
    """One outline per product, ``1: a 345*6``: the thread id, then the labelled term."""
    return [Outline(str(i + 1), f"{label} {t}") for i, (label, t) in enumerate(labelled_products(q))]


def term_lines(q: Question, inline: bool) -> str:
    """One labelled line per term, copied in order from the question; a bare integer gets its
    reversed value right below; a product is worked out inline only when the model does not
    fork (fewer than two products)."""
    out = []
    for label, t in zip(LABELS, q.terms):
        out.append((term_work(label, t) if inline or not t.is_product else f"{label} {t}") + "\n")
    return "".join(out)


def thread_samples(q: Question) -> list[tuple[str, str]]:
    """(context, completion) pairs for threads 2..k as the orchestrator runs them:
    each thread sees the shared prefix and its own header only."""
    full = q.prompt + trace(q)
    if len(q.products) < 2:
        return []
    prefix = full[:full.index(TW.fork_stop) + len(TW.fork_stop)]
    out = []
    for o, (label, t) in list(zip(outlines(q), labelled_products(q)))[1:]:
        out.append((prefix + TW.thread_header(o), thread_text(label, t)))
    return out


def thread_text(label: str, t: Term) -> str:
    """A thread's text after its header, as ThreadWeaver's data has it: a space, the work, and a
    newline before the closer."""
    return f" {term_work(label, t)}\n{TW.thread_close}"
