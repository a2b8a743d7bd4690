// What a VS Code extension host does with moorage, as a script an editor author can copy:
// adopt the tree if one runs (hold it beside the window that started it, or take it over when
// that window is gone; else start one, as an editor starts it beside itself), open a terminal
// session, run a command, stream its output, watch a folder.
//
//   node extension_host.mjs            MOORAGE_RUNTIME_DIR picks the tree (PROTOCOL.md section 2);
//                                      MOORAGE_BIN the `moorage` command used to start one.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { Client, MoorageError, adopt, runtimeDir } from "moorage-client";

const dir = runtimeDir();
const decoder = new TextDecoder();

/** The running tree's lifecycle (`{}`: a tree that has none); null when no tree answers. */
async function lifecycleOf(client) {
  try {
    const status = await client.call("supervisor", "sup.status", null, { timeout: 0.5 });
    return status.lifecycle ?? {};
  } catch (e) {
    if (e instanceof MoorageError) return null;
    throw e;
  }
}

/** Adopt the tree in `dir`, or start one there and wait until every actor answers. */
async function adoptOrStart(client) {
  const life = await lifecycleOf(client);
  if (life !== null) {
    if (life.state === "attached" || life.state === "orphaned") {
      // Held by another window (or by nobody, and stopping at the end of its grace): this
      // process holds it too from now on, so that the tree runs as long as one window does.
      const { lifecycle } = await adopt(client);
      const holders = lifecycle.holders?.length ?? 1;
      console.log(`adopted the tree in ${dir} (it was ${life.state}; ${holders} hold it now)`);
    } else {
      // Standalone: it follows no editor and runs until `moorage down`; adopting would make
      // it stop when this process does.
      console.log(`using the tree in ${dir} (it follows no editor)`);
    }
    return null;
  }
  const bin = process.env.MOORAGE_BIN ?? "moorage";
  // --parent: the tree follows this process (gone, it is orphaned for its grace, then
  // stops), as an editor's must
  const child = spawn(bin, ["--instance-dir", dir, "up", "--parent", String(process.pid)],
    { stdio: "ignore" });
  // A command that cannot run (no `moorage` on PATH): say what to set, and stop.
  const failed = await once(child, "spawn").then(() => null, (e) => e);
  if (failed !== null) {
    const why = failed.code ?? failed.message;
    console.error(process.env.MOORAGE_BIN === undefined
      ? `cannot start a tree: no \`moorage\` on PATH (${why}); set MOORAGE_BIN to the moorage command`
      : `cannot start a tree: MOORAGE_BIN=${bin} cannot be run (${why})`);
    await client.close();
    process.exit(1);
  }
  console.log(`started the tree in ${dir} (pid ${child.pid})`);
  for (const actor of ["supervisor", "watcher", "terminal"]) {
    for (;;) {
      try {
        await client.hello(actor);
        break;
      } catch (e) {
        if (!(e instanceof MoorageError)) throw e;
        if (child.exitCode !== null) throw new Error(`moorage up exited with ${child.exitCode}`);
      }
    }
  }
  return child;
}

const client = new Client({ runtimeDir: dir, timeout: 10, metricsName: "extension-host" });
const started = await adoptOrStart(client);
const folder = mkdtempSync(join(tmpdir(), "moorage-ext-"));
try {
  // A terminal session, its output stream (from seq 1: nothing missed), a command in it.
  const { session } = await client.call("terminal", "term.create", { cwd: folder, cols: 100, rows: 30 });
  console.log(`session ${session}`);
  const output = client.subscribe("terminal", [`term.out.${session}`], { fromSeq: 1 });
  const result = await client.call("terminal", "term.exec", { session, command: "echo hello from moorage" });
  console.log(`exit ${result.exit_code}: ${JSON.stringify(result.output)} (${result.mode}, ${result.duration_ms} ms)`);
  let text = "";
  for await (const ev of output) {
    if (ev.kind === "message") text += decoder.decode(ev.attachments[0]);
    else console.log(`stream: ${ev.kind}`); // a Loss or a Reset: say so, never hide it
    if (text.includes("hello from moorage\r\n")) break;
  }
  console.log(`streamed ${text.length} characters of output, the command's line among them`);
  output.close();

  // Watch a folder, change a file in it, see the event (a real inotify event, sequenced).
  const events = client.subscribe("watcher", ["fs.event"]);
  await events.untilLive(10);
  const watch = await client.call("watcher", "fs.watch", { path: folder, recursive: true });
  writeFileSync(join(folder, "notes.txt"), "a change\n");
  let seen = null;
  while (seen === null) {
    const ev = await events.next(10);
    if (ev === null) throw new Error("no file event within 10 s");
    if (ev.kind !== "message") continue;
    seen = ev.body.events.find((e) => e.path === join(folder, "notes.txt")) ?? null;
  }
  console.log(`watched: ${seen.kind} ${seen.type} ${seen.path}`);
  events.close();
  await client.call("watcher", "fs.unwatch", { watch: watch.watch });
  await client.call("terminal", "term.close", { session });
  await client.pushLatency();
  for (const row of client.latencyReport()) console.log(`latency ${row.actor}/${row.op}: n=${row.count} p50=${row.p50} us`);
} finally {
  rmSync(folder, { recursive: true, force: true });
  if (started !== null) {
    await client.call("supervisor", "sup.stop");
    await new Promise((resolve) => (started.exitCode !== null ? resolve() : started.once("exit", resolve)));
    console.log("stopped the tree it started");
  }
  await client.close();
}
console.log("ok");
