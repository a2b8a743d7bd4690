"""The client side of the partition test (R9), run inside the client's network namespace:
`python -m tests.remote_partition CONNECTION_FILE CLIENT_KEYS RUNTIME_DIR IFACE CUT_S...`.

For each cut it starts the load over tcp (idempotent calls, non-idempotent calls, a stream
subscription), waits until each has been answered, downs IFACE (its end of the veth pair)
for CUT_S seconds, ups it again, and waits until a call is answered over the healed link.
The ground truth comes over ipc (unix sockets reach across network namespaces): how many
side effects the actor performed, and the stream's messages as published. One JSON object
per cut goes to stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from moorage.protocol import curve
from moorage.protocol.client import Client
from moorage.protocol.client._streams import Loss
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from moorage.protocol.remote import target_from_file

IDEMPOTENT_TIMEOUT_S = 25.0  # longer than the longest cut: answered after the heal
IDEMPOTENT_ATTEMPT_S = 4.0  # one attempt's wait, doubled per attempt that timed out
EFFECT_TIMEOUT_S = 1.0  # five of these time out well within a 10 s cut: the breaker opens
PUBLISH_EVERY_S = 0.02
TOPIC = "part"


class Load:
    """One thread calling one op over tcp until told to stop, every outcome counted."""

    def __init__(self, target: Any, op: str, timeout: float, attempt: float) -> None:
        self.client = Client(remote=target, timeout=timeout, attempt_timeout=attempt)
        self.op = op
        self.timeout = timeout
        self.outcomes: Counter[str] = Counter()
        self.answered_times: list[float] = []  # monotonic, each answer
        self.spanned = 0  # answered calls that started before the link came back
        self.breaker_states: Counter[str] = Counter()
        self.max_overrun = 0.0
        self.stop = False
        self.heal_at: float | None = None
        self.cut_at: float | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop:
            # the breaker as this call finds it (half_open: the cooldown passed, this probes)
            self.breaker_states[self.client.breaker_state("alpha").value] += 1
            started = time.monotonic()
            try:
                self.client.call("alpha", self.op, timeout=self.timeout)
                self.outcomes["ok"] += 1
                now = time.monotonic()
                self.answered_times.append(now)
                if self.heal_at is not None and started < self.heal_at < now:
                    self.spanned += 1
            except MoorageError as exc:
                self.outcomes[exc.error.name] += 1
                if exc.error.name == "circuit_open":  # never sent: wait as the breaker says
                    wait = min(0.1, (exc.error.retry_after_ms or 100) / 1000)
                    time.sleep(wait)  # sleep-ok: the breaker's retry_after, as a caller waits
            self.max_overrun = max(self.max_overrun,
                                   time.monotonic() - started - self.timeout)

    def answered_after(self, t: float) -> float | None:
        return next((x for x in self.answered_times if x > t), None)

    def close(self) -> None:
        self.thread.join(self.timeout + 10)
        self.client.close()


class Follower:
    """A stream subscription over tcp: what it delivered, in order, and what it said was lost."""

    def __init__(self, target: Any) -> None:
        self.client = Client(remote=target, timeout=10.0)
        self.sub = self.client.subscribe("beta", [TOPIC])
        self.seqs: list[int] = []
        self.lost: list[tuple[int, int]] = []
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop:
            ev = self.sub.next(timeout=0.2)
            if ev is None:
                self.sub.catch_up()
            elif isinstance(ev, StreamMessage) and not ev.welcome:
                self.seqs.append(ev.seq)
            elif isinstance(ev, Loss):
                self.lost.append((ev.first, ev.last))

    def covered(self, last: int) -> bool:
        return bool(self.seqs) and max(self.seqs) >= last

    def close(self) -> None:
        self.stop = True
        self.thread.join(10)
        self.client.close()


def link(iface: str, up: bool) -> None:
    subprocess.run(["ip", "link", "set", "dev", iface, "up" if up else "down"], check=True)


def wait_until(probe: Any, what: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > end:
            raise SystemExit(f"no {what} within {timeout} s")
        time.sleep(0.01)  # sleep-ok: polling facts the load threads record


def one_cut(target: Any, local: Client, iface: str, cut_s: float) -> dict[str, Any]:
    effects0 = local.call("alpha", "fake.count")["effects"]
    idem = Load(target, "fake.count", IDEMPOTENT_TIMEOUT_S, IDEMPOTENT_ATTEMPT_S)
    effect = Load(target, "fake.effect", EFFECT_TIMEOUT_S, EFFECT_TIMEOUT_S)
    follow = Follower(target)
    published: list[int] = []
    publishing = True

    def publish() -> None:
        while publishing:
            published.append(local.call("beta", "fake.publish",
                                        {"topic": TOPIC, "n": 1})["last_seq"])
            time.sleep(PUBLISH_EVERY_S)  # sleep-ok: the stream's pace

    for t in (idem, effect, follow):
        t.thread.start()
    wait_until(lambda: local.call("beta", "sys.info")["subscriptions"]["applied"] >= 1,
               "subscription", 20)
    pub_thread = threading.Thread(target=publish, daemon=True)
    pub_thread.start()
    wait_until(lambda: idem.outcomes["ok"] >= 3 and effect.outcomes["ok"] >= 3
               and len(follow.seqs) >= 3, "load answered before the cut", 20)
    cut_at = time.monotonic()
    link(iface, False)
    time.sleep(cut_s)  # sleep-ok: the length of the cut is what is tested
    link(iface, True)
    heal_at = time.monotonic()
    idem.heal_at = effect.heal_at = heal_at
    wait_until(lambda: idem.answered_after(heal_at) and effect.answered_after(heal_at),
               "answer after the heal", 30)
    healed = min(idem.answered_after(heal_at) or 1e18, effect.answered_after(heal_at) or 1e18)
    wait_until(lambda: published and follow.covered(published[-1]), "stream caught up", 20)
    publishing = False
    pub_thread.join(5)
    idem.stop = effect.stop = True
    idem.close()
    effect.close()
    last = published[-1]
    wait_until(lambda: follow.covered(last), "stream's last message", 20)
    follow.close()
    first = follow.seqs[0]
    effects = local.call("alpha", "fake.count")["effects"] - effects0
    ok, unknown = effect.outcomes["ok"], effect.outcomes["outcome_unknown"]
    expected = set(range(first, last + 1))
    lost = {s for a, b in follow.lost for s in range(a, b + 1)}
    return {
        "cut_s": cut_s,
        "idempotent": {"made": sum(idem.outcomes.values()), "answered": idem.outcomes["ok"],
                       "answered_across_cut": idem.spanned, "outcomes": dict(idem.outcomes),
                       "breaker": dict(idem.breaker_states)},
        "non_idempotent": {"made": sum(effect.outcomes.values()), "ok": ok,
                           "outcome_unknown": unknown, "outcomes": dict(effect.outcomes),
                           "breaker": dict(effect.breaker_states),
                           "effects_performed": effects,
                           "duplicates": max(0, effects - ok - unknown)},
        "stream": {"published": last - first + 1, "delivered": len(follow.seqs),
                   "duplicates": len(follow.seqs) - len(set(follow.seqs)),
                   "missing": len(expected - set(follow.seqs) - lost),
                   "reported_lost": len(lost)},
        "heal_s": round(healed - heal_at, 3),
        "cut_measured_s": round(heal_at - cut_at, 3),
        "max_overrun_s": round(max(idem.max_overrun, effect.max_overrun), 3),
    }


def main(argv: list[str]) -> int:
    conn_file, keys_dir, runtime_dir, iface, *cuts = argv
    tgt = target_from_file(conn_file, curve.load_pair(Path(keys_dir), curve.CLIENT))
    with Client(runtime_dir, timeout=10.0) as local:
        for cut in cuts:
            print(json.dumps(one_cut(tgt, local, iface, float(cut))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
