"""The code's layout rules (orchestrator/__init__.py): each subpackage imports only the packages
below it, workers/ only the shared types, and the driver neither Ray nor vLLM."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {  # package -> the packages of Loom's it may import (besides itself)
    "orchestrator.protocol": set(),
    "orchestrator.telemetry": set(),
    "orchestrator.plan": {"orchestrator.protocol"},
    "orchestrator.budget": {"orchestrator.protocol", "orchestrator.telemetry"},
    "orchestrator.routing": {"orchestrator.protocol", "orchestrator.telemetry", "orchestrator.budget"},
    "orchestrator.driver": {"orchestrator.protocol", "orchestrator.telemetry", "orchestrator.plan",
                            "orchestrator.budget"},
    "orchestrator.service": {"orchestrator.protocol", "orchestrator.telemetry", "orchestrator.plan",
                             "orchestrator.budget", "orchestrator.driver"},
    "workers": {"orchestrator.protocol", "orchestrator.telemetry"},
}
NO_EDGE = {"orchestrator.driver": ("ray", "vllm"), "orchestrator.plan": ("ray", "vllm"),
           "orchestrator.protocol": ("ray", "vllm"), "orchestrator.telemetry": ("vllm",)}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module + ("." + node.names[0].name if node.module == "orchestrator" else ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def package_of(module: str) -> str | None:
    return next((p for p in sorted(ALLOWED, key=len, reverse=True) if module == p or module.startswith(p + ".")),
                None)


def modules():
    for pkg in ALLOWED:
        yield from ((pkg, p) for p in (ROOT / pkg.replace(".", "/")).rglob("*.py"))


def test_every_package_imports_only_what_its_docstring_allows():
    bad = []
    for pkg, path in modules():
        for name in imports(path):
            target = package_of(name)
            ours = name.startswith(("orchestrator", "workers", "cluster"))
            if ours and target != pkg and target not in ALLOWED[pkg]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_driver_and_the_shared_types_import_neither_ray_nor_vllm():
    bad = [f"{path.relative_to(ROOT)} imports {name}" for pkg, path in modules() if pkg in NO_EDGE
           for name in imports(path) if name.split(".")[0] in NO_EDGE[pkg]]
    assert not bad, "\n".join(bad)


def test_the_rules_see_every_import():
    """The checker itself: a module of the driver that imported routing would be caught."""
    assert package_of("orchestrator.routing.placement") == "orchestrator.routing"
    assert "orchestrator.routing" not in ALLOWED["orchestrator.driver"]
    assert "orchestrator.service.api" in imports(ROOT / "cluster" / "app.py")


def test_modules_and_functions_stay_small():
    """One job per module: none over 300 lines, no function over 40, in orchestrator/ and workers/."""
    too_big = []
    for pkg in ("orchestrator", "workers"):
        for path in (ROOT / pkg).rglob("*.py"):
            src = path.read_text()
            if len(src.splitlines()) > 300:
                too_big.append(f"{path.relative_to(ROOT)}: {len(src.splitlines())} lines")
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 40:
                    too_big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: "
                                   f"{node.end_lineno - node.lineno + 1} lines")
    assert not too_big, "\n".join(too_big)


def test_each_package_docstring_names_its_modules():
    """A newcomer finds a module from its package's docstring: every module and subpackage of
    orchestrator/, workers/ and cluster/ is named (``name``) in its package's ``__init__``."""
    unnamed = []
    for init in [*(ROOT / "orchestrator").rglob("__init__.py"), *(ROOT / "workers").rglob("__init__.py"),
                 ROOT / "cluster" / "__init__.py"]:
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        names = [p.stem for p in init.parent.glob("*.py") if p.stem != "__init__"]
        names += [p.parent.name for p in init.parent.glob("*/__init__.py")]
        unnamed += [f"{init.parent.relative_to(ROOT)}: {n}" for n in names if f"``{n}``" not in doc]
    assert not unnamed, "\n".join(sorted(unnamed))
