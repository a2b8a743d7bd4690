/**
 * The editor example, examples/typescript/extension_host.mjs, where it cannot start a tree (no
 * `moorage` on PATH, or a MOORAGE_BIN that cannot run): one line saying what to set, and a
 * non-zero exit, not an unhandled 'error' event's stack trace. (tests/test_clients_examples.py
 * runs it against real trees.)
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { scratch } from "./fake_actor.js";

/** This package (the example's `moorage-client`, as its package.json names it) and the example. */
const PACKAGE = fileURLToPath(new URL("../..", import.meta.url));
const EXAMPLE = fileURLToPath(new URL("../../../../examples/typescript/extension_host.mjs", import.meta.url));

/** The example run to its end with `env` over this process's (less MOORAGE_BIN), no tree in its
 * runtime dir and nothing on PATH: its exit code (null: killed, still running a minute later)
 * and what it printed. It runs where it is, from a folder that links it and this package as
 * its `moorage-client` (node keeps the links' paths), so it needs no install of its own. */
function runExample(env: Record<string, string>): Promise<{ code: number | null; out: string; err: string }> {
  const dir = scratch();
  mkdirSync(join(dir, "node_modules"));
  symlinkSync(PACKAGE, join(dir, "node_modules", "moorage-client"));
  symlinkSync(EXAMPLE, join(dir, "extension_host.mjs"));
  for (const sub of ["bin", "run"]) mkdirSync(join(dir, sub));
  const { MOORAGE_BIN: _, ...inherited } = process.env;
  const child = spawn(process.execPath, ["--preserve-symlinks", "--preserve-symlinks-main", join(dir, "extension_host.mjs")], {
    env: { ...inherited, PATH: join(dir, "bin"), MOORAGE_RUNTIME_DIR: join(dir, "run"), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

for (const [what, env, says] of [
  ["no moorage on PATH and no MOORAGE_BIN", {}, /no `moorage` on PATH \(ENOENT\); set MOORAGE_BIN/],
  ["a MOORAGE_BIN that names no command", { MOORAGE_BIN: "/nonexistent/moorage" }, /MOORAGE_BIN=\/nonexistent\/moorage cannot be run \(ENOENT\)/],
] as const) {
  test(`the extension host example, given ${what}, says what to set in one line and exits non-zero`, async () => {
    const { code, out, err } = await runExample(env);
    assert.ok(code !== null && code !== 0, `exit ${code}\n${err}`);
    const lines = err.split("\n").filter((l) => l.trim() !== "");
    assert.equal(lines.length, 1, err);
    assert.match(lines[0], says);
    assert.equal(out, ""); // (nothing claims a tree was started)
  });
}
