"""The Helm chart's ``loom:`` values from a ``loom serve`` config, so both deploy one config.

    python -m cluster.helm_values --config cluster/serve_config.yaml > loom-values.yaml
    helm install loom ./helm/loom -f loom-values.yaml -f my-values.yaml

The chart puts the ``loom:`` mapping, merged over its defaults, into the RayService's
serveConfigV2 as the ``args`` of ``cluster.app:app_builder``, which parses them with
``LoomConfig.from_dict`` exactly as ``loom serve`` does.
"""
from __future__ import annotations

import argparse
import sys

import yaml

from cluster.config import DEFAULT_MODEL, load


def chart_values(path: str | None = None, overrides: dict | None = None) -> dict:
    """``{"loom": {...}}`` for ``helm install -f``: the validated config (file < LOOM_* env <
    overrides). The bundled model's path on this machine is left out, so the chart's default
    (the image's copy) applies."""
    data = load(path, overrides).to_dict()
    if data["engine"]["model"] == DEFAULT_MODEL:
        del data["engine"]["model"]
    return {"loom": data}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.helm_values", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="YAML config (see cluster/serve_config.yaml)")
    p.add_argument("--model", default=None, help="model path inside the image, or a hub id")
    args = p.parse_args(argv)
    overrides = {"engine": {"model": args.model}} if args.model else None
    yaml.safe_dump(chart_values(args.config, overrides), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
