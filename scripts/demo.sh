#!/usr/bin/env bash
# demo.sh: the main job: live-migrates a QUIC service between two edge nodes on a netns testbed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bin/steerd ]; then
	echo "demo: bin/steerd is missing: the node daemon (cmd/steerd) is not built yet" >&2
	exit 1
fi
exec bin/steerd demo "$@"
