"""The Helm chart (helm/loom), checked offline: no cluster, no network, no helm binary.

- helm lint and helm template through helm-python-sdk (Helm's Go SDK in a shared library);
- the standard objects through kubernetes-validate --strict;
- the RayService through the openAPIV3Schema of the served version of KubeRay v1.7.0's CRD
  (tests/data/kuberay-v1.7.0, a copy of KubeRay's; see its README.md), tightened so that a
  misspelled field fails;
- serveConfigV2's args through cluster.config.LoomConfig.from_dict, so the chart and
  `loom serve` read one config.
"""
from __future__ import annotations

import ast
import base64
import copy
import typing
from dataclasses import asdict, fields
from enum import StrEnum
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.config import ConfigError, LoomConfig
from cluster.helm_values import chart_values
from cluster.ingress import Ingress, ray_env
from orchestrator.budget.policy import JobBudget
from orchestrator.plan.published import FORMATS
from workers.config import PER_WORKER, EngineConfig

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "loom"
CRD_DIR = ROOT / "tests" / "data" / "kuberay-v1.7.0"  # KubeRay v1.7.0, see its README.md
K8S_VERSIONS = ["1.30.0", "1.37.0"]  # kubernetes-validate ships schemas for 1.25 .. 1.37
RELEASE, NAMESPACE = "loom", "loom"

# Values variants every check runs over.
VARIANTS = {
    "default": {},
    "external-redis": {"redis": {"external": {"url": "rediss://redis.example.internal:6380/2"},
                                 "auth": {"existingSecret": "prod-redis", "existingSecretPasswordKey": "pw"}}},
    "no-redis": {"redis": {"enabled": False}, "gcsFaultTolerance": {"enabled": False}},
    "full": {"otel": {"endpoint": "http://otel-collector.observability.svc:4317",
                      "resourceAttributes": {"deployment.environment": "test"}},
             "enableInTreeAutoscaling": True,
             "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4, "gpus": 2,
                         "rayStartParams": {"num-gpus": 2}},
             "loom": {"num_workers": 8, "worker_num_gpus": 1, "engine": {"model": "Qwen/Qwen3-8B"},
                      "format": "multiverse", "budget": {"max_width": 4}},
             "redis": {"auth": {"password": "s3cret-pass"}, "persistence": {"enabled": True, "storageClass": "fast"}},
             "gcsFaultTolerance": {"externalStorageNamespace": "loom-prod"},
             "serve": {"runtimeEnv": {"env_vars": {"VLLM_LOGGING_LEVEL": "INFO"}}},
             "imagePullSecrets": [{"name": "regcred"}],
             "extraEnv": [{"name": "HF_HOME", "value": "/cache/hf"}],
             "image": {"repository": "registry.example.com/loom", "tag": "abc123", "pullPolicy": "Always"}},
}


# ---- helpers --------------------------------------------------------------------------------

