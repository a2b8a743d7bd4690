// node-pty (VS Code's pty host library) with a warm bash, driven by perf/peers/node_pty.py.
//
//   node bench.js --home DIR --prompt STRING
//
// Spawns `bash --init-file DIR/.bashrc -i` on a pty (80 x 24, TERM=xterm, HOME=DIR: a bare
// bash, no shell integration; Debian's bash reads /etc/bash.bashrc first, then DIR/.bashrc,
// which sets PS1 to the prompt given), waits for its first prompt, prints one JSON line
// {ready, version, pid}, then answers each command read on stdin with one JSON line:
//
//   echo N       N round trips of `echo test`: the command written, the clock stopped in the
//                onData callback that brings its output ("test" on a line of its own), where
//                moorage's term.exec answers (at the command's end, before the prompt); the
//                prompt after it awaited, off the clock, before the next: {echo_us: [...]}
//   cat PATH N   `cat PATH` written (a file of N bytes of "Q"): seconds until the output
//                reached the file's last byte in onData (the same clock as moorage's P4),
//                then the prompt awaited: {cat_s, boundary}. As P4, the bytes are not
//                scanned: the first "Q" gives the file's offset in the output (the prompt, the
//                command and its path hold none), then only the chunks' lengths are added up.
//                `boundary`: the character before that end is a "Q" and the one after it is
//                not, so the lengths met the file's end (looked at once, not per byte).
//   quit         (or end of file on stdin) the pty killed, the process gone
//
// Data arrives as node-pty gives it by default (UTF-8 decoded strings, no flow control), as a
// pty host that does nothing with it but look for what it waits for.
"use strict";
const path = require("path");
const readline = require("readline");
const pty = require("node-pty");
const { version } = require("node-pty/package.json");

function args(argv) {
  const out = { home: null, prompt: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--home") out.home = argv[++i];
    else if (argv[i] === "--prompt") out.prompt = argv[++i];
  }
  if (!out.home || !out.prompt) throw new Error("usage: bench.js --home DIR --prompt STRING");
  return out;
}

const opts = args(process.argv.slice(2));
const PROMPT = opts.prompt;
const term = pty.spawn("/bin/bash", ["--init-file", path.join(opts.home, ".bashrc"), "-i"], {
  name: "xterm",
  cols: 80,
  rows: 24,
  cwd: opts.home,
  env: { HOME: opts.home, PATH: process.env.PATH || "/usr/bin:/bin", TERM: "xterm" },
});

let quitting = false; // an exit of bash's that we asked for

// What the current step waits for: a function of each chunk, returning true when done.
let waiter = null;
term.onData((data) => {
  if (waiter !== null && waiter(data)) waiter = null;
});
term.onExit(({ exitCode, signal }) => {
  if (!quitting) {
    process.stderr.write(`bash exited (code ${exitCode}, signal ${signal})\n`);
    process.exit(2);
  }
});

function until(test) {
  return new Promise((resolve) => {
    waiter = (data) => {
      if (!test(data)) return false;
      resolve();
      return true;
    };
  });
}

// The prompt, after `after` in the output (or anywhere when after is null); `found`, when
// given, is called in the onData callback that brings `after`.
function promptAfter(after, found = null) {
  let buf = "";
  let from = -1;
  return (data) => {
    buf += data;
    if (from < 0) {
      if (after === null) from = 0;
      else {
        const i = Math.max(buf.indexOf("\n" + after), buf.indexOf("\r" + after));
        if (i < 0) return false;
        from = i + after.length + 1;
        if (found !== null) found();
      }
    }
    return buf.indexOf(PROMPT, from) >= 0;
  };
}

async function echo(n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    let t1 = null;
    const done = until(promptAfter("test\r\n", () => (t1 = process.hrtime.bigint())));
    const t0 = process.hrtime.bigint();
    term.write("echo test\r");
    await done;
    out.push(Number(t1 - t0) / 1e3);
  }
  return { echo_us: out };
}

async function cat(file, size) {
  let seen = 0; // characters of output so far (one a byte: the output is ASCII)
  let start = -1; // where the file's first byte is in the output
  let t1 = null;
  let boundary = null; // the file's end fell between a "Q" and something else
  let after = false; // the character after the file's end is the next chunk's first
  const prompt = promptAfter(null);
  const done = until((data) => {
    if (t1 === null) {
      const base = seen;
      seen += data.length;
      if (start < 0) {
        const i = data.indexOf("Q");
        if (i < 0) return false;
        start = base + i;
      }
      if (seen < start + size) return false;
      t1 = process.hrtime.bigint();
      const end = start + size - base; // the file's end, in this chunk
      boundary = end > 0 && data[end - 1] === "Q";
      if (end < data.length) boundary = boundary && data[end] !== "Q";
      else after = true;
      return prompt(data.slice(end));
    }
    if (after && data.length > 0) {
      boundary = boundary && data[0] !== "Q";
      after = false;
    }
    return prompt(data);
  });
  const t0 = process.hrtime.bigint();
  term.write(`cat ${file}\r`);
  await done;
  return { cat_s: Number(t1 - t0) / 1e9, boundary };
}

function quit() {
  quitting = true;
  term.kill();
  process.exit(0);
}

async function main() {
  await until(promptAfter(null));
  console.log(JSON.stringify({ ready: true, version, pid: term.pid }));
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [cmd, a, b] = line.trim().split(" ");
    if (cmd === "echo") console.log(JSON.stringify(await echo(Number(a))));
    else if (cmd === "cat") console.log(JSON.stringify(await cat(a, Number(b))));
    else if (cmd === "quit") quit();
    else console.log(JSON.stringify({ error: `unknown command ${cmd}` }));
  }
  quit(); // end of file on stdin: the driver is done (or gone)
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  quitting = true;
  term.kill();
  process.exit(1);
});
