import pytest

from orchestrator.records import JobRecord, JobRequest, RequestError


def test_record_round_trips_through_msgpack():
    rec = JobRecord.new(JobRequest(prompt="Q: 1+2\n"))
    rec.dag = {"nodes": [], "edges": [[0, 1]]}
    rec.notes.append("x")
    assert JobRecord.decode(rec.encode()) == rec


def test_old_schema_is_refused():
    import msgpack
    with pytest.raises(ValueError, match="schema"):
        JobRecord.decode(msgpack.packb({"version": 0}))


@pytest.mark.parametrize("body,msg", [
    ({}, "exactly one"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "exactly one"),
    ({"prompt": "  "}, "non-empty"),
    ({"prompt": "x", "format": "tot"}, "unknown format"),
    ({"prompt": "x", "mode": "fast"}, "unknown mode"),
    ({"prompt": "x", "temperature": 9}, "temperature"),
    ({"prompt": "x", "budget": {"max_width": -1}}, "max_width"),
    ({"prompt": "x", "colour": 1}, "unknown field"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages\\[0\\]"),
    ([], "JSON object"),
])
def test_bad_requests_are_named(body, msg):
    with pytest.raises(RequestError, match=msg):
        JobRequest.from_dict(body)
