/**
 * A client's options are checked where they are given: a bad value is a RangeError naming the
 * option, thrown before the client looks for a tree or opens a socket.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";

import { Client, type ClientOptions } from "../src/client.js";
import { Backoff } from "../src/recovery.js";

const DIR = mkdtempSync(join(tmpdir(), "moorage-options-"));
after(() => rmSync(DIR, { recursive: true, force: true }));

const BAD: [keyof ClientOptions, unknown][] = [
  ["timeout", 0], ["timeout", -1], ["timeout", "5"], ["timeout", Number.NaN], ["timeout", Infinity],
  ["attemptTimeout", 0], ["metricsInterval", 0], ["breakerCooldown", -0.5],
  ["breakerThreshold", 0], ["breakerThreshold", 1.5], ["reconnectIvlMs", -1], ["reconnectIvlMaxMs", 2.5],
  ["backoff", { initial: 0.01 }], ["learnOps", 1], ["idempotentOps", "fs.read"], ["idempotentOps", [1, 2]],
];

test("a bad option is refused by name, before any tree is looked for", () => {
  for (const [name, value] of BAD) {
    // (no runtime dir: a client given none looks for the default instance's tree first,
    // and would say not_running; the options are checked before that)
    assert.throws(() => new Client({ [name]: value } as ClientOptions),
      (e: unknown) => e instanceof RangeError && e.message.startsWith(`ClientOptions.${name} must be`),
      `${name}=${String(value)}`);
  }
});

test("good options pass as given, idempotent ops from any iterable", async () => {
  function* ops(): Generator<string> {
    yield "fs.read";
  }
  const c = new Client({
    runtimeDir: DIR, timeout: 1, attemptTimeout: 0.25, breakerCooldown: 0, breakerThreshold: 1,
    reconnectIvlMs: 0, reconnectIvlMaxMs: 0, backoff: new Backoff(0.01, 2, 0.5, 0), learnOps: false,
    idempotentOps: ops(), metricsInterval: 0.01,
  });
  try {
    assert.equal(c.options.timeout, 1);
    assert.equal(c.options.learnOps, false);
  } finally {
    await c.close();
  }
});
