"""What the resource actor itself does while the level is critical: pure decisions.

Shedding inside actors (caches, idle sessions, refusing new work) is each actor's own hook;
what is left to the resource actor is the process that no actor owns the memory of: the
largest runaway process inside the tree that is not an actor, supervisor or zygote (a
shell's child, or any process an actor started). In one critical episode:

  every critical sample    streak + 1
  a candidate not alerted  alert "warn" (pid, name, owner, memory) before anything is done
  streak >= kill_after     "kill" the candidate (it was alerted at the latest in this same
                           sample); the streak starts again, so the next kill needs the
                           critical level to persist as long again
  no candidate             alert "no_runaway" once: the memory is the actors' own
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
frees nothing and destroys a user's session state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from moorage.actors.resource.levels import CRITICAL, LEVELS


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
        self.streak = 0  # critical samples since the episode began or the last kill
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
        self.streak += 1
        self.episode += 1
        out: list[Decision] = []
        if candidate is None:
            if not self._told_no_runaway:
                self._told_no_runaway = True
                out.append(Decision("no_runaway", None, self.streak))
        else:
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
