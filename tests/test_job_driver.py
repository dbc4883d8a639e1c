"""The job driver's control flow (orchestrator/driver/) without Ray or vLLM: a scripted model
stands in for the engines and the budget is a real Ledger in this process.

The scripted model knows whole documents (what the model writes sequentially) and continues any
prompt the way a model trained on them would: a prefix of a document goes on with the rest of it;
a thread's header (``<Thread>\\n2:``) goes on with that thread's body. Like vLLM, it stops at the
first of the request's stop strings (returning it) or at the end of the document (EOS). So the
driver's output is right exactly when it equals the document."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conformance import prompt_text, within
from transformers import AutoTokenizer

from orchestrator.budget.ledger import Ledger
from orchestrator.budget.local import LocalBudget
from orchestrator.driver.job import JobRunner
from orchestrator.driver.records import JobRecord, JobRequest
from orchestrator.plan.dag import ThreadDAG
from orchestrator.plan.formats import Outline
from orchestrator.plan.published import MULTIVERSE, THREADWEAVER
from orchestrator.protocol.fork import ForkAdvice, ForkPolicy, ForkQuery
from orchestrator.protocol.segment import Finish, Placement, Progress, SegmentRequest, SegmentResult, TokenSpender
from orchestrator.telemetry.metrics import NullMetrics

MODEL = Path(__file__).resolve().parent.parent / "models" / "loom-arith"
PROMPT = "Q: 1+2+3\n"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(MODEL))


class Clock:
    """The budget's clock, moved by hand: time passes only where a test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedModel:
    """Stands in for the engines (``EngineClient``); records what it was asked. Each chunk a
    thread streams moves ``clock`` on by ``thread_chunk_s``."""

    def __init__(self, tok, documents: list[str], delay: float = 0.0,
                 fail_on: str | None = None, clock: Clock | None = None, thread_chunk_s: float = 0.0):
        self.tok, self.documents = tok, documents
        self.delay, self.fail_on = delay, fail_on
        self.clock, self.thread_chunk_s = clock, thread_chunk_s
        self.prompts: list[str] = []
        self.in_flight = self.most_in_flight = self.cancelled = 0
        self.advised_width: int | None = None  # the engines' side's answer to every fork (None: all threads)
        self.queries: list[ForkQuery] = []

    async def fork_width(self, query: ForkQuery) -> ForkAdvice:
        self.queries.append(query)
        if query.policy is ForkPolicy.NEVER:
            return ForkAdvice(0, "fork policy never")
        width = query.threads if self.advised_width is None else self.advised_width
        return ForkAdvice(width, f"scripted: width {width}")

    def continuation(self, text: str) -> str:
        """The rest of the document ``text`` begins, else of the one holding the longest tail of
        ``text`` (a thread's header and what follows it)."""
        for doc in self.documents:
            if doc.startswith(text):
                return doc[len(text):]
        best = max(((self._tail(text, doc), doc) for doc in self.documents), key=lambda m: m[0])
        if best[0] < len("\n<Path>\n"):
            raise AssertionError(f"the script has no continuation for ...{text[-60:]!r}")
        tail = text[len(text) - best[0]:]
        return best[1][best[1].find(tail) + len(tail):]

    @staticmethod
    def _tail(text: str, doc: str) -> int:
        """The length of the longest tail of ``text`` found in ``doc`` (a shorter one always is)."""
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if text[len(text) - mid:] in doc else (lo, mid - 1)
        return lo

    async def generate(self, call: SegmentRequest, lease: TokenSpender, progress: Progress) -> SegmentResult:
        text = prompt_text(self.tok, call.prompt_ids)
        self.prompts.append(text)
        out, stop = self._cut(self.continuation(text), call.stops)
        ids = self.tok.encode(out, add_special_tokens=False) + ([] if stop else [self.tok.eos_token_id])
        ids, finish, stop = within(ids, Finish.STOP if stop else Finish.EOS, stop, call.max_tokens)
        progress.placement = Placement("scripted")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for i in range(0, len(ids), 4):
                await asyncio.sleep(self.delay)
                if self.fail_on and self.fail_on in text and i >= 4:
                    raise RuntimeError("engine fell over")
                piece = ids[i:i + 4]
                if self.clock is not None and "<Thread>" in text[text.rfind("</Outlines>"):]:
                    self.clock.now += self.thread_chunk_s
                progress.tokens += len(piece)
                if call.on_tokens:
                    call.on_tokens(piece)
                await lease.spend(len(piece))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return SegmentResult(ids, finish, stop)

    @staticmethod
    def _cut(rest: str, stops: list[str]) -> tuple[str, str | None]:
        hits = [(rest.find(s), s) for s in stops if s in rest]
        if not hits:
            return rest, None
        at, stop = min(hits)
        return rest[:at + len(stop)], stop


