/**
 * adopt() against a real tree: the conformance suite's (tests/test_clients_typescript.py starts
 * it with `--parent` its own pid and runs `npm test` with MOORAGE_CONFORMANCE_DIR set to its
 * runtime dir; without it this test is skipped, and that driver fails on a skip). A stand-in
 * window and this process each hold the tree beside whoever started it; adopting again adds no
 * holder; the window's exit lets only the window go. Whoever started the tree still holds it at
 * the end, and this process lets go by exiting: the tree is as it was.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { test } from "node:test";

import { Client } from "../src/client.js";
import { type Lifecycle, adopt } from "../src/lifecycle.js";

const DIR = process.env.MOORAGE_CONFORMANCE_DIR;

/** Every pid holding the tree, as `lifecycle` says it (`holders` only when more than one does). */
function holdersOf(life: Lifecycle): number[] {
  if (life.holders !== undefined) return life.holders;
  return life.state === "attached" && life.parent !== null ? [life.parent] : [];
}

async function lifecycle(client: Client): Promise<Lifecycle> {
  return ((await client.call("supervisor", "sup.status")) as unknown as { lifecycle: Lifecycle }).lifecycle;
}

test("adopt: a window and this process hold the tree beside its starter, each once", { skip: DIR === undefined ? "no tree (MOORAGE_CONFORMANCE_DIR unset)" : false, timeout: 60_000 }, async () => {
  const client = new Client({ runtimeDir: DIR!, timeout: 10 });
  // A stand-in editor window: `cat` until killed (or until this process's end closes its stdin).
  const window = spawn("cat", [], { stdio: ["pipe", "ignore", "ignore"] });
  await once(window, "spawn");
  const pid = window.pid!;
  try {
    const before = await lifecycle(client);
    assert.equal(before.state, "attached", "the conformance tree follows whoever started it");
    const starters = holdersOf(before);
    let life = (await adopt(client, pid)).lifecycle;
    assert.equal(life.parent, pid);
    assert.deepEqual(holdersOf(life), [...starters, pid]);
    for (let i = 0; i < 2; i++) {
      life = (await adopt(client)).lifecycle;
      assert.equal(life.state, "attached");
      assert.equal(life.parent, process.pid);
      assert.deepEqual(holdersOf(life), [...starters, pid, process.pid]);
    }
    window.kill("SIGKILL");
    await once(window, "exit");
    const end = performance.now() + 20_000;
    while (holdersOf(life).includes(pid)) {
      assert.ok(performance.now() < end, "the window's exit not seen by the tree within 20 s");
      life = await lifecycle(client);
    }
    assert.equal(life.state, "attached");
    assert.deepEqual(holdersOf(life), [...starters, process.pid]);
  } finally {
    if (window.exitCode === null && window.signalCode === null) window.kill("SIGKILL");
    await client.close();
  }
});
