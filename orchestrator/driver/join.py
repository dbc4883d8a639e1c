"""A thread's prompt and the join, in token ids: where a join is built.

A thread's prompt is the block's context (``ThreadContext.SHARED``: the engine's prefix cache
serves it) or a fresh context (``FRESH``, APR), then the thread's header. The join follows the
format's profile (plan/published.py): the context's ids, then each thread's join header and
generated ids in plan order, closed as the authors' controller closes them, then what follows the
block; APR's join rewrites the call section as text (``JoinText.REWRITE``). Headers and suffixes
are encoded on their own and concatenated as ids, as ThreadWeaver's controller does, so the
context is never re-tokenized.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.driver.context import JobContext, ThreadOutcome
from orchestrator.plan.formats import JoinText, Outline, Plan, PlanFormat, ThreadContext, ThreadResult
from orchestrator.protocol.segment import Finish


@dataclass(frozen=True)
class Joined:
    ids: list[int]
    end: Finish | None = None  # the block ends the generation (a thread ended by EOS or length)


class Joiner:
    def __init__(self, tokenizer):
        self.tok = tokenizer

    def thread_prompt(self, fmt: PlanFormat, context: list[int], outline: Outline) -> tuple[list[int], list[int]]:
        """(the thread's header ids, its whole prompt's ids)."""
        if fmt.thread_context == ThreadContext.FRESH:
            header = self.context_ids(fmt, fmt.thread_header(outline))
            return header, header
        header = self.encode(fmt.thread_header(outline))
        return header, context + header

    def context_ids(self, fmt: PlanFormat, text: str) -> list[int]:
        """A whole context's ids: the tokenizer's own special tokens added, and, where the format's
        controller sends its BOS as text (APR), that too."""
        bos = (self.tok.bos_token or "") if fmt.bos_as_text else ""
        return self.tok.encode(bos + text, add_special_tokens=True)

    def guarded(self, fmt: PlanFormat, ids: list[int]) -> list[int]:
        """A lane that stopped on the format's guard (a stop the model must not write): the
        guard's text replaced as the format's controller replaces it, the context re-encoded."""
        guard, replacement = fmt.stop_guard
        text = self.bare(ids)
        return self.context_ids(fmt, text[:text.rfind(guard)] + replacement)

    def join(self, ctx: JobContext, ids: list[int], plan: Plan, results: list[ThreadOutcome]) -> Joined:
        fmt = ctx.fmt
        if fmt.join_text == JoinText.REWRITE:  # as text: the only join that needs the threads' text
            threads = [ThreadResult(r.outline, self.visible(r.ids), r.finish) for r in results]
            return Joined(self.context_ids(fmt, fmt.render_join(self.bare(ids), plan, threads)))
        out = list(ids)
        for i, r in enumerate(results):
            out += (r.header if i == 0 else self.encode(fmt.join_header(r.outline, first=False)))
            out += self.closed(fmt, r)
        out += self.encode(fmt.block_end(results))
        end = _worst(results) if fmt.ends_generation(results) else None
        if end is not None:
            ctx.note(f"a thread ended by {end}: the block closed and the generation ended, as {fmt.name}'s controller")
        return Joined(out, end)

    def closed(self, fmt: PlanFormat, r: ThreadOutcome) -> list[int]:
        """A thread's ids as the join holds them: after its closer, what the format puts there;
        ended by EOS, the EOS dropped; by length, the last token dropped where the format's
        engine does; either way the format's suffix for an unclosed thread."""
        if r.finish == Finish.STOP:
            return r.ids + self.encode(fmt.after_closer)
        ids = self._no_eos(r.ids)
        if r.finish == Finish.LENGTH and fmt.closing.drop_last_on_length:
            ids = ids[:-1]
        return ids + self.encode(fmt.closing.unclosed_suffix)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False) if text else []

    def text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def bare(self, ids: list[int]) -> str:
        """The text of a context without its leading BOS tokens."""
        bos = self.tok.bos_token_id
        while ids and ids[0] == bos:
            ids = ids[1:]
        return self.visible(ids)

    def visible(self, ids: list[int]) -> str:
        """The text of ``ids`` without a final EOS (streamed and final text are decoded alike)."""
        return self.text(self._no_eos(ids))

    def _no_eos(self, ids: list[int]) -> list[int]:
        return ids[:-1] if ids and ids[-1] == self.tok.eos_token_id else ids


def _worst(results: list[ThreadOutcome]) -> Finish:
    return Finish.LENGTH if any(r.finish == Finish.LENGTH for r in results) else Finish.EOS
