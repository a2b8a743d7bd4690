/**
 * Which runtime directory the client trusts (PROTOCOL.md section 2): the folder it finds an
 * instance in, and moorage's own folder above it, must each be a directory of this user's, not
 * a symbolic link, that no group or other can write; its `lock` a regular file of this user's.
 * Otherwise another local user who made the folder first would be sent every call, and a FIFO
 * named `lock` would hang the client for good. Refused: `forbidden`, before anything is sent.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, closeSync, mkdirSync, openSync, renameSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { Client } from "../src/client.js";
import { MoorageError } from "../src/errors.js";
import { scratch } from "./fake_actor.js";

const NOBODY = 65534;
const asRoot = { skip: process.getuid?.() !== 0 ? "a folder of another uid's is made by root (chown)" : false };

const forbidden = (...said: string[]) => (e: unknown): boolean => {
  assert.ok(e instanceof MoorageError && e.error.name === "forbidden", String(e));
  for (const s of said) assert.ok(e.error.message.includes(s), `${s} not in: ${e.error.message}`);
  return true;
};

/** A folder that passes for a running tree's: a `tree.json`, and its `lock` flocked (a root's
 * exclusive lock) on a descriptor of this process's, closed by `release`. */
function looksRunning(dir: string): { file: string; release: () => void } {
  const file = join(dir, "tree.json");
  writeFileSync(file, JSON.stringify({ moorage: "ready", runtime_dir: dir, endpoints: {} }));
  writeFileSync(join(dir, "lock"), "");
  const held = openSync(join(dir, "lock"), "r");
  assert.equal(spawnSync("flock", ["-x", "-n", "3"], { stdio: ["ignore", "ignore", "ignore", held] }).status, 0);
  return { file, release: () => closeSync(held) };
}

test("a runtime dir group or others can write is refused, given or found", async () => {
  for (const mode of [0o770, 0o777, 0o1777]) {
    const dir = scratch();
    const tree = looksRunning(dir);
    try {
      chmodSync(dir, mode);
      const said = mode.toString(8).padStart(4, "0");
      assert.throws(() => Client.fromConnectionFile(tree.file), forbidden(dir, said, "group or others"));
      assert.throws(() => new Client({ runtimeDir: dir }), forbidden(dir, said));
      chmodSync(dir, 0o700); // the user's own again: trusted
      const c = Client.fromConnectionFile(tree.file);
      await c.close();
    } finally {
      tree.release();
    }
  }
});

test("a runtime dir that is a symbolic link is refused", () => {
  const dir = scratch();
  const tree = looksRunning(dir);
  try {
    const link = `${dir}-link`;
    symlinkSync(dir, link);
    try {
      assert.throws(() => Client.fromConnectionFile(join(link, "tree.json")), forbidden(link, "symbolic link"));
      assert.throws(() => new Client({ runtimeDir: link }), forbidden(link, "symbolic link"));
    } finally {
      unlinkSync(link);
    }
  } finally {
    tree.release();
  }
});

test("a FIFO named lock is refused at once (it hung the client's open)", () => {
  const dir = scratch();
  const file = join(dir, "tree.json");
  writeFileSync(file, JSON.stringify({ moorage: "ready", runtime_dir: dir, endpoints: {} }));
  assert.equal(spawnSync("mkfifo", [join(dir, "lock")]).status, 0);
  // (in a process of its own, with a deadline: a blocking open never returns to this one)
  const script = `import("${new URL("../src/client.js", import.meta.url).href}").then(({ Client }) => {
    try { Client.fromConnectionFile(${JSON.stringify(file)}); console.log("made"); }
    catch (e) { console.log(e?.error?.name, e?.error?.message); }
  });`;
  const out = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", timeout: 30_000 });
  assert.equal(out.signal, null, "the client hung on the FIFO");
  assert.match(out.stdout, /^forbidden .*lock.* a FIFO/, out.stderr);
});

test("a lock that is a symbolic link is refused", () => {
  const dir = scratch();
  const tree = looksRunning(dir);
  try {
    renameSync(join(dir, "lock"), join(dir, "held")); // (still flocked: looks alive through the link)
    symlinkSync(join(dir, "held"), join(dir, "lock"));
    assert.throws(() => Client.fromConnectionFile(tree.file), forbidden(join(dir, "lock"), "symbolic link"));
  } finally {
    tree.release();
  }
});

test("a runtime dir or a lock of another user's is refused", asRoot, () => {
  const dir = scratch();
  const tree = looksRunning(dir);
  try {
    chownSync(join(dir, "lock"), NOBODY, NOBODY);
    assert.throws(() => Client.fromConnectionFile(tree.file), forbidden(join(dir, "lock"), `uid ${NOBODY}`));
    chownSync(dir, NOBODY, NOBODY);
    chmodSync(dir, 0o755);
    assert.throws(() => Client.fromConnectionFile(tree.file), forbidden(dir, `uid ${NOBODY}`, "0755"));
    assert.throws(() => new Client({ runtimeDir: dir }), forbidden(dir, `uid ${NOBODY}`));
  } finally {
    tree.release();
  }
});

test("moorage's own folder above the instance, of another user's, is refused", asRoot, () => {
  const xdg = scratch();
  const ours = join(xdg, "moorage");
  mkdirSync(join(ours, "sq"), { recursive: true, mode: 0o700 });
  const tree = looksRunning(join(ours, "sq"));
  const before = process.env.XDG_RUNTIME_DIR;
  try {
    chownSync(ours, NOBODY, NOBODY);
    process.env.XDG_RUNTIME_DIR = xdg;
    assert.throws(() => new Client({ instance: "sq" }), forbidden(ours, `uid ${NOBODY}`));
  } finally {
    if (before === undefined) delete process.env.XDG_RUNTIME_DIR;
    else process.env.XDG_RUNTIME_DIR = before;
    tree.release();
  }
});
