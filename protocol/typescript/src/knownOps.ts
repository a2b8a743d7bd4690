/**
 * The ops the default tree's actors declare idempotent (protocol/schema/ops.json): what a
 * client knows of an actor's ops before that actor's sys.info has told it (PROTOCOL.md
 * section 10). Once it has, the actor's own table replaces this one for that actor.
 *
 * Generated from the actors' @op declarations by `python -m
 * moorage.protocol.schema.generate`; do not edit.
 */
export const SCHEMA_IDEMPOTENT: ReadonlySet<string> = new Set([
  "fs.list",
  "fs.query",
  "fs.read",
  "fs.since",
  "fs.stat",
  "fs.stats",
  "fs.sync",
  "fs.watch",
  "metrics.alerts",
  "metrics.prometheus",
  "metrics.query",
  "metrics.slo",
  "parse.close",
  "parse.feed",
  "parse.list",
  "parse.open",
  "parse.stats",
  "pty.list",
  "replay",
  "resource.level",
  "resource.status",
  "sup.config.get",
  "sup.config.set",
  "sup.endpoints",
  "sup.orphan_exit",
  "sup.shed",
  "sup.status",
  "sys.config",
  "sys.heartbeat",
  "sys.hello",
  "sys.info",
  "sys.ping",
  "sys.pressure",
  "term.ack",
  "term.list",
  "term.scrollback",
]);
