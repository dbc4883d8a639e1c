"""A thread's prompt and the join, in token ids: where a join is built.

A thread's prompt is the block's context (``ThreadContext.SHARED``: the engine's prefix cache
serves it) or nothing (``FRESH``), then the thread's header. The join appends each thread's
header and generated ids, in plan order, to the context (``JoinText.APPEND``), a missing closer
added and a forbidden tag cut (noted): exactly the token stream the model would have written
sequentially. APR's join rewrites the plan as text instead (``JoinText.REWRITE``).
"""
from __future__ import annotations

from orchestrator.driver.context import JobContext, ThreadOutcome
from orchestrator.plan.formats import JoinText, Outline, Plan, PlanFormat, ThreadContext, ThreadResult


class Joiner:
    def __init__(self, tokenizer):
        self.tok = tokenizer

    def thread_prompt(self, fmt: PlanFormat, context: list[int], outline: Outline) -> tuple[list[int], list[int]]:
        """(the thread's header ids, its whole prompt's ids)."""
        fresh = fmt.thread_context == ThreadContext.FRESH
        header = self.tok.encode(fmt.thread_header(outline), add_special_tokens=fresh)
        return header, header if fresh else context + header

    def join(self, ctx: JobContext, ids: list[int], plan: Plan, results: list[ThreadOutcome]) -> list[int]:
        fmt = ctx.fmt
        if fmt.join_text == JoinText.REWRITE:
            text = self.text(ids)
            res = [ThreadResult(r.outline, self.visible(r.ids), r.finish) for r in results]
            return self.tok.encode(fmt.render_join(text, plan, res), add_special_tokens=False)
        out = list(ids)
        for r in results:
            out += r.header + self.closed(ctx, r.ids)
        return out

    def closed(self, ctx: JobContext, thread_ids: list[int]) -> list[int]:
        """The thread's ids, cut at a tag it may not hold and ending with the closer."""
        fmt = ctx.fmt
        text = self.text(thread_ids)
        if text.endswith(fmt.thread_close):
            cleaned, notes = fmt.clean_thread(text[:-len(fmt.thread_close)])
            if not notes:
                return thread_ids
        else:
            cleaned, notes = fmt.clean_thread(text)
            notes = notes + (f"thread ended without '{fmt.thread_close}': closed",)
        ctx.note(*notes)
        eos = self.tok.eos_token or ""
        cleaned = cleaned[:-len(eos)] if eos and cleaned.endswith(eos) else cleaned
        return self.tok.encode(cleaned + fmt.thread_close, add_special_tokens=False)

    def text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def visible(self, ids: list[int]) -> str:
        """The text of ``ids`` without a final EOS (streamed and final text are decoded alike)."""
        return self.text(ids[:-1] if ids and ids[-1] == self.tok.eos_token_id else ids)
