"""The TypeScript client's own test suite (`npm test` in protocol/typescript: every envelope
vector, the client.json scenarios, and the live conformance suite) against a real tree."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.clients_support import CASES, ROOT, conformance_tree, run_tool  # noqa: F401  (a fixture)
from tests.conftest import Tree

pytestmark = pytest.mark.timeout(600)

PACKAGE = ROOT / "protocol" / "typescript"


def npm(*args: str, env: dict[str, str] | None = None, timeout: float = 500) -> str:
    return run_tool("npm", PACKAGE, *args, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def installed() -> None:
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed: .ci/run installs what the client tests need")
    if not (PACKAGE / "node_modules" / "zeromq").is_dir():
        npm("ci", "--no-audit", "--no-fund")


def test_the_typescript_client_passes_its_vectors_and_the_live_conformance_suite(
        installed: None, conformance_tree: Tree) -> None:  # noqa: F811
    out = npm("test", env={"MOORAGE_CONFORMANCE_DIR": str(conformance_tree.runtime_dir)})
    summary = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled) (\d+)$", out, re.M))
    failed = re.findall(r"^not ok .*?(?=^(?:ok|not ok) |^1\.\.)", out, re.M | re.S)
    assert summary.get("fail") == "0" and summary.get("cancelled") == "0", "\n".join(failed)
    assert summary.get("skipped") == "0", "the live cases were skipped"
    print("".join(re.findall(r"^(?:ok|not ok) \d+ - conformance: .*\n|^# \w+ \d+\n", out, re.M)))
    conformance = re.findall(r"^ok \d+ - conformance: (\w+)", out, re.M)
    assert conformance == [c["name"] for c in CASES["cases"]], out[-6000:]
