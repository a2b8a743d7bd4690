//! Where an instance's sockets are (PROTOCOL.md section 2): the runtime directory, and in it
//! the connection file `tree.json` when the tree wrote one (its endpoints win over the fixed
//! names).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_INSTANCE: &str = "default";

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
}

/// The endpoints of the tree in `dir`.
#[derive(Debug, Clone)]
pub struct Endpoints {
    dir: PathBuf,
    named: HashMap<String, (Option<String>, Option<String>)>,
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
        Endpoints { dir: dir.to_path_buf(), named }
    }

    pub fn rpc(&self, actor: &str) -> String {
        self.named.get(actor).and_then(|e| e.0.clone()).unwrap_or_else(|| format!("ipc://{}/{actor}.rpc", self.dir.display()))
    }

    pub fn publisher(&self, actor: &str) -> String {
        self.named.get(actor).and_then(|e| e.1.clone()).unwrap_or_else(|| format!("ipc://{}/{actor}.pub", self.dir.display()))
    }

    pub fn metrics_in(&self) -> String {
        format!("ipc://{}/metrics.in", self.dir.display())
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
