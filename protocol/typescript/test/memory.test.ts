/**
 * A subscription holds what it has not handed out, not what it has: a `for await` over a long
 * gapless stream keeps its memory flat. (Each `next()` raced one long-lived wake-up promise,
 * which kept every race's result, so every message's bytes, reachable: 200 MiB after 100,000
 * messages of 2 KiB.) Measured in a Node of its own, after a forced collection, with a fake
 * actor in the same program that publishes only as fast as the consumer takes (no gap).
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { CLIENT_MODULE, ENVELOPE_MODULE, runNode, scratch } from "./fake_actor.js";

test("a for await over 30,000 messages of 2 KiB keeps no more than a few of them", async () => {
  const dir = scratch();
  const program = `
    import { XPublisher } from "zeromq";
    import { Client } from ${JSON.stringify(CLIENT_MODULE)};
    import { encodeStream, encodeWelcome } from ${JSON.stringify(ENVELOPE_MODULE)};
    const E = "feedfacefeedface";
    const pub = new XPublisher({ linger: 0 });
    await pub.bind("ipc://${dir}/alpha.pub");
    const c = new Client({ runtimeDir: ${JSON.stringify(dir)}, learnOps: false });
    const sub = c.subscribe("alpha", ["t"]);
    await pub.receive(); // (the subscription)
    await pub.send(encodeWelcome("t", 0, E));
    const blob = new Uint8Array(2048).fill(120);
    let taken = 0;
    const publishing = (async () => {
      for (let seq = 1; seq <= 30000; seq++) {
        while (seq - taken > 200) await new Promise((r) => setImmediate(r));
        await pub.send(encodeStream("t", seq, E, { n: seq }, [blob]));
      }
    })();
    const held = () => { global.gc(); const m = process.memoryUsage(); return m.external + m.arrayBuffers; };
    let at5000 = 0;
    for await (const ev of sub) {
      if (ev.kind !== "message") throw new Error("not a message: " + ev.kind);
      taken = ev.seq;
      if (taken === 5000) at5000 = held();
      if (taken === 30000) break;
    }
    await publishing;
    const growth = held() - at5000;
    await c.close();
    pub.close();
    console.log(JSON.stringify({ taken, growthMiB: Math.round(growth / 1048576) }));
  `;
  const { code, out } = await runNode(program, 120, ["--expose-gc"]);
  assert.equal(code, 0, out);
  const got = JSON.parse(out.trim());
  assert.equal(got.taken, 30000);
  // (25,000 messages held would be over 48 MiB)
  assert.ok(got.growthMiB < 8, out);
});
