"""Config decisions that change what runs: when KV transfer is on, and what is refused."""
from __future__ import annotations

import pytest

from cluster.config import ConfigError, load


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
