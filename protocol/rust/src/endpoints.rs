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

fn file_type(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

fn missing(e: &std::io::Error) -> bool {
    const ENOTDIR: i32 = 20; // (the same on Linux and the BSDs)
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(ENOTDIR)
}

/// Is there a runtime directory at `dir`, one this user may trust? `dir`, and its parent when
/// that is moorage's own (`$XDG_RUNTIME_DIR/moorage`, `/tmp/moorage-<uid>`), must each be a
/// directory (not a symbolic link) owned by this user that no group or other can write:
/// another local user who made it first would otherwise serve a lock, a connection file and
/// sockets of theirs, and be sent every call (PROTOCOL.md section 2). Ok(false) when there is
/// none; Err naming the path, its owner and its mode when it is not to be trusted.
pub fn check_runtime_dir(dir: &Path) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc_getuid() };
    let mut dirs = vec![dir];
    if let Some(parent) = dir.parent() {
        if parent.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("moorage")) {
            dirs.push(parent);
        }
    }
    for p in dirs {
        let meta = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) if missing(&e) => return Ok(false),
            Err(e) => return Err(format!("refusing the runtime dir: {}: {e}", p.display())),
        };
        let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
        if !meta.file_type().is_dir() {
            return Err(format!("refusing the runtime dir: {} is {} (owner uid {owner}, mode {mode:04o}), not a \
                directory: a client does not follow one to find an instance", p.display(), file_type(meta.file_type())));
        }
        if owner != uid {
            return Err(format!("refusing the runtime dir: {} (mode {mode:04o}) is owned by uid {owner}, not by this \
                user (uid {uid}): another user may have made it to be sent this user's calls; remove it, or use \
                another instance", p.display()));
        }
        if mode & 0o022 != 0 {
            return Err(format!("refusing the runtime dir: {} (owner uid {owner}, mode {mode:04o}) can be written by \
                group or others, who could put a lock and sockets of theirs there; chmod 700 {}", p.display(), p.display()));
        }
    }
    Ok(true)
}

/// `dir/lock` open for reading, None when there is none; Err when it is not a regular file of
/// this user's, or cannot be opened. Looked at (lstat) before it is opened, so a FIFO named
/// `lock`, whose open would wait for a writer for good, or a link, is never opened: in a
/// directory `check_runtime_dir` passed, no one else can put another file there meanwhile.
pub fn open_lock(dir: &Path) -> Result<Option<std::fs::File>, String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc_getuid() };
    let path = dir.join(LOCK_FILE);
    let refuse = |meta: &std::fs::Metadata| format!(
        "refusing the instance lock {}: it is {} owned by uid {} (mode {:04o}); a tree's lock is a regular file \
        of this user's (uid {uid})", path.display(), file_type(meta.file_type()), meta.uid(), meta.mode() & 0o7777);
    let seen = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if missing(&e) => return Ok(None),
        Err(e) => return Err(format!("refusing the instance lock {}: {e}", path.display())),
    };
    if !seen.file_type().is_file() || seen.uid() != uid {
        return Err(refuse(&seen));
    }
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if missing(&e) => return Ok(None), // (removed meanwhile: its tree stopped)
        Err(e) => return Err(format!("refusing the instance lock {}: {e}", path.display())),
    };
    let opened = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
    if !opened.file_type().is_file() || opened.uid() != uid {
        return Err(refuse(&opened));
    }
    Ok(Some(file))
}

/// Does a tree run in `dir`? Its root holds an exclusive flock on `dir/lock` for as long as it
/// lives (the kernel drops it however the root ends), so a shared one that can be had, or no
/// lock file, means none does. A runtime dir or a lock this user must not trust
/// (`check_runtime_dir`, `open_lock`: another's, open to others, a link, a FIFO) counts as no
/// tree: nothing is sent there, and `trusted_tree_running` says why.
pub fn tree_running(dir: &Path) -> bool {
    trusted_tree_running(dir).unwrap_or(false)
}