def run(tok, documents, prompt=PROMPT, delay=0.0, fail_on=None, thread_chunk_s=0.0, advised_width=None, **request):
    clock = Clock()
    budget = LocalBudget(Ledger(max_threads_in_flight=64), clock=clock)
    model = ScriptedModel(tok, documents, delay, fail_on, clock, thread_chunk_s)
    model.advised_width = advised_width
    runner = JobRunner(model, budget, tok, max_model_len=1024, metrics=NullMetrics())
    req = JobRequest(prompt=prompt, **request)
    shown: list[str] = []
    record = asyncio.run(runner.run(JobRecord.new(req), shown.append))
    return record, model, "".join(shown)


def nodes(record, kind):
    return [n for n in record.dag["nodes"] if n["kind"] == kind]


def closed(fmt, bodies: list[str]) -> list[str]:
    """Threads' texts as the model writes them: each body, then the format's closer."""
    return [b + fmt.thread_close for b in bodies]


def tw_document(n: int = 3) -> str:
    outlines = [Outline(str(i), f"add {i}") for i in range(1, n + 1)]
    bodies = closed(THREADWEAVER, [f" {i}+{i}={2 * i}\n" for i in range(1, n + 1)])
    return PROMPT + "<think>\n" + THREADWEAVER.render_block(outlines, bodies) + "</think>A: 6"


def test_fork_join_writes_what_the_model_writes_sequentially(tok):
    doc = tw_document(3)
    record, model, shown = run(tok, [doc])
    assert record.status == "done" and record.result["text"] == doc[len(PROMPT):]
    assert record.result["answer"] == "A: 6" and shown == record.result["text"]
    assert [t["label"] for t in nodes(record, "thread")] == ["1", "2", "3"] and len(nodes(record, "join")) == 1
    fork = doc[:doc.index("</Outlines>") + len("</Outlines>")]
    assert model.prompts[1:4] == [fork + f"\n<Thread>\n{i}:" for i in (1, 2, 3)]  # context + header, each
    assert model.most_in_flight == 3  # the threads ran at once
    assert record.result["critical_path_tokens"] < record.result["total_tokens"]


def test_sequential_mode_lets_the_model_write_its_threads(tok):
    doc = tw_document(3)
    record, model, _ = run(tok, [doc], mode="sequential")
    assert record.result["text"] == doc[len(PROMPT):] and nodes(record, "thread") == [] and len(model.prompts) == 1


def test_waves_of_one_give_the_same_text_one_thread_at_a_time(tok):
    doc = tw_document(3)
    record, model, _ = run(tok, [doc], delay=0.001, budget={"max_width": 1})
    assert record.result["text"] == doc[len(PROMPT):] and model.most_in_flight == 1
    assert any("waves" in note for note in record.notes)


def forks(record) -> list[dict]:
    return [n["fork"] for n in record.dag["nodes"] if n["fork"]]


def test_the_fork_policy_never_refuses_every_fork_and_the_model_writes_the_threads(tok):
    doc = tw_document(3)
    record, _, _ = run(tok, [doc], fork_policy=ForkPolicy.NEVER)
    assert record.result["text"] == doc[len(PROMPT):] and nodes(record, "thread") == []
    assert [(f["threads"], f["policy"], f["width"]) for f in forks(record)] == [(3, "never", 0)]
    assert any("fork of 3 refused (fork policy never)" in note for note in record.notes)
    assert record.usage["forks"] == 0  # a fork refused before the budget was asked counts no round