def render(values: dict | None = None) -> list[dict]:
    """`helm template` (with the chart's values.schema.json): the rendered objects."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if not path.endswith("NOTES.txt"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def notes(values: dict | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def rayservice(docs: list[dict]) -> dict:
    (rs,) = by_kind(docs, "RayService")
    return rs


def serve_config(rs: dict) -> dict:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def pods(rs: dict) -> list[dict]:
    rc = rs["spec"]["rayClusterConfig"]
    return [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc["workerGroupSpecs"]]


def env_of(template: dict) -> dict[str, dict]:
    return {e["name"]: e for e in template["spec"]["containers"][0].get("env", [])}


def tighten(schema):
    """additionalProperties: false on every object schema that lists properties and neither sets
    additionalProperties nor preserves unknown fields; `nullable` made explicit for jsonschema."""
    if isinstance(schema, list):
        for s in schema:
            tighten(s)
        return schema
    if not isinstance(schema, dict):
        return schema
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    for sub in schema.get("properties", {}).values():
        tighten(sub)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            tighten(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        tighten(schema.get(key, []))
    return schema


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.Draft4Validator:
    path = CRD_DIR / "ray.io_rayservices.yaml"
    assert path.exists(), f"KubeRay RayService CRD not found: {path}"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == "RayService"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    schema = tighten(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def crd_errors(validator, obj) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


# ---- lint and render --------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_is_clean(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # 2 = warning, 3 = error


def test_default_render_has_the_expected_objects():
    docs = render()
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Deployment", "loom-redis"), ("RayService", "loom"), ("Secret", "loom-redis"), ("Service", "loom-redis")]
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_external_redis_renders_no_redis_objects():
    docs = render(VARIANTS["external-redis"])
    assert [d["kind"] for d in docs] == ["RayService"]
    ft = rayservice(docs)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert ft == {"redisAddress": "rediss://redis.example.internal:6380",
                  "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "prod-redis", "key": "pw"}}}}
    for tmpl in pods(rayservice(docs)):
        env = env_of(tmpl)
        assert env["LOOM_REDIS_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "prod-redis", "key": "pw"}}
        assert env["LOOM_REDIS_URL"]["value"] == "rediss://:$(LOOM_REDIS_PASSWORD)@redis.example.internal:6380/2"


def test_without_redis_there_is_no_fault_tolerance_and_no_redis_url():
    docs = render(VARIANTS["no-redis"])
    assert [d["kind"] for d in docs] == ["RayService"]
    rs = rayservice(docs)
    assert "gcsFaultToleranceOptions" not in rs["spec"]["rayClusterConfig"]
    for tmpl in pods(rs):
        assert not {"LOOM_REDIS_URL", "LOOM_REDIS_PASSWORD"} & set(env_of(tmpl))
    with pytest.raises(helm.HelmRenderError, match="gcsFaultTolerance.enabled needs Redis"):
        render({"redis": {"enabled": False}})


# ---- standard objects: kubernetes-validate --strict ----------------------------------------------

@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_standard_objects_validate_strictly(variant, k8s):
    docs = render(VARIANTS[variant])
    rs = rayservice(docs)
    # The Ray pod templates, as the Pods KubeRay will create from them.
    as_pods = [{"apiVersion": "v1", "kind": "Pod",
                "metadata": {**t["metadata"], "name": f"ray-{i}"}, "spec": t["spec"]} for i, t in enumerate(pods(rs))]
    for obj in [d for d in docs if d["kind"] != "RayService"] + as_pods:
        kubernetes_validate.validate(obj, k8s, strict=True)


def test_kubernetes_validate_strict_catches_a_misspelled_field():
    (deploy,) = by_kind(render(), "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, K8S_VERSIONS[0], strict=True)


# ---- the RayService against KubeRay's CRD -------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_rayservice_validates_against_the_crd(crd_validator, variant):
    assert crd_errors(crd_validator, rayservice(render(VARIANTS[variant]))) == []


def _rename(path, new):
    def mutate(rs):
        *parents, last = path
        node = rs
        for p in parents:
            node = node[p]
        node[new] = node.pop(last)
    return mutate


RC = ("spec", "rayClusterConfig")
FT = RC + ("gcsFaultToleranceOptions",)
HEAD_C = RC + ("headGroupSpec", "template", "spec", "containers", 0)
WORKER = RC + ("workerGroupSpecs", 0)
MUTATIONS = {  # name: (mutation, what the first error must mention)
    "spec.serveConfigv2": (_rename(("spec", "serveConfigV2"), "serveConfigv2"), "serveConfigv2"),
    "spec.rayClusterConfig.gcsFaultToleranceOption": (_rename(FT, "gcsFaultToleranceOption"),
                                                      "gcsFaultToleranceOption"),
    "gcsFaultToleranceOptions.redisAdress": (_rename(FT + ("redisAddress",), "redisAdress"), "redisAdress"),
    "redisPassword.valueFrom.secretRef": (
        _rename(FT + ("redisPassword", "valueFrom", "secretKeyRef"), "secretRef"), "secretRef"),
    "headGroupSpec.rayStartParam": (_rename(RC + ("headGroupSpec", "rayStartParams"), "rayStartParam"),
                                    "rayStartParam"),
    "workerGroupSpecs[0].minReplica": (_rename(WORKER + ("minReplicas",), "minReplica"), "minReplica"),
    "workerGroupSpecs[0].replicas as a string": (
        lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replicas="2"), "integer"),
    "head container resources.limit": (_rename(HEAD_C + ("resources", "limits"), "limit"), "'limit'"),
    "head container env[0].valueFrm": (_rename(HEAD_C + ("env", 0, "valueFrom"), "valueFrm"), "valueFrm"),
    "unknown top-level spec key": (lambda rs: rs["spec"].update(serveConfig="applications: []"), "serveConfig"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_crd_rejects_a_misspelled_field(crd_validator, mutation):
    rs = rayservice(render())
    assert crd_errors(crd_validator, rs) == []
    mutate, needle = MUTATIONS[mutation]
    mutate(rs)
    errors = crd_errors(crd_validator, rs)
    assert errors and any(needle in e for e in errors), errors


def test_a_values_override_with_an_unknown_key_is_rejected(crd_validator):
    """extraEnv is passed through to the Ray containers: a typo in it must not slip by."""
    broken = {"extraEnv": [{"name": "HF_TOKEN", "valueFrm": {"secretKeyRef": {"name": "hf", "key": "token"}}}]}
    rs = rayservice(render(broken))
    errors = crd_errors(crd_validator, rs)
    assert errors and all("valueFrm" in e for e in errors)
    head = pods(rs)[0]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ray-head"},
                                      "spec": head["spec"]}, K8S_VERSIONS[0], strict=True)


# ---- serveConfigV2 and LoomConfig -----------------------------------------------------------

LOOM_FIELDS = {f.name for f in fields(LoomConfig)}
UNSET = {f.name for f in fields(LoomConfig) if f.default is None}  # Helm drops a null value's key: absent
ENGINE_FIELDS = {f.name for f in fields(EngineConfig)} - set(PER_WORKER)
NESTED = {"budget": JobBudget, "engine": EngineConfig}  # mappings of their own


@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_config_args_are_a_loom_config(variant):
    values = VARIANTS[variant]
    cfg = serve_config(rayservice(render(values)))
    (app,) = cfg["applications"]
    assert app["import_path"] == "cluster.app:app_builder"
    assert app["route_prefix"] == "/"
    assert set(app["args"]) | UNSET == LOOM_FIELDS
    loom = LoomConfig.from_dict(app["args"])  # what app_builder does with them
    assert cfg["http_options"] == {"host": loom.host, "port": loom.port}
    for key, value in values.get("loom", {}).items():
        if key in NESTED:
            assert app["args"][key].items() >= value.items()
        else:
            assert getattr(loom, key) == value
    if "runtimeEnv" in values.get("serve", {}):
        assert app["runtime_env"] == values["serve"]["runtimeEnv"]


def test_app_builder_is_what_the_chart_imports():
    tree = ast.parse((ROOT / "cluster" / "app.py").read_text())
    builder = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "app_builder"]
    assert builder and [a.arg for a in builder[0].args.args] == ["args"]


def test_serve_config_yaml_deploys_through_the_chart():
    """`loom serve --config cluster/serve_config.yaml` and the chart read the same config."""
    path = ROOT / "cluster" / "serve_config.yaml"
    file_cfg = yaml.safe_load(path.read_text())
    values = chart_values(str(path))
    values["loom"]["worker_num_gpus"] = 0  # as in the file; workers.gpus stays as the chart has it
    args = serve_config(rayservice(render(values)))["applications"][0]["args"]
    for key, value in file_cfg.items():
        if key in NESTED:
            assert args[key].items() >= value.items(), key
        else:
            assert args[key] == value, key
    loom = LoomConfig.from_dict(args)
    assert loom.job_budget() == JobBudget.from_dict(file_cfg["budget"])


def test_unknown_loom_key_is_rejected_by_chart_and_by_loom_config():
    with pytest.raises(helm.HelmValuesError, match="num_worker"):
        render({"loom": {"num_worker": 2}})
    report = helm.lint(CHART, {"loom": {"num_worker": 2}})
    assert any("num_worker" in e for e in report["errors"])
    with pytest.raises(ConfigError, match="num_worker"):
        LoomConfig.from_dict({**render_args(), "num_worker": 2})
    with pytest.raises(helm.HelmValuesError, match="max_widht"):
        render({"loom": {"budget": {"max_widht": 2}}})


def render_args(values: dict | None = None) -> dict:
    return serve_config(rayservice(render(values)))["applications"][0]["args"]


JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def json_type(hint) -> str | list[str]:
    """A field's JSON schema type: ``int | None`` is ["integer", "null"]."""
    kinds = typing.get_args(hint)
    if type(None) in kinds:
        return [JSON_TYPES[k] for k in kinds if k is not type(None)] + ["null"]
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return "string"
    return JSON_TYPES[hint]

