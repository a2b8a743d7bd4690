"""The terminal actor (actor.py) and its parts; the pty keeper, a process of its own, in keeper/.

  actor          `TerminalActor`: the ops, the sessions, pressure
  session        one session: its output stream, its markers, its command (`SessionHost` is
                 what it needs of the actor)
  restore        the creation chain (seed 2.2) and what a (re)connected keeper's list means
  keeper_client  `KeeperClient`: the actor's side of the keeper link: requests, output, acks
  link           the link's frames and messages (both ends)
  parsehop       `ParserLink` and `ParseHop`: output to the parser actor and its markers back,
                 with the in-process fallback and raw output behind it
  scrollback     `Ring` (a session's scrollback) and `Scrollback` (the parse hop's bytes)
  execs          a `term.exec` as its session tracks it; cutting output without markers
  specs          what each session was created from (for a successor)
  shell/         the shell integration scripts (bash, zsh) and how a shell is launched
  keeper/        the pty keeper: actor.py (the process), ptys.py (reading, writing, reaping,
                 hanging up), spawn.py (posix_spawn on a new PTY)
"""
