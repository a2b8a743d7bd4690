"""The watcher's parts: a cached file service, and watches that never lose an event in silence.

General layout (each module small, pure where it can be, no sockets anywhere here):

  confine    the configured roots: every path resolved, `..` and symlinks that lead outside
             refused, opened descriptors checked again (no check-then-open race)
  retry      errno classification (retry now / transient / permanent kind) and the seed 3.1
             retry policy as a loop-driven state machine, so back-off never blocks the actor
  cache      file contents keyed by (dev, ino, size, mtime_ns, ctime_ns), bounded by bytes
  files      fs.read / fs.write / fs.stat / fs.list on top of confine, retry and cache; the
             `reader` and `stat` seams let tests inject failures in-process
  listing    fs.list's walk in steps: the first entries on the loop, the rest on a worker,
             bounded by the entries it returns and the entries it looks at
  workers    the bounded pools the syscalls that may block run on (fsync, watch placement,
             walks, big listings, checkpoint writes), their results handed back to the loop
  mounts     which file system a path is on (pseudo ones are not watched)
  watches    what clients asked to watch: scopes, excludes, the minimal set of roots to observe
  observer   the watchdog observers (inotify or polling), the bounded hand-off to the loop, and
             the facts the health checks read (dead threads, overflow, ENOSPC, handler errors)
  guarded    watchdog's inotify classes subclassed to report overflow and ENOSPC, to skip
             directories no watch needs (excluded subtrees), to hand plain events over
             as raw tuples (no event objects, no observer dispatcher hop), and to hand each
             inotify read on at once (watchdog 7.1.1's reader waits a millisecond for more)
  coalesce   settle-window coalescing (add+delete = nothing unless it was told, delete+add =
             update, add+update = add)
  journal    the (instance, epoch, seq) clock, the bounded journal, and `since`
  pipeline   raw events -> coalesced, stat'ed, journaled, published events
  cookies    fs.sync and the health check: cookie files that come back through the pipeline
  snapshot   scandir walk, diff, the told-state index, the checkpoint file, the write-ahead log
  state      what outlives the process (watches, wal, lagging checkpoint) and the restart base
  resync     when to resync: merged reasons, back-off while they keep coming
  driving    the actor's loop side (a component): draining the observer, the losses it reports
             (ENOSPC: poll that subtree), the resync itself, cookies, health, liveness
  watch_ops  fs.watch / fs.unwatch / fs.since / fs.sync (a component)
  query      fs.query: files of a watched tree from the index, in slices, paged

The actor that wires them together is `actors.watcher.actor.WatcherActor` (with the file ops).
"""
