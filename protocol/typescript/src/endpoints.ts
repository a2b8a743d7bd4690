/**
 * Where an instance's sockets are (PROTOCOL.md section 2): the runtime directory, and in it
 * the connection file `tree.json` when the tree wrote one (its `endpoints` win over the
 * fixed names).
 */
import { spawnSync } from "node:child_process";
import { type Stats, closeSync, constants, existsSync, fstatSync, lstatSync, openSync, readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { basename, dirname, join } from "node:path";

import { MoorageError, wireError } from "./errors.js";
import { CURVE_ROOM, MAX_MESSAGE_SIZE } from "./limits.js";

export const DEFAULT_INSTANCE = "default";
/** In the runtime directory while a tree runs: its root's exclusive flock (section 2). */
export const LOCK_FILE = "lock";

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

const myUid = (): number => (typeof process.getuid === "function" ? process.getuid() : 0);
const mode4 = (st: Stats): string => (st.mode & 0o7777).toString(8).padStart(4, "0");
const missing = (e: unknown): boolean => {
  const code = (e as { code?: string }).code;
  return code === "ENOENT" || code === "ENOTDIR";
};

function fileType(st: Stats): string {
  if (st.isSymbolicLink()) return "a symbolic link";
  if (st.isFIFO()) return "a FIFO";
  if (st.isSocket()) return "a socket";
  if (st.isCharacterDevice()) return "a character device";
  if (st.isBlockDevice()) return "a block device";
  if (st.isDirectory()) return "a directory";
  return st.isFile() ? "a regular file" : "not a regular file";
}

function forbidden(message: string): MoorageError {
  return new MoorageError(wireError("forbidden", message), "", "", 0);
}

/**
 * Is there a runtime directory at `dir`, one this user may trust? `dir`, and its parent when
 * that is moorage's own (`$XDG_RUNTIME_DIR/moorage`, `/tmp/moorage-<uid>`), must each be a
 * directory (not a symbolic link) owned by this user that no group or other can write: another
 * local user who made it first would otherwise serve a lock, a connection file and sockets of
 * theirs, and be sent every call (PROTOCOL.md section 2). False when there is none; a
 * `forbidden` MoorageError, naming the path, its owner and its mode, when it is not to be
 * trusted.
 */
export function checkRuntimeDir(dir: string): boolean {
  const parent = dirname(dir);
  const dirs = parent !== dir && basename(parent).startsWith("moorage") ? [dir, parent] : [dir];
  for (const p of dirs) {
    let st: Stats;
    try {
      st = lstatSync(p);
    } catch (e) {
      if (missing(e)) return false;
      throw e;
    }
    if (!st.isDirectory()) {
      throw forbidden(`refusing the runtime dir: ${p} is ${fileType(st)} (owner uid ${st.uid}, mode ${mode4(st)}), ` +
        "not a directory: a client does not follow one to find an instance");
    }
    if (st.uid !== myUid()) {
      throw forbidden(`refusing the runtime dir: ${p} (mode ${mode4(st)}) is owned by uid ${st.uid}, not by this ` +
        `user (uid ${myUid()}): another user may have made it to be sent this user's calls; remove it, or use another instance`);
    }
    if (st.mode & 0o022) {
      throw forbidden(`refusing the runtime dir: ${p} (owner uid ${st.uid}, mode ${mode4(st)}) can be written by ` +
        `group or others, who could put a lock and sockets of theirs there; chmod 700 ${p}`);
    }
  }
  return true;
}

/** `dir/lock` open for reading, or null when there is none; `forbidden` when it is not a
 * regular file of this user's. Never blocks: a FIFO named `lock` opens at once, and is refused. */
function openLock(dir: string): number | null {
  const path = join(dir, LOCK_FILE);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (e) {
    if (missing(e)) return null;
    let what = "unreadable";
    try {
      what = fileType(lstatSync(path));
    } catch {
      // (gone meanwhile: unreadable)
    }
    throw forbidden(`refusing the instance lock ${path}: it is ${what} (${(e as { code?: string }).code}); ` +
      "a tree's lock is a regular file");
  }
  const st = fstatSync(fd);
  if (!st.isFile() || st.uid !== myUid()) {
    closeSync(fd);
    throw forbidden(`refusing the instance lock ${path}: it is ${fileType(st)} owned by uid ${st.uid} ` +
      `(mode ${mode4(st)}); a tree's lock is a regular file of this user's (uid ${myUid()})`);
  }
  return fd;
}

/**
 * Does a tree run in `dir`? Its root holds an exclusive flock(2) on `dir/lock` for as long as
 * it lives (the kernel drops it however the root ends), so a shared one that can be had, or no
 * lock file, means none does. Node has no flock: the `flock` program (util-linux, busybox)
 * makes the same call on this process's descriptor of the file. Only a lock taken says that
 * none runs; held, or not to be looked at (no `flock` here), the client connects, as it does
 * to a tree still starting. A runtime dir or a lock this user must not trust is `forbidden`
 * (checkRuntimeDir).
 */
export function treeRunning(dir: string): boolean {
  if (!checkRuntimeDir(dir)) return false;
  const fd = openLock(dir);
  if (fd === null) return false;
  try {
    // (a shared lock taken there is this descriptor's, and goes when it is closed below)
    return spawnSync("flock", ["-s", "-n", "3"], { stdio: ["ignore", "ignore", "ignore", fd] }).status !== 0;
  } finally {
    closeSync(fd);
  }
}

export interface Endpoints {
  rpc(actor: string): string;
  pub(actor: string): string;
  metricsIn(): string;
  /** Options a socket to these endpoints is made with (CURVE and heartbeats on tcp): the
   * DEALER to an actor's `rpc`, the SUB to its `pub`, or the latency PUSH to `metrics.in`. */
  socketOptions(kind: "rpc" | "pub" | "in"): Record<string, string | number>;
  /** The CURVE public key this client proves itself with (remote mode), else null: what a
   * refused client is told to allow. */
  readonly clientKey: string | null;
}

/** The endpoints of the tree in `dir`: from `dir/tree.json` where it names them, else fixed paths;
 * `forbidden` for a directory this user must not trust (checkRuntimeDir). */
export function endpointsOf(dir: string, connectionFile: string = join(dir, "tree.json")): Endpoints {
  checkRuntimeDir(dir); // (a directory given that is not there yet: a tree may come up later)
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
    socketOptions: () => ({}),
    clientKey: null,
  };
}

