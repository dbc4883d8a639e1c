"""How a request stops on a real vLLM engine (workers/engine.py): a stop string that is one of
the tokenizer's added tokens (a plan tag) stops the request in the engine core by token id, with
nothing detokenized; any other stop string is found in the text. Both must end the request at the
same token and report the same stop string, since the job driver forks on it."""
from __future__ import annotations

import pytest
import ray
from engine_requests import chunks

from orchestrator.protocol.generation import GenChunk, GenRequest

pytestmark = pytest.mark.integration
QUESTION = "Q: 905*9+14*3+220*6\n"


async def request(handle, rid: str, ids: list[int], stop: list[str]) -> list[GenChunk]:
    return await chunks(handle, GenRequest(rid, ids, 400, stop=stop))


def ended(chunks: list[GenChunk]) -> tuple[list[int], GenChunk]:
    return [t for c in chunks for t in c.token_ids], chunks[-1]


@pytest.fixture(scope="module")
def worker(loom):
    return next(iter(loom.pool.handles.values()))


async def test_a_tag_stops_by_token_where_text_matching_stops_too(worker):
    ids = ray.get(worker.encode.remote(QUESTION, True))
    tag_id = ray.get(worker.encode.remote("</Outlines>"))
    assert len(tag_id) == 1  # an added token: the engine stops on its id
    by_token, last_token = ended(await request(worker, "stop-token", ids, ["</Outlines>"]))
    # a second stop string that is not a token sends the request down vLLM's text matching
    by_text, last_text = ended(await request(worker, "stop-text", ids, ["</Outlines>", "@@"]))
    assert by_token == by_text and by_token[-1] == tag_id[0]
    assert last_token.finish_reason == last_text.finish_reason == "stop"
    assert last_token.stop_reason == last_text.stop_reason == "</Outlines>"


async def test_a_stop_string_that_is_no_token_is_found_in_the_text(worker):
    ids = ray.get(worker.encode.remote(QUESTION, True))
    out, last = ended(await request(worker, "stop-text-only", ids, ["a 9"]))
    text = ray.get(worker.detokenize.remote(out))
    assert last.finish_reason == "stop" and last.stop_reason == "a 9"
    assert text.endswith("a 9") and text.count("a 9") == 1


async def test_no_stop_runs_to_eos_with_no_stop_string(worker):
    ids = ray.get(worker.encode.remote("Q: 12+3\n", True))
    out, last = ended(await request(worker, "stop-none", ids, []))
    assert last.finish_reason == "stop" and last.stop_reason is None  # vLLM reports EOS as a stop
    assert out[-1] == ray.get(worker.eos_token_id.remote())
