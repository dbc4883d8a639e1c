"""The ``loom`` command: run a job locally, serve the app, submit to a running app."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time

import psutil

from cluster.config import ConfigError, load
from cluster.inputs import InputError, parse_budget, question_body
from orchestrator.driver.records import RequestError
from orchestrator.plan.published import FORMATS
from orchestrator.protocol.fork import ForkPolicy


def job_body(args) -> dict:
    """The job the command's arguments ask for, as the body of ``POST /v1/jobs`` (no format: the
    server's)."""
    body = {**question_body(args.question), "mode": args.mode, "budget": parse_budget(args.budget)}
    if args.format:
        body["format"] = args.format
    if args.fork_policy:
        body["fork_policy"] = args.fork_policy
    if args.latency_target is not None:
        body["latency_target_s"] = args.latency_target
    return body


def cmd_run(args) -> int:
    import ray

    from cluster import runtime, tree
    from orchestrator.service.jobs import JobService
    from orchestrator.service.schema import job_request
    from orchestrator.service.store import InProcessJobStore

    cfg = load(args.config, {"num_workers": args.workers} if args.workers else None)
    request = job_request(job_body(args))
    if args.trace:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        from orchestrator.telemetry import tracing
        tracing.setup(ConsoleSpanExporter())
    attached = args.address is not None  # a running cluster's engines: used, not stopped
    if not attached:
        cfg = runtime.pin_controller(cfg)
    ray.init(address=args.address, num_cpus=None if attached else args.cpus, include_dashboard=False,
             log_to_driver=False, namespace="loom")
    try:
        t0 = time.time()
        runner = runtime.start(cfg).runner
        print(f"engines ready in {time.time() - t0:.1f}s", file=sys.stderr)
        record = asyncio.run(JobService(runner, InProcessJobStore()).run(request))
    finally:
        if not attached:
            runtime.shutdown_actors(cfg)
        ray.shutdown()
    if args.json:
        print(json.dumps(record.to_json(), indent=2))
    else:
        print(tree.render(record))
        print("\n" + runner.prompt_text(request) + record.result.get("text", ""))
        print(f"\nanswer: {record.result.get('answer', '')}")
    return 0 if record.status == "done" else 1


def cmd_serve(args) -> int:
    """Serves until SIGTERM or Ctrl-C, then stops in order, each step bounded: the app (running
    jobs are written back as failed, with the reason), the engines, Ray."""
    import signal

    import ray
    from ray import serve

    from cluster import ingress, runtime
    from cluster.app import app_builder

    cfg = load(args.config)
    if not os.environ.get("RAY_ADDRESS"):  # Ray starts here: its processes off the engines' cores,
        cfg = runtime.pin_controller(cfg)
        ingress.use(cfg.ingress)  # and Serve's ingress as configured (a running cluster has its own)
    ray.init(namespace="loom", include_dashboard=args.dashboard)
    signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which installs its own
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(app_builder(cfg.to_dict()), name="loom", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        print("loom: stopping", file=sys.stderr)
    finally:
        serve.shutdown()
        runtime.shutdown_actors(cfg)
        ours = psutil.Process().children(recursive=True)  # Ray's own processes, before they are orphaned
        ray.shutdown()
        _reap(ours)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _reap(processes, grace_s: float = 5.0) -> None:
    """Ends what Ray's shutdown leaves behind (its agents outlive their raylet): TERM, then KILL."""
    for p in processes:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def cmd_submit(args) -> int:
    from cluster.jobs import JobError

    try:
        rec = asyncio.run(_submit(args.url, job_body(args), wait=not args.no_wait))
    except JobError as e:
        raise SystemExit(f"loom: {e}") from None
    if rec is None:
        return 0
    print(json.dumps(rec, indent=2) if args.json else rec["result"].get("answer", rec.get("error")))
    return 0 if rec["status"] == "done" else 1


async def _submit(url: str, body: dict, wait: bool) -> dict | None:
    """POST the job (its id goes to stderr) and, if asked, poll it to the end with the Ray Jobs
    entrypoint's client, which rides out lost connections and 5xx while Serve restarts."""
    import httpx

    from cluster import jobs

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        job_id = await jobs.submit(client, body)
        print(job_id, file=sys.stderr)
        return await jobs.wait(client, job_id, timeout_s=math.inf, poll_s=0.5) if wait else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loom", description="Adaptive parallel reasoning on Ray + vLLM")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run one job on a local Ray cluster and print the thread tree")
    run.add_argument("question")
    run.add_argument("--workers", type=int, default=0, help="engines to start (default: config)")
    run.add_argument("--cpus", type=int, default=None)
    run.add_argument("--address", default=None,
                     help="a running Ray cluster (e.g. 'auto'): use its Loom engines, leave them running")
    run.add_argument("--trace", action="store_true", help="print the job's OpenTelemetry spans (console)")
    serve_p = sub.add_parser("serve", help="start the Serve app from a YAML config")
    serve_p.add_argument("--dashboard", action="store_true")
    submit = sub.add_parser("submit", help="submit a job to a running app and wait for it")
    submit.add_argument("question")
    submit.add_argument("--url", default="http://127.0.0.1:8000")
    submit.add_argument("--no-wait", action="store_true")
    for sp in (run, serve_p, submit):
        sp.add_argument("--config", default=None, help="YAML config (see cluster/serve_config.yaml)")
    for sp in (run, submit):
        sp.add_argument("--format", default=None, choices=list(FORMATS))
        sp.add_argument("--mode", default="parallel", choices=["parallel", "sequential"])
        sp.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE")
        sp.add_argument("--fork-policy", default=None, choices=[p.value for p in ForkPolicy],
                        help="threads of a fork run at once (default: the server's fork_policy)")
        sp.add_argument("--latency-target", type=float, default=None, metavar="SECONDS",
                        help="seconds from submission the job aims to finish within")
        sp.add_argument("--json", action="store_true", help="print the whole job record")
    args = p.parse_args(argv)
    try:
        return {"run": cmd_run, "serve": cmd_serve, "submit": cmd_submit}[args.cmd](args)
    except ConfigError as e:
        raise SystemExit(f"loom: config: {e}") from None
    except (InputError, RequestError) as e:
        raise SystemExit(f"loom: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
