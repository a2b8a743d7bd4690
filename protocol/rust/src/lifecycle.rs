//! Life beside an editor (PROTOCOL.md section 13, `sys.hello` with `adopt`): an editor window
//! that finds a tree running (another window's, or one orphaned by an editor that died) holds it
//! too, so that the tree stops only when the last window holding it is gone.

use crate::{args, Client, Error, Value};

/// Say `sys.hello {adopt: true}` to the root supervisor through `client`: `parent` (None: this
/// process) holds the tree from now on, beside whoever held it already, as the editor that
/// started it does: the tree is orphaned only when the last of them has exited, and an orphaned
/// tree cancels its shutdown. Saying it again adds no holder. The hello's reply, whose
/// `lifecycle` says the state the tree is now in (`holders`, when more than one process holds
/// it).
pub fn adopt(client: &mut Client, parent: Option<u32>) -> Result<Value, Error> {
    let me = std::process::id();
    client.call("supervisor", "sys.hello", args([
        ("client", Value::from(format!("adopt {me}"))),
        ("adopt", Value::from(true)),
        ("parent", Value::from(parent.unwrap_or(me))),
    ]))
}
