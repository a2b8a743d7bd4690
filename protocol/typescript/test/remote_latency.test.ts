/**
 * A remote client's latency (PROTOCOL.md section 2, "Remote"): with `metricsName` it pushes
 * to the connection file's `metrics.in` as a CURVE client (the socket options of its other
 * sockets, no send timeout), or is refused when it is made if the file names none. The pure
 * parts: the live side is tests/test_remote_ts_latency.py.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, test } from "node:test";

import { Client } from "../src/client.js";
import { remoteEndpointsOf } from "../src/endpoints.js";

const SERVER = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
const KEYS = { publicKey: "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID", secretKey: "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs" };

const made: string[] = []; // the connection files' folders, removed when the tests are done
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

function connectionFile(endpoints: Record<string, Record<string, string>>): string {
  const path = join(mkdtempSync(join(tmpdir(), "moorage-ts-")), "tree.json");
  made.push(dirname(path));
  writeFileSync(path, JSON.stringify({ runtime_dir: "/nonexistent", remote: {
    transport: "tcp", curve: true, endpoints, server_key: SERVER, heartbeat_ms: { ivl: 500, timeout: 1500, ttl: 1500 } } }));
  return path;
}

test("a remote client pushes to the file's metrics.in as a CURVE client, with no send timeout", () => {
  const file = connectionFile({
    alpha: { rpc: "tcp://0.0.0.0:7000", pub: "tcp://0.0.0.0:7001" },
    metrics: { rpc: "tcp://0.0.0.0:7002", pub: "tcp://0.0.0.0:7003", in: "tcp://0.0.0.0:7004" },
  });
  assert.equal(remoteEndpointsOf(file, KEYS).metricsIn(), "tcp://0.0.0.0:7004");
  const eps = remoteEndpointsOf(file, KEYS, "10.1.2.3");
  assert.equal(eps.metricsIn(), "tcp://10.1.2.3:7004");
  assert.deepStrictEqual(eps.socketOptions("in"), {
    curveServerKey: SERVER, curvePublicKey: KEYS.publicKey, curveSecretKey: KEYS.secretKey,
    heartbeatInterval: 500, heartbeatTimeout: 1500, heartbeatTimeToLive: 1500, handshakeInterval: 5000,
  });
  assert.equal(eps.socketOptions("rpc").sendTimeout, 0);
});

test("a remote client with metricsName is refused when it is made if the file names no metrics.in", async () => {
  const without = connectionFile({ alpha: { rpc: "tcp://127.0.0.1:7000", pub: "tcp://127.0.0.1:7001" } });
  assert.throws(() => new Client({ metricsName: "editor", remote: { connectionFile: without, keys: KEYS } }),
    /metricsName: the tree's connection file names no tcp endpoint for metrics\.in/);
  const c = new Client({ remote: { connectionFile: without, keys: KEYS } }); // without metricsName: no need of it
  await c.close();
});