def test_an_advised_width_runs_the_threads_in_waves_and_the_record_says_why(tok):
    doc = tw_document(3)
    record, model, _ = run(tok, [doc], delay=0.001, advised_width=1)
    assert record.result["text"] == doc[len(PROMPT):] and model.most_in_flight == 1
    [fork] = forks(record)
    assert (fork["policy"], fork["width"], fork["advice"]["width"]) == ("adaptive", 1, 1)
    assert fork["reason"] == "scripted: width 1" and "scripted: width 1" in record.notes
    assert JobRecord.unpack(record.pack()) == record and ThreadDAG.from_dict(record.dag).to_dict() == record.dag


def test_the_budget_narrows_below_the_advice_and_says_so(tok):
    doc = tw_document(3)
    record, _, _ = run(tok, [doc], delay=0.001, budget={"max_width": 2})
    [fork] = forks(record)
    assert (fork["advice"]["width"], fork["width"], fork["reason"]) == (3, 2, "narrowed to 2 of 3 (waves)")


def test_the_engines_are_asked_with_the_threads_prompt_and_the_time_left_to_the_target(tok):
    doc = tw_document(3)
    _, model, _ = run(tok, [doc], latency_target_s=60.0)
    [q] = model.queries
    fork = doc[:doc.index("</Outlines>") + len("</Outlines>")]
    assert prompt_text(tok, q.prompt_ids) == fork + "\n<Thread>\n1:" and q.threads == 3
    assert q.header_tokens == len(tok.encode("\n<Thread>\n1:", add_special_tokens=False))
    assert q.policy is ForkPolicy.ADAPTIVE and 0 < q.target_left_s <= 60.0


def mv_document() -> str:
    inner = MULTIVERSE.render_block([Outline("2.1", "tens"), Outline("2.2", "ones")], closed(MULTIVERSE, [" 2", " 3"]),
                                    conclusion="5", after=" 23")
    outer = MULTIVERSE.render_block([Outline("1", "first"), Outline("2", "second")],
                                    closed(MULTIVERSE, [" 1", " \n" + inner]), conclusion="24")
    return PROMPT + "<Think>\n" + outer + "</Think>A: 24"


def test_nested_blocks_fork_inside_a_thread(tok):
    doc = mv_document()
    record, _, _ = run(tok, [doc], format="multiverse")
    assert record.status == "done" and record.result["text"] == doc[len(PROMPT):]
    assert sorted((t["label"], t["depth"]) for t in nodes(record, "thread")) == [
        ("1", 1), ("2", 1), ("2.1", 2), ("2.2", 2)]


def test_max_depth_refuses_the_inner_fork_and_the_thread_writes_it_itself(tok):
    doc = mv_document()
    record, _, _ = run(tok, [doc], format="multiverse", budget={"max_depth": 1})
    assert record.status == "done" and record.result["text"] == doc[len(PROMPT):]
    assert [t["depth"] for t in nodes(record, "thread")] == [1, 1]
    assert any("refused (depth 2 > max_depth 1)" in note for note in record.notes)


def test_a_refused_inner_fork_in_a_first_path_is_written_whole_by_that_path(tok):
    """The inner block's own closers end its paths, not the path writing it: path 1 writes both
    inner paths and its result, and path 2 is still its own thread."""
    inner = MULTIVERSE.render_block([Outline("1.1", "tens"), Outline("1.2", "ones")], closed(MULTIVERSE, [" 2", " 3"]),
                                    conclusion="5", after=" 23")
    outer = MULTIVERSE.render_block([Outline("1", "first"), Outline("2", "second")],
                                    closed(MULTIVERSE, [" \n" + inner, " 1"]), conclusion="24")
    doc = PROMPT + "<Think>\n" + outer + "</Think>A: 24"
    record, model, _ = run(tok, [doc], format="multiverse", budget={"max_depth": 1})
    assert record.status == "done" and record.result["text"] == doc[len(PROMPT):]
    assert [t["label"] for t in nodes(record, "thread")] == ["1", "2"]
    path1 = [p for p in model.prompts if p.endswith("<Path>\n1.1: 2</Path>")]
    assert path1, "path 1 went on past its inner path's closer"
    assert not any(p.endswith(" 23</Path>\n<Path>\n2:") for p in model.prompts)  # the main lane never wrote path 1's end