# Chart defaults that differ from LoomConfig's on purpose: a path inside the image, a GPU per
# worker on the GPU group, and Serve listening on the pod's interfaces.
CHART_DEFAULTS = {"worker_num_gpus": 1, "host": "0.0.0.0"}
CHART_ENGINE_DEFAULTS = {"model": "/home/ray/loom/models/loom-arith"}


def assert_schema_follows(schema: dict, cls: type, names: set[str]) -> None:
    assert set(schema["properties"]) == names and schema["additionalProperties"] is False, cls
    hints = typing.get_type_hints(cls)
    for name in names - set(NESTED):
        assert schema["properties"][name]["type"] == json_type(hints[name]), name
        if isinstance(hints[name], type) and issubclass(hints[name], StrEnum):
            assert schema["properties"][name]["enum"] == [e.value for e in hints[name]], name


def test_values_schema_and_defaults_follow_loom_config():
    with helm.Chart.load(CHART) as chart:
        schema, values = chart.schema, chart.values
    loom_schema = schema["properties"]["loom"]
    assert_schema_follows(loom_schema, LoomConfig, LOOM_FIELDS)
    assert_schema_follows(loom_schema["properties"]["engine"], EngineConfig, ENGINE_FIELDS)
    budget_schema = loom_schema["properties"]["budget"]
    assert set(budget_schema["properties"]) == {f.name for f in fields(JobBudget)}
    budget_hints = typing.get_type_hints(JobBudget)
    for f in fields(JobBudget):
        assert budget_schema["properties"][f.name]["type"] == JSON_TYPES[budget_hints[f.name]], f.name
    assert set(loom_schema["properties"]["format"]["enum"]) == {*FORMATS, None}
    # values.yaml: every field, LoomConfig's and EngineConfig's defaults (bar the chart's own), JobBudget's.
    assert set(values["loom"]) == LOOM_FIELDS - UNSET and set(values["loom"]["engine"]) == ENGINE_FIELDS
    defaults = LoomConfig().to_dict()
    for name in LOOM_FIELDS - set(CHART_DEFAULTS) - set(NESTED) - UNSET:
        assert values["loom"][name] == defaults[name], name
    for name in ENGINE_FIELDS - set(CHART_ENGINE_DEFAULTS):
        assert values["loom"]["engine"][name] == defaults["engine"][name], name
    for name, value in CHART_DEFAULTS.items():
        assert values["loom"][name] == value, name
    for name, value in CHART_ENGINE_DEFAULTS.items():
        assert values["loom"]["engine"][name] == value, name
    assert values["loom"]["budget"] == asdict(JobBudget())


