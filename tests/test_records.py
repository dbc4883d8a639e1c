import pytest

from orchestrator.driver.records import JobRecord, JobRequest


def test_record_round_trips_through_msgpack():
    rec = JobRecord.new(JobRequest(prompt="Q: 1+2\n"))
    rec.dag = {"nodes": [], "edges": [[0, 1]]}
    rec.notes.append("x")
    assert JobRecord.unpack(rec.pack()) == rec


def test_old_schema_is_refused():
    import msgpack
    with pytest.raises(ValueError, match="schema"):
        JobRecord.unpack(msgpack.packb({"version": 0}))
