/**
 * The breaker (PROTOCOL.md section 11): a probe whose connection dropped under it gives its
 * place back, so its resend to the successor is let through instead of failing `circuit_open`
 * until the probe's lease runs out.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { CircuitBreaker } from "../src/recovery.js";

test("a probe whose connection dropped gives its place back to its resend", () => {
  const br = new CircuitBreaker(1, 1.0, 10, 1, 30);
  br.recordFailure(0);
  assert.ok(br.allow(1.0)); // the probe goes out; the actor dies under it
  assert.ok(!br.allow(1.005)); // one probe at a time
  br.giveBack();
  assert.ok(br.allow(1.01)); // its resend is the probe now
  assert.ok(!br.allow(1.02));
  br.recordSuccess();
  assert.equal(br.current(1.1), "closed");
});
