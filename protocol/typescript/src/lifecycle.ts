/**
 * Life beside an editor (PROTOCOL.md section 13, `sys.hello` with `adopt`): an editor window that
 * finds a tree running (another window's, or one orphaned by an editor that died) holds it too,
 * so that the tree stops only when the last window holding it is gone.
 */
import type { Client } from "./client.js";

/** A root supervisor's `lifecycle`, in sup.status and in sys.hello's answer to an adopt. */
export interface Lifecycle {
  state: "standalone" | "attached" | "orphaned";
  /** The holder that took the tree last (orphaned: the one whose exit left none). */
  parent: number | null;
  grace_s: number;
  /** Orphaned: seconds until the tree stops unless adopted. */
  stops_in_s?: number;
  /** Every pid holding the tree, in the order each took it, when more than one does. */
  holders?: number[];
}

/** sys.hello's answer to an adopt. */
export interface Adopted {
  actor: string;
  ep: string;
  proto: number;
  version: string;
  pid: number;
  max_msg: number;
  lifecycle: Lifecycle;
}

/**
 * Say `sys.hello {adopt: true}` to the root supervisor through `client`: `parent` (default: this
 * process) holds the tree from now on, beside whoever held it already, as the editor that
 * started it does: the tree is orphaned only when the last of them has exited, and an orphaned
 * tree cancels its shutdown. Saying it again adds no holder. The hello's reply, whose
 * `lifecycle` says the state the tree is now in.
 */
export async function adopt(client: Client, parent?: number): Promise<Adopted> {
  return (await client.call("supervisor", "sys.hello", {
    client: `adopt ${process.pid}`,
    adopt: true,
    parent: parent ?? process.pid,
  })) as unknown as Adopted;
}
