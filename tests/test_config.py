"""Config decisions that change what runs: when KV transfer is on, and what is refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import ConfigError, load

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("workers,gpus,mode,on", [
    (2, 0.0, "auto", True),  # CPU engines with a peer: tested, on
    (1, 0.0, "auto", False),  # one engine: nobody to pull from, and the connector costs every step
    (2, 1.0, "auto", False),  # GPU engines: the NCCL path has not run on hardware
    (1, 0.0, "on", True),
    (2, 0.0, "off", False),
])
def test_kv_transfer_auto_is_on_only_for_cpu_engines_with_a_peer(workers, gpus, mode, on):
    cfg = load(overrides={"num_workers": workers, "worker_num_gpus": gpus, "kv_transfer": mode})
    assert cfg.transfer_on() is on and cfg.engine().kv_transfer is on


@pytest.mark.parametrize("bad", [-1, 1001])
def test_a_stream_interval_out_of_range_is_named(bad):
    with pytest.raises(ConfigError, match="stream_interval_ms"):
        load(overrides={"stream_interval_ms": bad})


def test_a_shipped_model_is_named_by_its_directory_and_the_multiverse_config_loads():
    cfg = load(ROOT / "cluster" / "multiverse.yaml")
    assert cfg.model.endswith("models/loom-arith-mv") and cfg.format == "multiverse"
    assert cfg.max_model_len == 1536 and cfg.job_budget().max_depth == 2


def test_an_unknown_model_name_is_named():
    with pytest.raises(ConfigError, match="no-such-model"):
        load(overrides={"model": "no-such-model"})


@pytest.mark.parametrize("bad", [0, 4097])
def test_a_chunk_token_cap_out_of_range_is_named(bad):
    with pytest.raises(ConfigError, match="stream_max_tokens"):
        load(overrides={"stream_max_tokens": bad})
