#!/usr/bin/env bash
# demo.sh: the main job: live-migrates a QUIC service container between two edge nodes on a netns
# testbed (bin/steerd demo; see daemon/demo). `make demo` runs `make deps build` first. Root only.
# Arguments are passed to `steerd demo` (e.g. --datapath nftables, --conns 20, --keep --workdir
# /tmp/demo; list: bin/steerd demo --help). `make demo` passes none: run this script for flags.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:/usr/local/sbin:$PATH
for b in steerd steerctl kvservice; do
	if [ ! -x "bin/$b" ]; then
		echo "demo: bin/$b is missing: run 'make build'" >&2
		exit 1
	fi
done
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: must run as root (network namespaces, XDP, runc, CRIU); try: sudo make demo" >&2
	exit 1
fi
exec bin/steerd demo "$@"
