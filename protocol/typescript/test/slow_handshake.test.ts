/**
 * A remote call that ends with no reply while its connection's CURVE handshake is still under
 * way (a slow link: some three round trips, over 200 ms each way longer than a replay page's
 * 1 s) leaves that connection to get in: the call keeps its error (`timeout`, or
 * `outcome_unknown`: its request is still queued, and goes once the handshake completes), and
 * the next call is answered on it. Closing the socket to say "nothing was delivered" threw the
 * handshake away: every call then began a new one, no faster, and on such a link none was ever
 * answered.
 *
 * A CURVE server on loopback tcp, reached through a relay that holds each new connection
 * (nothing passes either way) until the test lets the ones open now through: a link whose
 * handshake takes as long as the test says, with no clock in it.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { type Server, type Socket, connect, createServer } from "node:net";
import { join } from "node:path";
import { test } from "node:test";

import { Router, curveKeyPair } from "zeromq";

import { Client } from "../src/client.js";
import { decodeRequest, encodeReply } from "../src/envelope.js";
import { MoorageError } from "../src/errors.js";
import { scratch, settled, within } from "./fake_actor.js";

const A = "aaaaaaaaaaaaaaaa";

/** A tcp relay to `port` on which a new connection is accepted and then gets nowhere (its
 * bytes left unread, the far end not even opened) until `release`. */
class HeldRelay {
  private readonly server: Server;
  private held: Socket[] = [];
  private readonly open = new Set<Socket>();
  private onHeld: (() => void) | null = null;

  constructor(private readonly port: number) {
    this.server = createServer({ pauseOnConnect: true }, (sock) => {
      this.track(sock);
      this.held.push(sock);
      this.onHeld?.();
    });
  }

  private track(sock: Socket): void {
    this.open.add(sock);
    sock.on("error", () => sock.destroy()); // (either end gone: the other goes too)
    sock.on("close", () => this.open.delete(sock));
  }

  /** The port the relay listens on (loopback). */
  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    const address = this.server.address();
    assert.ok(address !== null && typeof address === "object");
    return address.port;
  }

  /** Until at least one connection is held. */
  async holding(): Promise<void> {
    if (this.held.length === 0) await new Promise<void>((resolve) => (this.onHeld = resolve));
    this.onHeld = null;
  }

  /** Let the connections held now through (those made later stay held); how many. */
  release(): number {
    const held = this.held;
    this.held = [];
    for (const sock of held) {
      const far = connect(this.port, "127.0.0.1");
      this.track(far);
      sock.on("close", () => far.destroy());
      far.on("close", () => sock.destroy());
      sock.pipe(far);
      far.pipe(sock);
    }
    return held.length;
  }

  close(): void {
    this.server.close();
    for (const sock of this.open) sock.destroy();
  }
}

test("a read that times out mid-handshake, and an effect, leave the connection to the next call", async () => {
  const server = curveKeyPair();
  const router = new Router({ linger: 0, curveServer: true, curveSecretKey: server.secretKey });
  await router.bind("tcp://127.0.0.1:*");
  const serving = (async () => { // every request answered "pong"
    for (;;) {
      const [rid, ...frames] = await router.receive();
      await router.send([rid, ...encodeReply(decodeRequest(frames).id, A, "pong")]);
    }
  })().catch(() => undefined); // (until the router is closed)
  const relay = new HeldRelay(Number(new URL(router.lastEndpoint!).port));
  const rpc = `tcp://127.0.0.1:${await relay.listen()}`;
  const file = join(scratch(), "tree.json");
  writeFileSync(file, JSON.stringify({ runtime_dir: "/nonexistent", remote: {
    transport: "tcp", curve: true, server_key: server.publicKey, endpoints: { alpha: { rpc, pub: rpc } } } }));
  const c = new Client({ remote: { connectionFile: file, keys: curveKeyPair() }, learnOps: false, timeout: 10 });
  try {
    const failure = async (op: string, idempotent: boolean): Promise<MoorageError> => {
      const e = await settled(c.call("alpha", op, null, { idempotent, timeout: 1 }));
      assert.ok(e instanceof MoorageError, String(e));
      return e;
    };
    let e = await failure("sys.ping", true); // (as a replay page after a reset)
    assert.equal(e.error.name, "timeout", e.message);
    assert.ok(!e.error.message.includes("nothing was delivered"), e.message);
    // its request is still queued on a connection that may yet get in: not "not run"
    e = await failure("fs.write", false);
    assert.equal(e.error.name, "outcome_unknown", e.message);
    await within(relay.holding(), 10, "the client's connection reaching the relay");
    assert.equal(relay.release(), 1); // that connection gets in now
    // answered on it; a connection made anew would be held for good (timeout)
    assert.equal(await c.call("alpha", "sys.ping", null, { timeout: 30 }), "pong");
  } finally {
    await c.close();
    relay.close();
    router.close();
    await serving;
  }
});
