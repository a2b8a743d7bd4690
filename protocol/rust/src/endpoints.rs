//! Where an instance's sockets are (PROTOCOL.md section 2): the runtime directory, and in it
//! the connection file `tree.json` when the tree wrote one (its endpoints win over the fixed
//! names).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_INSTANCE: &str = "default";
/// In the runtime directory while a tree runs: its root's exclusive flock (section 2).
pub const LOCK_FILE: &str = "lock";

/// Section 2's table: a name wins over MOORAGE_RUNTIME_DIR, which wins over the default.
pub fn runtime_dir(instance: Option<&str>) -> Result<PathBuf, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if instance.is_none() {
        if let Some(d) = env("MOORAGE_RUNTIME_DIR") {
            return Ok(PathBuf::from(d));
        }
    }
    let name = instance.unwrap_or(DEFAULT_INSTANCE);
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!("bad instance name {name:?}"));
    }
    if let Some(x) = env("XDG_RUNTIME_DIR") {
        return Ok(Path::new(&x).join("moorage").join(name));
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc_getuid() };
    Ok(PathBuf::from(format!("/tmp/moorage-{uid}")).join(name))
}

extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
    #[link_name = "flock"]
    fn libc_flock(fd: i32, operation: i32) -> i32;
}

// flock(2)'s operations (the same values on Linux and the BSDs).
const LOCK_SH: i32 = 1;
const LOCK_NB: i32 = 4;

/// Does a tree run in `dir`? Its root holds an exclusive flock on `dir/lock` for as long as it
/// lives (the kernel drops it however the root ends), so a shared one that can be had, or no
/// lock file, means none does. A lock that cannot be looked at counts as held: the client then
/// connects, as it does to a tree still starting.
pub fn tree_running(dir: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let file = match std::fs::File::open(dir.join(LOCK_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || !dir.is_dir() => return false,
        Err(_) => return true,
    };
    // SAFETY: the descriptor is open for the call; the shared lock, if taken, goes with the
    // file when it is dropped here.
    unsafe { libc_flock(file.as_raw_fd(), LOCK_SH | LOCK_NB) != 0 }
}

/// The endpoints of the tree in `dir`.
#[derive(Debug, Clone)]
pub struct Endpoints {
    dir: PathBuf,
    named: HashMap<String, (Option<String>, Option<String>)>,
    /// Remote mode: the metrics actor's `in` as the connection file names it (`metrics.in`),
    /// where this client pushes its latency; None when the file names none.
    remote_metrics_in: Option<String>,
    /// Remote mode: every socket is a CURVE client of the tree's key (PROTOCOL.md "Remote").
    curve: Option<CurveClient>,
}

/// A CURVE key pair, 40 Z85 characters each.
#[derive(Debug, Clone)]
pub struct CurveKeys {
    pub public: String,
    pub secret: String,
}

#[derive(Debug, Clone)]
struct CurveClient {
    server_key: String,
    keys: CurveKeys,
    heartbeat_ms: (i32, i32, i32),
}

/// `$MOORAGE_KEYS_DIR`, else `$XDG_CONFIG_HOME/moorage/keys`, else `~/.config/moorage/keys`.
pub fn keys_dir() -> PathBuf {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(d) = env("MOORAGE_KEYS_DIR") {
        return PathBuf::from(d);
    }
    let base = env("XDG_CONFIG_HOME").map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&env("HOME").unwrap_or_default()).join(".config"));
    base.join("moorage").join("keys")
}

/// The client pair in `dir/client.key_secret` (`moorage keys init`), a ZeroMQ certificate that
/// only its owner may read: one open to group or others is refused, as the tree refuses.
pub fn client_keys(dir: &Path) -> Result<CurveKeys, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("client.key_secret");
    let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("{} is open to group or others; chmod 600 {}", path.display(), path.display()));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |name: &str| -> Result<String, String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(name))
            .filter_map(|rest| rest.trim().strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .find(|v| v.len() == 40)
            .ok_or_else(|| format!("{}: no {name} (not a CURVE certificate)", path.display()))
    };
    Ok(CurveKeys { public: field("public-key")?, secret: field("secret-key")? })
}

