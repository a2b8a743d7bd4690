/**
 * A pinned request (PROTOCOL.md sections 4 and 10): the same frames with the header's `ep`,
 * byte for byte as the reference encoder writes it.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import * as env from "../src/envelope.js";
import { hex, unhex } from "./json.js";

const SID = "4242-1f2e3d4c5b6a";
const EP = "5eed0f1ce0ffee00";

test("a pinned request is the same frames with `ep` last in the header, byte for byte as envelope.py's pin_request", () => {
  const frames = env.encodeRequest(7, SID, "fake.held", { n: 1 }, 1767225600123, [new TextEncoder().encode("att")]);
  assert.deepStrictEqual(env.pinRequest(frames, EP).map(hex), [
    "4d4f4f5231",
    "85a2696407a3736964b1343234322d316632653364346335623661a26f70a966616b652e68656c64ab646561646c696e655f6d73cf0000019b76daa87ba26570b035656564306631636530666665653030",
    "81a16e01",
    "617474",
  ]);
  const bare = env.pinRequest(env.encodeRequest(300, SID, "fake.effect"), EP);
  assert.deepStrictEqual(bare.map(hex), [
    "4d4f4f5231",
    "84a26964cd012ca3736964b1343234322d316632653364346335623661a26f70ab66616b652e656666656374a26570b035656564306631636530666665653030",
    "c0",
  ]);
  const r = env.decodeRequest(bare);
  assert.deepStrictEqual([r.id, r.sid, r.op, r.deadlineMs, r.epoch], [300, SID, "fake.effect", null, EP]);
  assert.equal(env.decodeRequest(env.encodeRequest(300, SID, "fake.effect")).epoch, null);
  const notStr = [env.TAG, unhex("84a26964cd012ca3736964b1343234322d316632653364346335623661a26f70ab66616b652e656666656374a2657001"), unhex("c0")];
  assert.throws(() => env.decodeRequest(notStr), (e: unknown) => e instanceof Error && /ep must be a string/.test(e.message));
});
