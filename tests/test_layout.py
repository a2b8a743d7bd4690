"""The package's shape: one import namespace, no import circles, the runtime's privates kept
inside it, the supervisor process apart from the CLI, and a wheel that shares site-packages
with a distribution that owns a top-level `supervisor/`."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"actors": "moorage.actors", "protocol": "moorage.protocol",
            "supervisor": "moorage.supervisor"}


def modules() -> dict[str, Path]:
    """Every module of the installed namespace, by dotted name, from the source folders."""
    out: dict[str, Path] = {}
    for folder, prefix in PACKAGES.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            if "vectors" in f.parts:  # a script beside the vectors, not part of the package
                continue
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([prefix, *parts])] = f
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules `name` imports, anywhere in it (under TYPE_CHECKING and in functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names if a.name in known)
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - n.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in n.names:
                sub = f"{base}.{a.name}"
                if sub in known:
                    out.add(sub)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_module_that_imports_it_back():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert cycles(graph) == []


def test_the_supervisor_process_never_imports_the_cli():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    cli = {m for m in known if m.startswith("moorage.supervisor.cli")}
    # everything the supervisor process loads: launch (the root), zygote, and what they import
    todo = ["moorage.supervisor.launch", "moorage.supervisor.supervisor",
            "moorage.supervisor.zygote"]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert seen & cli == set()


def private_names(tree: ast.AST) -> set[str]:
    """Names a module defines with one leading underscore: functions, classes, attributes,
    variables and `__slots__` entries."""
    out: set[str] = set()

    def private(s: str) -> bool:
        return s.startswith("_") and not s.startswith("__") and s.isidentifier()

    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = n.name
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            name = n.attr
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            name = n.id
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            name = n.value
        else:
            continue
        if private(name):
            out.add(name)
    return out


def test_nothing_outside_the_runtime_touches_a_private_name_of_it():
    runtime = ROOT / "actors" / "runtime"
    theirs: set[str] = set()
    for f in runtime.glob("*.py"):
        theirs |= private_names(ast.parse(f.read_text()))
    touched = []
    ours = [f for folder in ("actors", "protocol", "supervisor", "tests", "perf", "examples")
            for f in (ROOT / folder).rglob("*.py")]
    for f in sorted(ours):
        if runtime in f.parents or "node_modules" in f.parts or "target" in f.parts:
            continue
        tree = ast.parse(f.read_text())
        own = private_names(tree)
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and n.attr in theirs and n.attr not in own:
                touched.append(f"{f.relative_to(ROOT)}:{n.lineno} .{n.attr}")
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(
                    "moorage.actors.runtime"):
                touched += [f"{f.relative_to(ROOT)}:{n.lineno} {a.name}"
                            for a in n.names if a.name.startswith("_")]
    assert touched == []


def test_every_package_folder_is_declared_in_pyproject():
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                   ["packages"])
    found = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert found == declared


# --- the wheel beside a distribution that owns `supervisor/` -------------------------------


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    # never from the checkout: `python -c` puts the working directory first on sys.path
    r = subprocess.run([str(c) for c in cmd], cwd=cwd or "/", capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_installs_only_moorage_and_leaves_a_clashing_supervisor_intact(tmp_path):
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", wheels, ROOT)
    wheel = next(wheels.glob("moorage-*.whl"))
    # A distribution of another project that ships a top-level `supervisor` package, as
    # supervisord does: built here, from nothing but local files.
    other = tmp_path / "other"
    (other / "supervisor").mkdir(parents=True)
    (other / "supervisor" / "__init__.py").write_text("OWNER = 'the other project'\n")
    (other / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "other-supervisor"
        version = "1.0"
        [tool.setuptools]
        packages = ["supervisor"]
        """))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", wheels, other)
    venv = tmp_path / "venv"
    # no pip of its own (ensurepip is 10 s of this test): this environment's pip drives it
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", py)
    site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .strip())
    before = set(os.listdir(site))
    run(*pip, "install", "-q", "--no-deps", "--no-index", wheel,
        next(wheels.glob("other_supervisor-*.whl")))
    added = sorted(set(os.listdir(site)) - before)
    assert [a for a in added if not a.endswith(".dist-info")] == ["moorage", "supervisor"]
    # moorage's dependencies come from this test's environment (no network); its own .pth
    # files are not read from there, so what is imported is the wheel's copy.
    ours = sysconfig.get_paths()["purelib"]
    (site / "deps.pth").write_text(ours + "\n")
    probe = ("import supervisor, moorage.supervisor.supervisor, moorage.supervisor.cli.commands,"
             " moorage.actors.terminal.actor, moorage.protocol.client;"
             f" assert moorage.supervisor.supervisor.__file__.startswith({str(site)!r});"
             " print(supervisor.OWNER)")
    assert run(py, "-c", probe).strip() == "the other project"
    run(*pip, "uninstall", "-y", "-q", "moorage")
    # (pip may leave the namespace's folder behind, empty)
    assert not [p for p in (site / "moorage").rglob("*") if p.is_file()]
    assert run(py, "-c", "import supervisor; print(supervisor.OWNER)").strip() == \
        "the other project"
