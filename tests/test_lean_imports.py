"""What every process of the tree carries: loguru's asyncio (and with it ssl, libssl and
libcrypto's initialisation) stays out until a coroutine sink asks for it
(actors.runtime.loguru_lean), and a coroutine sink still works."""

from __future__ import annotations

import textwrap
from importlib import resources

import psutil

from tests.conftest import descendants, printed_by


def mapped_extensions(pid: int) -> set[str]:
    """The extension modules (`*.so` of the interpreter's library) mapped in `pid`."""
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[-1].rsplit("/", 1)[-1].split(".", 1)[0]
                for line in f if ".cpython-" in line}


def test_no_process_of_the_default_tree_loads_asyncio_or_ssl(make_tree):
    config = resources.files("moorage.supervisor").joinpath("default.toml").read_text()
    tree = make_tree(config).start()
    procs = [psutil.Process(tree.pid), *descendants(tree.pid)]
    assert len(procs) >= 10, [p.name() for p in procs]  # root, 2 zygotes, 2 supervisors, actors
    for p in procs:
        loaded = mapped_extensions(p.pid)
        assert "_cwire" in loaded, (p.pid, loaded)  # (what every process of the tree has)
        assert not loaded & {"_asyncio", "_ssl"}, (p.cmdline(), loaded & {"_asyncio", "_ssl"})


def test_a_coroutine_sink_works_with_the_lean_import():
    script = textwrap.dedent("""
        import asyncio, sys
        import moorage.actors
        from loguru import logger
        assert sys.modules["loguru._asyncio_loop"].LAZY
        got = []

        async def sink(message):
            got.append(message.record["message"])

        async def main():
            logger.remove()
            logger.add(sink)
            logger.info("one")
            await logger.complete()

        asyncio.run(main())
        print(got)
    """)
    assert printed_by(script) == "['one']"


def test_importing_the_packages_leaves_asyncio_out():
    script = ("import sys, moorage.supervisor.cli.commands, moorage.supervisor.launch\n"
              "from loguru import logger\n"
              "logger.info('x')\n"
              "print(sorted(m for m in ('asyncio', 'ssl') if m in sys.modules))")
    assert printed_by(script) == "[]"
