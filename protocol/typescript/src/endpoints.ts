/**
 * Where an instance's sockets are (PROTOCOL.md section 2): the runtime directory, and in it
 * the connection file `tree.json` when the tree wrote one (its `endpoints` win over the
 * fixed names).
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export const DEFAULT_INSTANCE = "default";

/** Section 2's table: a name wins over MOORAGE_RUNTIME_DIR, which wins over the default. */
export function runtimeDir(instance?: string | null, env: NodeJS.ProcessEnv = process.env): string {
  if ((instance === undefined || instance === null) && env.MOORAGE_RUNTIME_DIR) return env.MOORAGE_RUNTIME_DIR;
  const name = instance ?? DEFAULT_INSTANCE;
  if (name.includes("/") || name === "" || name === "." || name === "..") {
    throw new Error(`bad instance name ${JSON.stringify(name)}`);
  }
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, "moorage", name);
  const uid = typeof process.getuid === "function" ? process.getuid() : 0;
  return join(`/tmp/moorage-${uid}`, name);
}

export interface Endpoints {
  rpc(actor: string): string;
  pub(actor: string): string;
  metricsIn(): string;
}

/** The endpoints of the tree in `dir`: from `dir/tree.json` where it names them, else fixed paths. */
export function endpointsOf(dir: string, connectionFile: string = join(dir, "tree.json")): Endpoints {
  let named: Record<string, { rpc?: string; pub?: string }> = {};
  if (existsSync(connectionFile)) {
    try {
      const doc = JSON.parse(readFileSync(connectionFile, "utf8")) as { endpoints?: typeof named };
      if (doc && typeof doc.endpoints === "object" && doc.endpoints !== null) named = doc.endpoints;
    } catch {
      // Being rewritten, or not ours: the fixed paths still hold (section 2).
    }
  }
  return {
    rpc: (actor) => named[actor]?.rpc ?? `ipc://${dir}/${actor}.rpc`,
    pub: (actor) => named[actor]?.pub ?? `ipc://${dir}/${actor}.pub`,
    metricsIn: () => `ipc://${dir}/metrics.in`,
  };
}

/** The runtime directory a connection file names (`runtime_dir`), else the file's folder. */
export function runtimeDirOfConnectionFile(path: string): string {
  const doc = JSON.parse(readFileSync(path, "utf8")) as { runtime_dir?: unknown };
  if (typeof doc.runtime_dir === "string") return doc.runtime_dir;
  return join(path, "..");
}