# ---- what the RayService asks of KubeRay --------------------------------------------------------

def test_head_and_worker_groups_follow_values():
    v = VARIANTS["full"]
    rs = rayservice(render(v))
    rc = rs["spec"]["rayClusterConfig"]
    assert rc["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert rc["enableInTreeAutoscaling"] is True
    (group,) = rc["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 1, 4)
    assert group["rayStartParams"] == {"num-gpus": "2"}
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "2"
    for tmpl in pods(rs):
        c = tmpl["spec"]["containers"][0]
        assert c["image"] == "registry.example.com/loom:abc123"
        assert c["imagePullPolicy"] == "Always"
        assert tmpl["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        assert env_of(tmpl)["HF_HOME"]["value"] == "/cache/hf"
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["serve"] == 8000
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    default = rayservice(render())["spec"]["rayClusterConfig"]
    assert default["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "loom:0.1.0"


def test_gcs_fault_tolerance_points_at_the_charts_redis():
    docs = render()
    ft = rayservice(docs)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    (svc,) = by_kind(docs, "Service")
    (secret,) = by_kind(docs, "Secret")
    (deploy,) = by_kind(docs, "Deployment")
    assert ft["redisAddress"] == f"{svc['metadata']['name']}.{NAMESPACE}.svc:{svc['spec']['ports'][0]['port']}"
    ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "redis-password"}
    assert ref["key"] in secret["data"]
    redis_env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    for tmpl in pods(rayservice(docs)):
        env = env_of(tmpl)
        names = list(env)
        # $(LOOM_REDIS_PASSWORD) is expanded only from a variable defined earlier in the list.
        assert names.index("LOOM_REDIS_PASSWORD") < names.index("LOOM_REDIS_URL")
        assert env["LOOM_REDIS_URL"]["value"] == f"redis://:$(LOOM_REDIS_PASSWORD)@{ft['redisAddress']}"
        assert env["LOOM_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref


def test_a_given_redis_password_is_used_and_persistence_adds_a_claim():
    docs = render(VARIANTS["full"])
    (secret,) = by_kind(docs, "Secret")
    assert base64.b64decode(secret["data"]["redis-password"]).decode() == "s3cret-pass"
    (pvc,) = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "fast"
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == \
        pvc["metadata"]["name"]
    assert rayservice(docs)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["externalStorageNamespace"] == \
        "loom-prod"
    with pytest.raises(helm.HelmValuesError):  # not URL-safe: it goes into LOOM_REDIS_URL
        render({"redis": {"auth": {"password": "p@ss/word"}}})


def test_otel_exporter_settings_reach_every_ray_container():
    rs = rayservice(render(VARIANTS["full"]))
    for tmpl in pods(rs):
        env = {k: e.get("value") for k, e in env_of(tmpl).items()}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4317"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
        assert env["OTEL_SERVICE_NAME"] == "loom"
        assert env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=test"
    for tmpl in pods(rayservice(render())):
        env = {k: e.get("value") for k, e in env_of(tmpl).items()}
        assert env["OTEL_TRACES_EXPORTER"] == "none" and "OTEL_EXPORTER_OTLP_ENDPOINT" not in env


def test_the_ingress_setting_reaches_every_ray_container():
    """Ray Serve reads its ingress mode from the environment its processes start with."""
    for values, ingress in (({}, Ingress.HAPROXY), ({"loom": {"ingress": "serve-proxy"}}, Ingress.SERVE_PROXY)):
        flags = ray_env(ingress)  # what `loom serve` sets, bar the files and ports of its own machine
        for tmpl in pods(rayservice(render(values))):
            env = {k: e.get("value") for k, e in env_of(tmpl).items()}
            assert {k: env.get(k) for k in flags} == flags, values


def test_ray_containers_may_raise_the_engine_core_only_while_its_niceness_is_set():
    """Lowering a niceness (Ray starts workers at 15) needs CAP_SYS_NICE, which containers lack."""
    for tmpl in pods(rayservice(render())):
        assert tmpl["spec"]["containers"][0]["securityContext"] == {"capabilities": {"add": ["SYS_NICE"]}}
    for tmpl in pods(rayservice(render({"loom": {"engine": {"core_nice": None}}}))):
        assert "securityContext" not in tmpl["spec"]["containers"][0]


def test_too_few_gpus_for_the_loom_workers_fails_the_render():
    with pytest.raises(helm.HelmRenderError, match="GPUs"):
        render({"loom": {"num_workers": 4, "worker_num_gpus": 1}, "workers": {"replicas": 1, "gpus": 2}})
    render({"loom": {"num_workers": 4, "worker_num_gpus": 1}, "workers": {"replicas": 2, "maxReplicas": 2, "gpus": 2}})
    render({"loom": {"num_workers": 4, "worker_num_gpus": 0}, "workers": {"replicas": 1, "gpus": 0}})


def test_a_tensor_parallel_worker_needs_its_gpus_on_one_pod():
    tp2 = {"num_workers": 2, "worker_num_gpus": 1, "engine": {"tensor_parallel_size": 2}}
    with pytest.raises(helm.HelmRenderError, match="4 GPUs on one pod, but workers.gpus is 2"):
        render({"loom": {**tp2, "engine": {"tensor_parallel_size": 4}}, "workers": {"replicas": 2, "gpus": 2}})
    with pytest.raises(helm.HelmRenderError, match="holds 1 "):  # 3 GPUs a pod: one worker of 2 each
        render({"loom": tp2, "workers": {"replicas": 1, "gpus": 3}})
    docs = render({"loom": tp2, "workers": {"replicas": 1, "gpus": 4}})
    (group,) = rayservice(docs)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert LoomConfig.from_dict(serve_config(rayservice(docs))["applications"][0]["args"]).engine.tensor_parallel_size == 2


def test_notes_tell_how_to_reach_the_app():
    text = notes()
    assert "svc/loom-serve-svc 8000:8000" in text and "svc/loom-head-svc 8265:8265" in text
    assert "/v1/chat/completions" in text
