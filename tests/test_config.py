"""Config decisions that change what runs: when KV transfer is on, and what is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ConfigError, load
from cluster.ingress import Ingress
from orchestrator.protocol.fork import ForkPolicy

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
    assert cfg.transfer_on() is on and cfg.worker_engine("").kv_connector is on


@pytest.mark.parametrize("bad", [-1, 1001])
def test_a_stream_interval_out_of_range_is_named(bad):
    with pytest.raises(ConfigError, match="stream_interval_ms"):
        load(overrides={"engine": {"stream_interval_ms": bad}})


def test_a_shipped_model_is_named_by_its_directory_and_the_multiverse_config_loads():
    cfg = load(ROOT / "cluster" / "multiverse.yaml")
    assert cfg.model.endswith("models/loom-arith-mv") and cfg.format == "multiverse"
    assert cfg.engine.max_model_len == 1536 and cfg.job_budget().max_depth == 6


def test_an_unknown_model_name_is_named():
    with pytest.raises(ConfigError, match="no-such-model"):
        load(overrides={"engine": {"model": "no-such-model"}})


@pytest.mark.parametrize("bad", [0, 4097])
def test_a_chunk_token_cap_out_of_range_is_named(bad):
    with pytest.raises(ConfigError, match="stream_max_tokens"):
        load(overrides={"engine": {"stream_max_tokens": bad}})


def test_a_negative_controller_core_count_is_named():
    with pytest.raises(ConfigError, match="controller_cpus"):
        load(overrides={"controller_cpus": -1})


@pytest.mark.parametrize("bad", [20, -21, "high", 1.5])
def test_an_engine_core_niceness_out_of_range_is_named(bad):
    with pytest.raises(ConfigError, match="core_nice must be null or within -20..19"):
        load(overrides={"engine": {"core_nice": bad}})


def test_an_engine_core_niceness_reaches_the_engine_and_null_keeps_rays():
    assert load().worker_engine("").core_nice == 0
    assert load(overrides={"engine": {"core_nice": None}}).worker_engine("").core_nice is None


def test_an_engine_setting_at_the_top_level_is_named_with_where_it_goes():
    with pytest.raises(ConfigError, match="max_model_len: engine settings, under 'engine:'"):
        load(overrides={"max_model_len": 2048})
    with pytest.raises(ConfigError, match="unknown engine key"):
        load(overrides={"engine": {"cpu_bind": "0"}})  # set per worker by the runtime


@pytest.mark.parametrize("overrides,cores,controller,engines", [
    ({}, [0, 1], [0], ["1"]),  # this machine: Loom on core 0, the engine's threads on core 1
    ({"num_workers": 2, "controller_cpus": 2}, list(range(8)), [0, 1], ["2,4,6", "3,5,7"]),
    ({"num_workers": 2}, [0, 1], None, None),  # an engine per core: nothing to keep
    ({"worker_num_gpus": 1.0}, [0, 1], None, None),  # GPU engines
    ({"worker_cpu_binds": ["0-1"]}, [0, 1], None, None),  # binds given: they are used as they are
    ({"controller_cpus": 0}, [0, 1], None, None),
    # tensor-parallel engines: a core group per rank, "|" between an engine's ranks
    ({"num_workers": 2, "engine": {"tensor_parallel_size": 2}}, list(range(5)), [0], ["1|2", "3|4"]),
    ({"engine": {"tensor_parallel_size": 2}}, [0, 1], None, None),  # one core left for two ranks
])
def test_cpu_engines_leave_loom_its_cores_when_there_are_enough(overrides, cores, controller, engines):
    from cluster.runtime import core_split

    split = core_split(load(overrides=overrides), cores)
    assert (split.controller, split.engines) == (controller, engines) if controller else split is None


def test_tensor_parallel_engines_bind_each_rank_and_reserve_a_gpu_per_rank():
    from cluster.runtime import even_split, reservations

    assert even_split(list(range(4)), 2, 2) == ["0|1", "2|3"]
    assert even_split(list(range(8)), 2, 2) == ["0,4|1,5", "2,6|3,7"]
    gpus = load(overrides={"worker_num_gpus": 1, "worker_resources": [{"node-a": 1}],
                           "engine": {"tensor_parallel_size": 4}})
    assert [r.bundle() for r in reservations(gpus)] == [{"GPU": 4, "node-a": 1}]
    assert [r.bundle() for r in reservations(load())] == [{}]  # nothing to reserve: no placement group


@pytest.mark.parametrize("overrides,message", [
    ({"engine": {"tensor_parallel_size": 0}}, "tensor_parallel_size must be an integer >= 1"),
    ({"engine": {"tensor_parallel_size": 2}, "worker_cpu_binds": ["0"]}, "one core list per rank"),
    ({"engine": {"tensor_parallel_size": 2}, "worker_num_gpus": 0.5}, "a whole GPU per rank"),
    ({"coordinator_resources": {"head": -1}}, "coordinator_resources must map resource -> amount"),
    ({"coordinator_resources": ["head"]}, "coordinator_resources must map resource -> amount"),
])
def test_bad_placement_settings_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(overrides=overrides)


def test_pinning_binds_this_process_and_the_engines_to_the_split():
    """In a child process (this one stays unbound): the cores it may run on after pin_controller,
    and the engines' binds in the config it returns."""
    code = ("import json, os; from cluster.config import load; from cluster import runtime\n"
            "cfg = runtime.pin_controller(load())\n"
            "print(json.dumps([sorted(os.sched_getaffinity(0)), cfg.worker_cpu_binds]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    affinity, binds = json.loads(out.stdout.strip().splitlines()[-1])
    from cluster.runtime import core_split

    cores = sorted(os.sched_getaffinity(0))
    split = core_split(load(), cores)
    assert (affinity, binds) == ((split.controller, split.engines) if split else (cores, []))


@pytest.mark.parametrize("key, env, default, in_yaml, in_env, bad", [
    ("fork_policy", "LOOM_FORK_POLICY", ForkPolicy.ADAPTIVE, ForkPolicy.NEVER, ForkPolicy.EAGER, "wide"),
    ("ingress", "LOOM_INGRESS", Ingress.HAPROXY, Ingress.SERVE_PROXY, Ingress.HAPROXY, "nginx"),
])
def test_a_choice_is_read_from_yaml_or_the_environment_and_a_bad_one_is_named(monkeypatch, tmp_path, key, env,
                                                                              default, in_yaml, in_env, bad):
    assert getattr(load(), key) is default
    path = tmp_path / "c.yaml"
    path.write_text(f"{key}: {in_yaml.value}\n")
    assert getattr(load(path), key) is in_yaml and load(path).to_dict()[key] == in_yaml.value
    monkeypatch.setenv(env, in_env.value)
    assert getattr(load(path), key) is in_env
    choices = ", ".join(c.value for c in type(default))
    with pytest.raises(ConfigError, match=f"{key} must be one of {choices}, not '{bad}'"):
        load(overrides={key: bad})


def test_ray_gets_haproxy_files_and_ports_of_its_own_or_serves_proxy_turned_back_on():
    from cluster.ingress import PORTS, STATE_PATHS, HAProxyHome, ray_env

    env = ray_env(Ingress.HAPROXY, HAProxyHome("/run/loom-a", (18404, 19101, 18500, 19500)))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert all(env[var].startswith("/run/loom-a/") for var in STATE_PATHS)
    assert [env[var] for var in PORTS] == ["18404", "19101", "18500", "19500"]
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) < 30  # one machine: HAProxy drops it at once
    assert len(set(HAProxyHome.fresh().ports)) == len(PORTS)
    assert ray_env(Ingress.SERVE_PROXY) == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
