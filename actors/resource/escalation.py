"""What the resource actor itself does while the level is critical: pure decisions.

Shedding inside actors (caches, idle sessions, refusing new work) is each actor's own hook;
what is left to the resource actor is the process that no actor owns the memory of: the
largest runaway process inside the tree that is not an actor, supervisor or zygote (a
shell's child, or any process an actor started). In one critical episode:

  a critical sample with  streak + 1
    a candidate
  a candidate not alerted  alert "warn" (pid, name, owner, memory) before anything is done
  streak >= kill_after     "kill" the candidate (it was alerted at the latest in this same
                           sample); the streak starts again, so the next kill needs the
                           critical level to persist as long again
  no candidate             alert "no_runaway" once: the memory is the actors' own; the
                           streak starts again (a kill needs `kill_after` critical samples
                           in a row that each found a candidate)
  persist_after samples    alert "persisting" once; `Shedder` then asks the supervisors to
                           stop the non-essential actors gracefully (`sup.shed`)
Leaving critical ends the episode (its counts start again); what was alerted is forgotten
only after `forget_after` samples in a row under critical (3): a pressure wavering at the
threshold (80, 81, 80...) would otherwise repeat its alerts at every return.

Shedding has its own hysteresis (`Shedder`): the actors stopped come back only once the
held level has stayed at or below `restore_level` (default moderate) for `restore_after`
samples in a row. Bringing them back costs memory again: coming back at the first quiet
sample would be a flap of whole processes.

Decisions are made on the level of each sample's own pressure (its raw level), not on the
held level: hysteresis keeps the level critical for a few samples after a kill has freed the
memory, and those samples must not kill the next process. A kill needs the pressure itself
to stay at 81 or above.

A candidate must hold at least `min_bytes` (a share of the budget): killing a 4 MB shell
frees nothing and destroys a user's session state. And killing it must be what ends the
critical level (`choose_runaway`): either the pressure without it falls under critical's
boundary, or the tree's descendants (the user's processes) hold most of its memory, so that
killing the largest of them, one after another, is what brings the tree back. Otherwise the
memory is the actors' own (a bloated actor's cache, say): a user's process killed then frees
a fraction of it, the tree stays critical, and the user has lost their work for nothing. The
largest descendant is then spared (`Choice.spared`, named in the "no_runaway" alert) and the
actors' own remedies do the work: each one sheds at the level it is told, and if critical
persists the non-essential actors are stopped (`Shedder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from moorage.actors.resource.levels import CRITICAL, LEVELS, raw_level


class Row(Protocol):
    pid: int
    role: str
    memory: int


@dataclass(frozen=True, slots=True)
class Decision:
    kind: str  # warn | kill | no_runaway | persisting
    pid: int | None = None
    streak: int = 0


def pick_runaway(rows: Iterable[Row], min_bytes: int) -> Row | None:
    """The non-actor process of the tree holding the most memory, if it holds enough."""
    best: Row | None = None
    for r in rows:
        if r.role == "descendant" and r.memory >= min_bytes and (
                best is None or r.memory > best.memory):
            best = r
    return best


@dataclass(frozen=True, slots=True)
class Choice:
    """What one sample says of the largest non-actor process (`choose_runaway`)."""

    candidate: Row | None  # the runaway whose kill would end the critical level
    spared: Row | None  # the largest one, not a candidate: killing it would not end it
    pressure_without: int | None  # the pressure had the largest one's memory been freed
    descendants_share: float  # of the tree's memory, held by non-actor processes (0..1)


def choose_runaway(rows: Sequence[Row], min_bytes: int,
                   pressure_without: Callable[[int], int]) -> Choice:
    """`pick_runaway`'s process, as a candidate only if killing it is what ends the
    critical level: the pressure without its memory (`pressure_without(bytes)`) is under
    critical's boundary, or the descendants hold more than half of the tree's memory (they,
    not the actors, put it over; the largest goes first, the next one after as long again).
    Otherwise it is `spared`: the memory is the actors' own."""
    total = sum(r.memory for r in rows)
    held = sum(r.memory for r in rows if r.role == "descendant")
    share = held / total if total > 0 else 0.0
    best = pick_runaway(rows, min_bytes)
    if best is None:
        return Choice(None, None, None, share)
    without = pressure_without(best.memory)
    if raw_level(without) < CRITICAL or 2 * held > total:
        return Choice(best, None, without, share)
    return Choice(None, best, without, share)


class Escalation:
    def __init__(self, *, kill_after: int = 2, persist_after: int = 10,
                 kill: bool = True, forget_after: int = 3) -> None:
        if kill_after < 1 or persist_after < 1 or forget_after < 1:
            raise ValueError("kill_after, persist_after and forget_after must be >= 1")
        self.kill_after = kill_after
        self.persist_after = persist_after
        self.kill = kill
        self.forget_after = forget_after
        self.below = 0  # samples in a row under critical
        self.streak = 0  # critical samples in a row with a candidate, since the last kill
        self.episode = 0  # critical samples in this episode
        self._alerted: int | None = None
        self._told_no_runaway = False
        self._told_persisting = False

    def feed(self, level: int, candidate: Row | None) -> list[Decision]:
        """`level`: the raw level of this sample's pressure (`levels.raw_level`)."""
        if level < CRITICAL:
            self.streak = self.episode = 0
            self.below += 1
            if self.below >= self.forget_after:
                self._alerted = None
                self._told_no_runaway = self._told_persisting = False
            return []
        self.below = 0
        self.episode += 1
        out: list[Decision] = []
        if candidate is None:
            self.streak = 0  # (a candidate found again needs kill_after samples of its own)
            if not self._told_no_runaway:
                self._told_no_runaway = True
                out.append(Decision("no_runaway", None, self.episode))
        else:
            self.streak += 1
            if candidate.pid != self._alerted:
                self._alerted = candidate.pid
                out.append(Decision("warn", candidate.pid, self.streak))
            if self.kill and self.streak >= self.kill_after:
                out.append(Decision("kill", candidate.pid, self.streak))
                self.streak = 0
                self._alerted = None
        if self.episode >= self.persist_after and not self._told_persisting:
            self._told_persisting = True
            out.append(Decision("persisting", None, self.episode))
        return out


class Shedder:
    """When to shed the non-essential actors (`shed`) and when to bring them back
    (`restore`). `shed` is what the tree is known to be in: the caller sets it once the
    supervisor has done it, and adopts it from `sup.status` after a restart."""

    def __init__(self, *, persist_after: int = 10, restore_after: int = 10,
                 restore_level: str = "moderate", enabled: bool = True) -> None:
        if persist_after < 1 or restore_after < 1:
            raise ValueError("persist_after and restore_after must be >= 1")
        if restore_level not in LEVELS[:CRITICAL]:
            raise ValueError(f"restore_level must be one of {LEVELS[:CRITICAL]}")
        self.persist_after = persist_after
        self.restore_after = restore_after
        self.restore_level = LEVELS.index(restore_level)
        self.enabled = enabled
        self.shed = False
        self.calm = 0  # samples in a row at or below restore_level while shed

    def feed(self, episode: int, level: int) -> str | None:
        """`episode`: critical samples in a row (Escalation.episode); `level`: the held
        level. Returns "shed", "restore" or None; asked again each sample until done."""
        if not self.shed:
            self.calm = 0
            return "shed" if self.enabled and episode >= self.persist_after else None
        self.calm = self.calm + 1 if level <= self.restore_level else 0
        return "restore" if self.calm >= self.restore_after else None