// --- remote mode (PROTOCOL.md section 2, "Remote") ----------------------------------------

/** A CURVE key pair, 40 Z85 characters each. */
export interface CurveKeys {
  publicKey: string;
  secretKey: string;
}

/** `$MOORAGE_KEYS_DIR`, else `$XDG_CONFIG_HOME/moorage/keys`, else `~/.config/moorage/keys`. */
export function keysDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MOORAGE_KEYS_DIR) return env.MOORAGE_KEYS_DIR;
  const base = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), ".config");
  return join(base, "moorage", "keys");
}

/** This user's client pair (`moorage keys init`): `client.key_secret`, a ZeroMQ certificate
 * that only its owner may read (a secret open to others is refused, as the tree refuses). */
export function clientKeys(dir: string = keysDir()): CurveKeys {
  const path = join(dir, "client.key_secret");
  const st = statSync(path);
  if (st.mode & 0o077) throw new Error(`${path} is open to group or others; chmod 600 ${path}`);
  const text = readFileSync(path, "utf8");
  const field = (name: string): string => {
    const m = new RegExp(`^\\s*${name}\\s*=\\s*"(.{40})"\\s*$`, "m").exec(text);
    if (!m) throw new Error(`${path}: no ${name} (not a CURVE certificate)`);
    return m[1];
  };
  return { publicKey: field("public-key"), secretKey: field("secret-key") };
}

/** The tcp endpoints and CURVE options of the tree a connection file (copied from its host)
 * describes; `host` replaces the address the tree bound (0.0.0.0, a forwarded port). */
export function remoteEndpointsOf(connectionFile: string, keys: CurveKeys, host?: string): Endpoints {
  const doc = JSON.parse(readFileSync(connectionFile, "utf8")) as { remote?: Record<string, any> };
  const r = doc.remote;
  if (!r || r.transport !== "tcp" || typeof r.server_key !== "string" || r.server_key.length !== 40) {
    throw new Error(`${connectionFile}: this tree does not listen on tcp (moorage up --listen)`);
  }
  const eps = r.endpoints as Record<string, { rpc?: string; pub?: string; in?: string }>;
  const at = (ep: string): string => (host === undefined ? ep : `tcp://${host}:${ep.slice(ep.lastIndexOf(":") + 1)}`);
  const find = (actor: string, kind: "rpc" | "pub"): string => {
    const ep = eps[actor]?.[kind];
    if (typeof ep !== "string" || !ep.startsWith("tcp://")) {
      throw new Error(`the tree's connection file names no actor ${JSON.stringify(actor)}`);
    }
    return at(ep);
  };
  const hb = (r.heartbeat_ms ?? {}) as { ivl?: number; timeout?: number; ttl?: number };
  return {
    rpc: (actor) => find(actor, "rpc"),
    pub: (actor) => find(actor, "pub"),
    metricsIn: () => {
      const ep = eps.metrics?.in;
      if (typeof ep !== "string" || !ep.startsWith("tcp://")) {
        throw new Error("metricsName: the tree's connection file names no tcp endpoint for metrics.in");
      }
      return at(ep);
    },
    socketOptions: (kind) => ({
      ...(kind === "rpc" ? { sendTimeout: 0 } : {}), // see Conn.sendOne in client.ts
      // libzmq holds a frame to the limit as it is on the wire, where CURVE adds to it
      // (section 2, "Socket options on tcp"); the decoder still holds it to the real limit.
      ...(kind === "in" ? {} : { maxMessageSize: MAX_MESSAGE_SIZE + CURVE_ROOM }),
      curveServerKey: r.server_key,
      curvePublicKey: keys.publicKey,
      curveSecretKey: keys.secretKey,
      heartbeatInterval: hb.ivl ?? 1000,
      heartbeatTimeout: hb.timeout ?? 3000,
      heartbeatTimeToLive: hb.ttl ?? 3000,
      handshakeInterval: 5000,
    }),
    clientKey: keys.publicKey,
  };
}

/** The runtime directory a connection file names (`runtime_dir`), else the file's folder. */
export function runtimeDirOfConnectionFile(path: string): string {
  const doc = JSON.parse(readFileSync(path, "utf8")) as { runtime_dir?: unknown };
  if (typeof doc.runtime_dir === "string") return doc.runtime_dir;
  return join(path, "..");
}

/** Connect `sock` to `endpoint()`, or close it as the error is raised: an endpoint it cannot
 * connect to (an ipc path longer than a Unix socket's, an actor a remote tree's connection file
 * does not name) is the caller's `bad_args` (of `op` to `actor`; `what` names the socket), and
 * a socket left open would keep Node alive. */
export function connectOrClose(sock: { connect(endpoint: string): void; close(): void }, endpoint: () => string,
  what: string, actor: string, op: string): void {
  try {
    sock.connect(endpoint());
  } catch (e) {
    sock.close();
    const why = e instanceof Error ? e.message : String(e);
    throw new MoorageError(wireError("bad_args", `${actor}: no ${what} socket to connect to: ${why}`), actor, op, 0);
  }
}