def test_deadline_cancels_the_sibling_threads(tok):
    """The budget's clock passes the deadline while the threads stream (each chunk 0.05 s of it),
    wherever in their streams the event loop happens to be."""
    outlines = [Outline(str(i), "long") for i in (1, 2, 3)]
    doc = PROMPT + "<think>\n" + THREADWEAVER.render_block(outlines, closed(THREADWEAVER, [" " + "x" * 200] * 3)) + \
        "</think>A: 1"
    record, model, _ = run(tok, [doc], delay=0.001, thread_chunk_s=0.05, budget={"deadline_s": 0.1})
    assert record.status == "cancelled" and record.result["finish"] == "budget"
    assert any("deadline of 0.1s passed" in note for note in record.notes)
    assert model.in_flight == 0 and {t["status"] for t in nodes(record, "thread")} == {"cancelled"}
    assert record.usage["exhausted"] and record.result["text"] == doc[len(PROMPT):doc.index("</Outlines>") + 11]


def test_a_failing_engine_fails_the_job_with_the_reason_and_cancels_the_others(tok):
    outlines = [Outline(str(i), "long") for i in (1, 2, 3)]
    doc = PROMPT + "<think>\n" + THREADWEAVER.render_block(outlines, closed(THREADWEAVER, [" " + "x" * 100] * 3)) + \
        "</think>A: 1"
    record, model, _ = run(tok, [doc], delay=0.002, fail_on="<Thread>\n2:")
    assert record.status == "failed" and record.error == "RuntimeError: engine fell over"
    assert model.cancelled == 2 and model.in_flight == 0
    assert sorted(t["status"] for t in nodes(record, "thread")) == ["cancelled", "cancelled", "failed"]


def test_a_plan_without_outlines_falls_back_to_sequential_decoding(tok):
    doc = PROMPT + "<think>\n<Parallel>\n<Outlines>\n</Outlines>\nsolo</think>A: 1"
    record, _, _ = run(tok, [doc])
    assert record.status == "done" and record.result["text"] == doc[len(PROMPT):]
    assert nodes(record, "thread") == [] and "plan closed with no numbered outline: no fork, the model goes on" in record.notes


def test_callers_stop_string_ends_the_job_and_is_not_returned(tok):
    doc = tw_document(2)
    record, _, _ = run(tok, [doc], stop=["</think>"])
    assert record.result["finish"] == "stop" and record.result["text"] == doc[len(PROMPT):doc.index("</think>")]


def test_apr_children_start_fresh_and_the_join_rewrites_the_call(tok):
    parent = ("Moving to Node #0\nCurrent State: 24:[4, 6, 1], Operations: []\n"
              "Generated Node #0,0: 24:[1, 24] Operation: 4*6=24\nGenerated Node #0,1: 24:[4, 5] Operation: 6-1=5\n"
              "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,1\n"
              "<Start Sub Search 1 at level 1> Moving to Node #0,0\n<End Calling Sub Searches>\n")
    children = ["Moving to Node #0,1\nCurrent State: 24:[4, 5], Operations: ['6-1=5']\nNo solution found.\n",
                ("Moving to Node #0,0\nCurrent State: 24:[1, 24], Operations: ['4*6=24']\n24,24 equal: Goal Reached\n"
                "Moving to Node #0,0\n24,24 equal: Goal Reached\n")]
    rewritten = (parent[:parent.index("<Calling")] + "<Sub Searches>\n<No Solution in Sub Search 0 at level 1 at Node #0,1>\n"
                 "<Goal Reached in Sub Search 1 at level 1 at Node #0,0>\nMoving to Node #0,0\n24,24 equal: Goal Reached\n"
                 "<End Sub Searches>\n")
    record, model, _ = run(tok, [parent, *children, rewritten + "done\n"], prompt=parent[:parent.index("\n")], format="apr")
    assert record.status == "done" and record.result["text"] == rewritten[parent.index("\n"):] + "done\n"
    assert children[0][:children[0].index("\nNo")] in model.prompts  # a fresh context: the node's state alone