impl Endpoints {
    /// From `dir/tree.json` where it names them, else the fixed paths.
    pub fn of(dir: &Path) -> Endpoints {
        let mut named = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(dir.join("tree.json")) {
            if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(eps) = doc.get("endpoints").and_then(|e| e.as_object()) {
                    for (actor, e) in eps {
                        let s = |k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_string);
                        named.insert(actor.clone(), (s("rpc"), s("pub")));
                    }
                }
            }
        }
        Endpoints { dir: dir.to_path_buf(), named, remote_metrics_in: None, curve: None }
    }

    /// The tcp endpoints of the tree elsewhere that a connection file (copied from its host)
    /// describes, reached with `keys`; `host` replaces the address the tree bound.
    pub fn remote(connection_file: &Path, keys: CurveKeys, host: Option<&str>) -> Result<Endpoints, String> {
        let where_ = connection_file.display();
        let text = std::fs::read_to_string(connection_file).map_err(|e| format!("{where_}: {e}"))?;
        let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{where_}: {e}"))?;
        let r = doc.get("remote").filter(|r| r.get("transport").and_then(|t| t.as_str()) == Some("tcp"))
            .ok_or_else(|| format!("{where_}: this tree does not listen on tcp (moorage up --listen)"))?;
        let server_key = r.get("server_key").and_then(|k| k.as_str()).filter(|k| k.len() == 40)
            .ok_or_else(|| format!("{where_}: no server_key"))?.to_string();
        let at = |ep: &str| match host {
            Some(h) => format!("tcp://{h}:{}", ep.rsplit(':').next().unwrap_or("")),
            None => ep.to_string(),
        };
        let mut named = HashMap::new();
        let mut remote_metrics_in = None;
        for (actor, e) in r.get("endpoints").and_then(|e| e.as_object()).into_iter().flatten() {
            let s = |k: &str| e.get(k).and_then(|v| v.as_str()).filter(|v| v.starts_with("tcp://")).map(at);
            named.insert(actor.clone(), (s("rpc"), s("pub")));
            if actor == "metrics" {
                remote_metrics_in = s("in");
            }
        }
        let hb = |k: &str, d: i32| r.get("heartbeat_ms").and_then(|h| h.get(k)).and_then(|v| v.as_i64()).map_or(d, |v| v as i32);
        let dir = runtime_dir_of_connection_file(connection_file)?;
        Ok(Endpoints { dir, named, remote_metrics_in, curve: Some(CurveClient {
            server_key, keys, heartbeat_ms: (hb("ivl", 1000), hb("timeout", 3000), hb("ttl", 3000)) }) })
    }

    /// Make `sock` fit its endpoint before it connects: in remote mode a CURVE client with ZMTP
    /// heartbeats, and a DEALER (`sending`) that never waits in send: after a refused handshake
    /// libzmq keeps no queue for it, and the attempt's deadline decides instead.
    pub fn secure(&self, sock: &zmq::Socket, sending: bool) -> zmq::Result<()> {
        let Some(c) = &self.curve else { return Ok(()) };
        // libzmq holds a frame to MAXMSGSIZE as it is on the wire, where CURVE adds to it
        // (section 2, "Socket options on tcp"); the decoder still holds it to the real limit.
        let limit = sock.get_maxmsgsize()?;
        if limit >= 0 {
            sock.set_maxmsgsize(limit + crate::limits::CURVE_ROOM)?;
        }
        sock.set_curve_serverkey(c.server_key.as_bytes())?;
        sock.set_curve_publickey(c.keys.public.as_bytes())?;
        sock.set_curve_secretkey(c.keys.secret.as_bytes())?;
        sock.set_heartbeat_ivl(c.heartbeat_ms.0)?;
        sock.set_heartbeat_timeout(c.heartbeat_ms.1)?;
        sock.set_heartbeat_ttl(c.heartbeat_ms.2)?;
        sock.set_handshake_ivl(5000)?;
        if sending {
            sock.set_sndtimeo(0)?;
        }
        Ok(())
    }

    /// Does this name an actor? (In remote mode only the connection file's actors exist.)
    pub fn knows(&self, actor: &str) -> bool {
        self.curve.is_none() || self.named.contains_key(actor)
    }

    pub fn is_remote(&self) -> bool {
        self.curve.is_some()
    }

    /// The CURVE public key this client proves itself with (remote mode): what a refused
    /// client is told to allow.
    pub fn client_key(&self) -> Option<&str> {
        self.curve.as_ref().map(|c| c.keys.public.as_str())
    }

    pub fn rpc(&self, actor: &str) -> String {
        self.named.get(actor).and_then(|e| e.0.clone()).unwrap_or_else(|| format!("ipc://{}/{actor}.rpc", self.dir.display()))
    }

    pub fn publisher(&self, actor: &str) -> String {
        self.named.get(actor).and_then(|e| e.1.clone()).unwrap_or_else(|| format!("ipc://{}/{actor}.pub", self.dir.display()))
    }

    /// Where this client pushes its latency: the metrics actor's `in`, its ipc path, or in
    /// remote mode the tcp endpoint the connection file names (`metrics.in`); a file that
    /// names none (a tree without a metrics actor) is an error.
    pub fn metrics_in(&self) -> Result<String, String> {
        if self.curve.is_none() {
            return Ok(format!("ipc://{}/metrics.in", self.dir.display()));
        }
        self.remote_metrics_in.clone()
            .ok_or_else(|| "metrics_name: the tree's connection file names no tcp endpoint for metrics.in".to_string())
    }
}

