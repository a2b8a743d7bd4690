// xterm.js (@xterm/headless) on the inputs perf/peers/xterm_headless.py writes, timed here.
//
//   node bench.js --repeat N --chunk BYTES FILE...
//
// For each file, one JSON line: {file, version, full: [s...], alone: [s...], oscs_full,
// oscs_alone}. `full` is the headless Terminal (120 x 40, scrollback 1000) with the OSC 633,
// 133 and 7 handlers VS Code's shell integration registers (each only counts), every chunk
// given to write() and the clock stopped in the callback of a last, empty write: what VS Code's
// pty host pays per byte. `alone` is the same terminal's EscapeSequenceParser with the same
// handlers and its UTF-8 decoder, fed synchronously: the package exports neither class, so
// fresh instances are made from the constructors of the terminal's own (no print, CSI or
// execute handlers: the parser's cost, no screen). One untimed run of each warms the JIT.
"use strict";
const fs = require("fs");
const { Terminal } = require("@xterm/headless");
const { version } = require("@xterm/headless/package.json");

const MARKER_OSCS = [633, 133, 7];

function args(argv) {
  const out = { repeat: 5, chunk: 65536, files: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--repeat") out.repeat = Number(argv[++i]);
    else if (argv[i] === "--chunk") out.chunk = Number(argv[++i]);
    else out.files.push(argv[i]);
  }
  return out;
}

function chunksOf(data, size) {
  const chunks = [];
  for (let i = 0; i < data.length; i += size) chunks.push(data.subarray(i, i + size));
  return chunks;
}

function full(chunks) {
  return new Promise((resolve) => {
    const term = new Terminal({ allowProposedApi: true, cols: 120, rows: 40, scrollback: 1000 });
    let oscs = 0;
    for (const id of MARKER_OSCS) term.parser.registerOscHandler(id, () => { oscs++; return true; });
    const t0 = process.hrtime.bigint();
    for (const c of chunks) term.write(c);
    term.write(new Uint8Array(0), () => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      term.dispose();
      resolve([seconds, oscs]);
    });
  });
}

function alone(chunks, size) {
  const host = new Terminal({ allowProposedApi: true });
  const inner = host._core._inputHandler;
  const parser = new inner._parser.constructor();
  const decoder = new inner._utf8Decoder.constructor();
  host.dispose();
  let oscs = 0;
  for (const id of MARKER_OSCS) {
    parser.registerOscHandler(id, { start() {}, put() {}, end() { oscs++; return true; } });
  }
  const buffer = new Uint32Array(size);
  const t0 = process.hrtime.bigint();
  for (const c of chunks) parser.parse(buffer, decoder.decode(c, buffer));
  return [Number(process.hrtime.bigint() - t0) / 1e9, oscs];
}

async function main() {
  const { repeat, chunk, files } = args(process.argv.slice(2));
  for (const file of files) {
    const chunks = chunksOf(fs.readFileSync(file), chunk);
    await full(chunks);
    alone(chunks, chunk);
    const result = { file, version, full: [], alone: [], oscs_full: 0, oscs_alone: 0 };
    for (let r = 0; r < repeat; r++) {
      const [sf, nf] = await full(chunks);
      const [sa, na] = alone(chunks, chunk);
      result.full.push(sf);
      result.alone.push(sa);
      result.oscs_full = nf;
      result.oscs_alone = na;
    }
    process.stdout.write(JSON.stringify(result) + "\n");
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
