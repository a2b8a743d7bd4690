/**
 * perf/clients.py's TypeScript side: sys.ping through this client beside a raw zeromq DEALER
 * sending the same frames to a bare echo, in one process, alternating, so both see the same
 * machine. Prints one JSON line: {client: {p50, p99, rate}, raw: {p50, p99, rate}} (µs, /s).
 *
 *   node dist/bench/ping.js <runtime dir> <actor> <raw echo endpoint> <n>
 */
import { Dealer } from "zeromq";

import { Client } from "../src/client.js";
import { encodeRequest } from "../src/envelope.js";

const [dir, actor, rawEndpoint, nArg] = process.argv.slice(2);
const n = Number(nArg ?? 10000);
const WINDOW = 256;

function pct(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.round((p / 100) * s.length + 0.5) - 1))];
}

const raw = new Dealer({ linger: 0 });
raw.connect(rawEndpoint);
const frames = encodeRequest(1, "raw-echo-0123456789", "sys.ping", null, Date.now() + 5000);
async function rawTrip(): Promise<void> {
  await raw.send(frames);
  await raw.receive();
}

// The frames a client sends (a new id and a deadline each) straight to the actor: no client code.
const bare = new Dealer({ linger: 0 });
bare.connect(`ipc://${dir}/${actor}.rpc`);
let bareId = 0;
function bareFrames(): ReturnType<typeof encodeRequest> {
  bareId++;
  return encodeRequest(bareId, "bare-dealer-0123456789", "sys.ping", null, Date.now() + 10000);
}
async function bareTrip(frames = bareFrames()): Promise<void> {
  await bare.send(frames);
  await bare.receive();
}

const client = new Client({ runtimeDir: dir, timeout: 10 });
for (let i = 0; i < 2000; i++) {
  await rawTrip();
  await client.call(actor, "sys.ping");
  await bareTrip();
}
const ours: number[] = [];
const limit: number[] = [];
const direct: number[] = [];
for (let i = 0; i < n; i++) {
  let t0 = performance.now();
  await rawTrip();
  limit.push((performance.now() - t0) * 1000);
  t0 = performance.now();
  await client.call(actor, "sys.ping");
  ours.push((performance.now() - t0) * 1000);
}
// The actor's own share, in a block of its own (a third round trip between the two compared
// slows whichever comes after it), alternated with the raw echo as the client was.
const limitBeside: number[] = [];
for (let i = 0; i < n; i++) {
  let t0 = performance.now();
  await rawTrip();
  limitBeside.push((performance.now() - t0) * 1000);
  const frames = bareFrames(); // (made before the clock: the echo's frames are made once)
  t0 = performance.now();
  await bareTrip(frames);
  direct.push((performance.now() - t0) * 1000);
}

async function rawPipelined(count: number): Promise<number> {
  const t0 = performance.now();
  let got = 0;
  const reader = (async () => {
    while (got < count) {
      await raw.receive();
      got++;
    }
  })();
  for (let sent = 0; sent < count; sent++) {
    while (sent - got >= WINDOW) await new Promise((r) => setImmediate(r));
    await raw.send(frames);
  }
  await reader;
  return count / ((performance.now() - t0) / 1000);
}

async function clientPipelined(count: number): Promise<number> {
  const t0 = performance.now();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      next++;
      await client.call(actor, "sys.ping");
    }
  };
  await Promise.all(Array.from({ length: WINDOW }, worker));
  return count / ((performance.now() - t0) / 1000);
}

const rates = { client: [] as number[], raw: [] as number[] };
for (let i = 0; i < 3; i++) {
  rates.raw.push(await rawPipelined(n * 2));
  rates.client.push(await clientPipelined(n * 2));
}
console.log(JSON.stringify({
  client: { p50: pct(ours, 50), p99: pct(ours, 99), rate: Math.max(...rates.client) },
  raw: { p50: pct(limit, 50), p99: pct(limit, 99), rate: Math.max(...rates.raw) },
  actor_direct: { p50: pct(direct, 50), p99: pct(direct, 99), raw_p50: pct(limitBeside, 50) },
}));
raw.close();
bare.close();
await client.close();