/// The runtime directory a connection file names (`runtime_dir`), else the file's folder.
pub fn runtime_dir_of_connection_file(path: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(match doc.get("runtime_dir").and_then(|v| v.as_str()) {
        Some(d) => PathBuf::from(d),
        None => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

    fn keys() -> CurveKeys {
        CurveKeys { public: KEY.to_string(), secret: KEY.to_string() }
    }

    /// A connection file in a directory of its own, holding `remote`.
    fn connection_file(name: &str, remote: serde_json::Value) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("moorage-endpoints-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tree.json");
        std::fs::write(&path, serde_json::json!({"remote": remote}).to_string()).unwrap();
        path
    }

    fn remote_table(endpoints: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"transport": "tcp", "curve": true, "server_key": KEY, "endpoints": endpoints})
    }

    #[test]
    fn a_remote_client_pushes_to_the_metrics_in_its_connection_file_names() {
        let path = connection_file("with-in", remote_table(serde_json::json!({
            "alpha": {"rpc": "tcp://10.0.0.1:7000", "pub": "tcp://10.0.0.1:7001"},
            "metrics": {"rpc": "tcp://10.0.0.1:7002", "pub": "tcp://10.0.0.1:7003", "in": "tcp://10.0.0.1:7004"},
        })));
        let e = Endpoints::remote(&path, keys(), None).unwrap();
        assert_eq!(e.metrics_in().unwrap(), "tcp://10.0.0.1:7004");
        // the host given replaces the address the tree bound, as for rpc and pub
        let e = Endpoints::remote(&path, keys(), Some("tree.example")).unwrap();
        assert_eq!(e.metrics_in().unwrap(), "tcp://tree.example:7004");
        assert_eq!(e.rpc("metrics"), "tcp://tree.example:7002");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_connection_file_naming_no_metrics_in_gives_no_endpoint_to_push_to() {
        for (name, eps) in [
            ("no-metrics", serde_json::json!({"alpha": {"rpc": "tcp://h:7000", "pub": "tcp://h:7001"}})),
            ("no-in", serde_json::json!({"metrics": {"rpc": "tcp://h:7000", "pub": "tcp://h:7001"}})),
            ("ipc-in", serde_json::json!({"metrics": {"rpc": "tcp://h:7000", "pub": "tcp://h:7001", "in": "ipc:///x/metrics.in"}})),
        ] {
            let path = connection_file(name, remote_table(eps));
            let e = Endpoints::remote(&path, keys(), None).unwrap();
            let err = e.metrics_in().unwrap_err();
            assert!(err.contains("metrics.in"), "{name}: {err}");
            std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        }
    }

    #[test]
    fn a_local_client_pushes_to_the_ipc_path_in_the_runtime_dir() {
        let e = Endpoints::of(Path::new("/run/moorage-test-none"));
        assert_eq!(e.metrics_in().unwrap(), "ipc:///run/moorage-test-none/metrics.in");
    }
}
