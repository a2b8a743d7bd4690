/**
 * A fake actor for the client's tests, over real sockets in this process: its ROUTER answers
 * requests as the test says, its XPUB publishes; and what the tests wait with.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { after } from "node:test";

import { Router, XPublisher } from "zeromq";

import { now } from "../src/calls.js";
import { type Request, decodeRequest } from "../src/envelope.js";

const made: string[] = [];
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** A directory of the test's own (short: an ipc path must fit in 107 bytes). */
export function scratch(): string {
  const dir = mkdtempSync("/tmp/mtc-");
  made.push(dir);
  return dir;
}

/** `p`, or a failure if it has not settled within `seconds`. */
export async function within<T>(p: Promise<T>, seconds: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${seconds} s`)), seconds * 1000)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Until `done()` holds, looked at on each turn of the event loop; a failure past `seconds`. */
export async function until(done: () => boolean, seconds: number, what: string): Promise<void> {
  const end = now() + seconds;
  while (!done()) {
    if (now() >= end) throw new Error(`${what}: not within ${seconds} s`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** A settled promise's error (null when it resolved). */
export function settled(p: Promise<unknown>): Promise<unknown> {
  return p.then(() => null, (e: unknown) => e);
}

/** An actor `name` in `dir`: its rpc ROUTER and pub XPUB, bound. */
export class FakeActor {
  readonly rpc = new Router({ linger: 0 });
  readonly pub = new XPublisher({ linger: 0 });
  /** Every request `serve` took, in order. */
  readonly requests: Request[] = [];

  private constructor(readonly dir: string, readonly name: string) {}

  static async bind(dir: string, name = "alpha"): Promise<FakeActor> {
    const actor = new FakeActor(dir, name);
    await actor.rpc.bind(`ipc://${dir}/${name}.rpc`);
    await actor.pub.bind(`ipc://${dir}/${name}.pub`);
    return actor;
  }

  /** The next request. */
  async take(): Promise<[Buffer, Request]> {
    const [rid, ...frames] = await this.rpc.receive();
    const req = decodeRequest(frames);
    this.requests.push(req);
    return [rid, req];
  }

  /** Answer every request with `reply(req)` (frames after the routing id; null: left
   * unanswered) until the actor is closed. */
  serve(reply: (req: Request) => Uint8Array[] | null): void {
    void (async () => {
      for (;;) {
        let got: [Buffer, Request];
        try {
          got = await this.take();
        } catch {
          return; // (closed)
        }
        const frames = reply(got[1]);
        if (frames !== null) await this.rpc.send([got[0], ...frames]).catch(() => undefined);
      }
    })();
  }

  close(): void {
    this.rpc.close();
    this.pub.close();
  }
}

/** A Node program (an ES module's text) run to its end: its exit code, or null when it was
 * still running `seconds` later (then killed), and what it printed. */
export function runNode(program: string, seconds: number, flags: readonly string[] = []): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, [...flags, "--input-type=module", "-e", program], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), seconds * 1000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** The built client's entry point, for a program `runNode` runs. */
export const CLIENT_MODULE = new URL("../src/index.js", import.meta.url).href;
/** The built envelope module (a program's own fake publisher packs its messages with it). */
export const ENVELOPE_MODULE = new URL("../src/envelope.js", import.meta.url).href;
