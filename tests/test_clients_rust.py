"""The Rust client's own test suite (`cargo test` in protocol/rust: every envelope vector, the
client.json scenarios, and the live conformance suite) against a real tree."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.clients_support import CASES, ROOT, conformance_tree, run_tool  # noqa: F401  (a fixture)
from tests.conftest import Tree

pytestmark = pytest.mark.timeout(900)

CRATE = ROOT / "protocol" / "rust"


def cargo(*args: str, env: dict[str, str] | None = None, timeout: float = 800) -> str:
    return run_tool("cargo", CRATE, *args, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def built() -> None:
    if shutil.which("cargo") is None:
        pytest.fail("cargo is not installed: the machine's Rust toolchain is needed")
    # Built before the tree starts, so the build's minutes are not the tree's.
    cargo("test", "--no-run", "--locked")


def test_the_rust_client_passes_its_vectors_and_the_live_conformance_suite(
        built: None, conformance_tree: Tree) -> None:  # noqa: F811
    out = cargo("test", "--locked", "--", "--test-threads=1", "--nocapture",
                env={"MOORAGE_CONFORMANCE_DIR": str(conformance_tree.runtime_dir)})
    print("".join(re.findall(r"conformance: .*\n|^latency: .*\n|^test result: .*\n", out, re.M)))
    passed = re.findall(r"conformance: (\w+) ok$", out, re.M)
    assert passed == [c["name"] for c in CASES["cases"]], out[-8000:]
    assert "latency: pushed rows merged" in out, out[-8000:]
    assert "latency: 40 ops of 1500 buckets pushed and merged" in out, out[-8000:]
    n = len(CASES["cases"])
    assert re.search(rf"^conformance: {n} of {n} cases passed$", out, re.M), out[-8000:]
