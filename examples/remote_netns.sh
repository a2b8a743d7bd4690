#!/bin/sh
# A remote session end to end on one machine (root, for `ip netns`): the tree in network
# namespace moorage-tree, the editor in moorage-editor, a veth pair between them and
# addresses on the pair only. Keys made and allowed with `moorage keys`, the connection file
# copied, examples/remote_session.py run from the editor's side (a terminal exec and its
# stream, a file watch), then a stranger's key refused and counted.
#
#   sudo sh examples/remote_netns.sh            (PY=path/to/python to choose the interpreter)
set -eu
PY=${PY:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$(mktemp -d /tmp/moorage-remote-XXXXXX)
MOORAGE="$PY -m moorage.supervisor.cli"
cleanup() {
    $MOORAGE --instance-dir "$B/run" down >/dev/null 2>&1 || true
    ip netns del moorage-editor 2>/dev/null || true
    ip netns del moorage-tree 2>/dev/null || true
    rm -rf "$B"
}
trap cleanup EXIT
ip netns add moorage-tree
ip netns add moorage-editor
ip link add mr-tree type veth peer name mr-editor
ip link set mr-tree netns moorage-tree
ip link set mr-editor netns moorage-editor
ip -n moorage-tree addr add 10.77.0.1/30 dev mr-tree
ip -n moorage-editor addr add 10.77.0.2/30 dev mr-editor
ip -n moorage-tree link set mr-tree up
ip -n moorage-editor link set mr-editor up

export MOORAGE_KEYS_DIR="$B/tree-keys"
$MOORAGE keys init >/dev/null
MOORAGE_KEYS_DIR="$B/editor-keys" $MOORAGE keys init >/dev/null
KEY=$(MOORAGE_KEYS_DIR="$B/editor-keys" $MOORAGE keys list --json \
      | $PY -c "import json, sys; print(json.load(sys.stdin)['client'])")
$MOORAGE keys allow "$KEY" --name editor

echo "--- the tree, in netns moorage-tree:"
ip netns exec moorage-tree $MOORAGE --instance-dir "$B/run" up --detach \
    --listen tcp://10.77.0.1:47000 | cut -c1-120
mkdir -p "$B/editor" "$B/watched"
cp "$B/run/tree.json" "$B/editor/tree.json"

echo "--- the editor, in netns moorage-editor (its own keys, a copy of tree.json):"
MOORAGE_KEYS_DIR="$B/editor-keys" ip netns exec moorage-editor \
    $PY "$ROOT/examples/remote_session.py" "$B/editor/tree.json" --dir "$B/watched"

echo "--- a stranger's key, from the editor's namespace:"
MOORAGE_KEYS_DIR="$B/stranger" $MOORAGE keys init >/dev/null
MOORAGE_KEYS_DIR="$B/stranger" ip netns exec moorage-editor $PY -c "
from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
with Client.remote('$B/editor/tree.json', timeout=2) as c:
    try:
        c.call('terminal', 'sys.ping')
    except MoorageError as e:
        print('stranger:', e.error.name, e.error.message)
"
$MOORAGE --instance-dir "$B/run" call terminal sys.info \
    | $PY -c "import json, sys; print('terminal remote:', json.load(sys.stdin)['remote'])"
