"""The fixed arithmetic task and its reasoning traces in the ThreadWeaver format.

A question is ``Q: <expr>``: a sum of 1..5 terms, each a product ``a*b`` (a: 1-3 digits,
b: one digit) or a bare integer of 1-3 digits. The trace is the exact text the model is
trained to write after the prompt; with two or more products it contains one parallel
block, one thread per product, built with the same strings the orchestrator uses
(``orchestrator.plan.formats.THREADWEAVER``), so a parallel run and a sequential run of
the model produce the same text.

Scratchpads are local on purpose, so a small model learns them:
- a product multiplies digit by digit from the right, every step written as
  ``d*b+carry=XY`` (two digits, the tens digit is the next carry); the result is written
  reversed and zero-padded to five digits, ``=54180`` for 8145;
- first every term is copied from the question onto its own line (a bare integer also
  reversed and padded there), so later copies are short and fixed-width;
- the sum lists every term reversed and padded (``t: ...``), adds column by column
  (``c0: 5+2+0+3+0=10`` with the carry last) and reads the answer off the column digits.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

WIDTH = 5  # 5 * 999 * 9 = 44955 < 10**5: five columns always hold the sum


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


def parse_question(text: str) -> Question:
    """Parse ``Q: <expr>`` (or a bare expr); raise ValueError naming the problem."""
    expr = text.strip()
    if expr.startswith("Q:"):
        expr = expr[2:].strip()
    parts = expr.split("+")
    if not 1 <= len(parts) <= 5:
        raise ValueError(f"expected 1 to 5 terms, got {len(parts)} in {expr!r}")
    return Question(tuple(_parse_term(p) for p in parts))


def _parse_term(part: str) -> Term:
    a, _, b = part.partition("*")
    if not (a.isdigit() and 1 <= len(a) <= 3):
        raise ValueError(f"term {part!r}: expected 1 to 3 digits before '*'")
    if not _:
        return Term(int(a))
    if not (b.isdigit() and len(b) == 1):
        raise ValueError(f"term {part!r}: expected one digit after '*'")
    return Term(int(a), int(b))


def random_question(rng: random.Random, term_weights: list[int] | None = None) -> Question:
    """A question of the task; ``term_weights`` skews the number of terms (training only)."""
    n_terms = rng.choices(range(1, 6), weights=term_weights)[0] if term_weights else rng.randint(1, 5)
    n_products = rng.randint(0, n_terms)
    kinds = [True] * n_products + [False] * (n_terms - n_products)
    rng.shuffle(kinds)
    return Question(tuple(_random_term(rng, k) for k in kinds))


def _random_term(rng: random.Random, product: bool) -> Term:
    a = rng.randint(0, 10 ** rng.randint(1, 3) - 1)
    return Term(a, rng.randint(0, 9)) if product else Term(a)


def rev5(n: int) -> str:
    return str(n).rjust(WIDTH, "0")[::-1]


def product_steps(term: Term) -> str:
    """Digit-by-digit product, ``3*4+0=12`` lines, then ``=`` and the reversed result."""
    lines, carry = [], 0
    for d in reversed(str(term.a)):
        v = int(d) * term.b + carry
        lines.append(f"{d}*{term.b}+{carry}={v:02d}")
        carry = v // 10
    return "\n".join(lines) + f"\n={rev5(term.value)}"


def sum_steps(values: list[int]) -> str:
    """Column addition over reversed, padded terms; then the answer line."""
    rows = [rev5(v) for v in values]
    lines, carry = ["t: " + " ".join(rows)], 0
    for col in range(WIDTH):
        digits = "+".join(r[col] for r in rows)
        v = sum(int(r[col]) for r in rows) + carry
        lines.append(f"c{col}: {digits}+{carry}={v:02d}")
        carry = v // 10
    return "\n".join(lines)


def trace(q: Question) -> str:
    """The exact completion the model is trained to write after ``q.prompt``."""
    from orchestrator.plan.formats import THREADWEAVER as TW, Outline

    products = q.products
    values = [t.value for t in q.terms]
    tail = sum_steps(values) + f"\n</think>\nA: {q.answer}"
    if len(products) >= 2:
        outlines = [Outline(str(i + 1), str(t)) for i, t in enumerate(products)]
        bodies = [f" {t}\n{product_steps(t)}" for t in products]
        return "<think>\n" + term_lines(q, inline=False) + TW.render_block(outlines, bodies, after=tail)
    return "<think>\n" + term_lines(q, inline=True) + tail


def term_lines(q: Question, inline: bool) -> str:
    """One line per term, copied in order from the question: a bare integer is reversed and
    padded right there (``89=98000``), so later steps copy fixed-width groups from nearby;
    a product is worked out inline when the model does not fork."""
    lines = []
    for t in q.terms:
        if not t.is_product:
            lines.append(f"{t}={rev5(t.value)}\n")
        else:
            lines.append(f"{t}\n" + (f"{product_steps(t)}\n" if inline else ""))
    return "".join(lines)


def thread_samples(q: Question) -> list[tuple[str, str]]:
    """(context, completion) pairs for threads 2..k as the orchestrator runs them:
    each thread sees the shared prefix and its own header only."""
    from orchestrator.plan.formats import THREADWEAVER as TW, Outline

    full = q.prompt + trace(q)
    if len(q.products) < 2:
        return []
    prefix = full[:full.index(TW.plan_close) + len(TW.plan_close)]
    out = []
    for i, t in enumerate(q.products[1:], start=2):
        header = TW.thread_header(Outline(str(i), str(t)))
        out.append((prefix + header, f" {t}\n{product_steps(t)}{TW.thread_close}"))
    return out