/// `tree_running`, with Err (the path, its owner and its mode) for a runtime dir or a lock this
/// user must not trust.
pub fn trusted_tree_running(dir: &Path) -> Result<bool, String> {
    use std::os::unix::io::AsRawFd;
    if !check_runtime_dir(dir)? {
        return Ok(false);
    }
    let file = match open_lock(dir)? {
        Some(f) => f,
        None => return Ok(false),
    };
    // SAFETY: the descriptor is open for the call; the shared lock, if taken, goes with the
    // file when it is dropped here.
    Ok(unsafe { libc_flock(file.as_raw_fd(), LOCK_SH | LOCK_NB) != 0 })
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

    /// A directory of this test's own (0700, this user's), made afresh and removed with
    /// everything in it when the test ends, passed or failed.
    struct Private(PathBuf);

    impl Private {
        fn new(name: &str) -> Private {
            let dir = std::env::temp_dir().join(format!("mre-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            set_mode(&dir, 0o700);
            Private(dir)
        }
    }

    impl Drop for Private {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn run(cmd: &str, args: &[&Path]) {
        let status = std::process::Command::new(cmd).args(args).status().unwrap();
        assert!(status.success(), "{cmd} {args:?}: {status}");
    }

    /// `f(dir)` on a thread of its own, bounded: an open that hangs fails the test.
    fn within_10s<T: Send + 'static>(dir: &Path, f: fn(&Path) -> T) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || tx.send(f(&dir)));
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("hung on the lock")
    }

    #[test]
    fn the_users_own_runtime_dir_is_trusted_and_a_missing_one_is_no_tree() {
        let own = Private::new("own");
        let dir = &own.0;
        assert_eq!(check_runtime_dir(dir), Ok(true));
        assert_eq!(trusted_tree_running(dir), Ok(false)); // no lock: no tree
        std::fs::write(dir.join(LOCK_FILE), "").unwrap();
        assert_eq!(trusted_tree_running(dir), Ok(false)); // a lock nobody holds
        assert_eq!(check_runtime_dir(&dir.join("none")), Ok(false));
    }

    #[test]
    fn a_runtime_dir_group_or_others_can_write_or_a_link_is_refused() {
        let top = Private::new("open");
        let dir = top.0.join("rt");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(LOCK_FILE), "").unwrap();
        for mode in [0o770, 0o777, 0o1777] {
            set_mode(&dir, mode);
            let err = check_runtime_dir(&dir).unwrap_err();
            assert!(err.contains(&dir.display().to_string()) && err.contains(&format!("{mode:04o}"))
                && err.contains("group or others"), "{err}");
            assert!(!tree_running(&dir));
        }
        set_mode(&dir, 0o700);
        assert_eq!(check_runtime_dir(&dir), Ok(true));
        let link = top.0.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = check_runtime_dir(&link).unwrap_err();
        assert!(err.contains("symbolic link") && err.contains(&link.display().to_string()), "{err}");
    }

    #[test]
    fn a_fifo_or_a_link_named_lock_is_refused_at_once() {
        let fifo = Private::new("fifo");
        let (dir, lock) = (&fifo.0, fifo.0.join(LOCK_FILE));
        run("mkfifo", &[&lock]);
        let err = within_10s(dir, trusted_tree_running).unwrap_err();
        assert!(err.contains("a FIFO") && err.contains(&lock.display().to_string()), "{err}");
        assert!(!within_10s(dir, tree_running));
        std::fs::remove_file(&lock).unwrap();
        std::fs::write(dir.join("held"), "").unwrap();
        std::os::unix::fs::symlink(dir.join("held"), &lock).unwrap();
        let err = trusted_tree_running(dir).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_runtime_dir_or_a_lock_of_another_users_is_refused() {
        extern "C" {
            fn geteuid() -> u32;
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { geteuid() } != 0 {
            return; // (a folder of another uid's is made by root)
        }
        let top = Private::new("other");
        let dir = top.0.join("rt");
        let lock = dir.join(LOCK_FILE);
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o700);
        std::fs::write(&lock, "").unwrap();
        run("chown", &[Path::new("65534:65534"), &lock]);
        let err = trusted_tree_running(&dir).unwrap_err();
        assert!(err.contains("uid 65534") && err.contains(&lock.display().to_string()), "{err}");
        run("chown", &[Path::new("65534:65534"), &dir]);
        let err = check_runtime_dir(&dir).unwrap_err();
        assert!(err.contains("uid 65534") && err.contains("0700"), "{err}");
        // moorage's own folder above the instance ($XDG_RUNTIME_DIR/moorage), of another user's
        let (ours, below) = (top.0.join("moorage"), top.0.join("moorage").join("sq"));
        std::fs::create_dir_all(&below).unwrap();
        assert_eq!(check_runtime_dir(&below), Ok(true));
        run("chown", &[Path::new("65534:65534"), &ours]);
        let err = check_runtime_dir(&below).unwrap_err();
        assert!(err.contains(&format!("{} (mode", ours.display())) && err.contains("uid 65534"), "{err}");
    }

    #[test]
    fn a_local_client_pushes_to_the_ipc_path_in_the_runtime_dir() {
        let e = Endpoints::of(Path::new("/run/moorage-test-none"));
        assert_eq!(e.metrics_in().unwrap(), "ipc:///run/moorage-test-none/metrics.in");
    }
}
