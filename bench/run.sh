#!/usr/bin/env bash
# run.sh: steerd's benchmark suite (make bench). Builds the static service and the runner, runs the
# datapath cases, the baselines (no move, TCP+DNS, MPTCP) and the steerd migration matrix on a
# tests/netns testbed within a time budget (default 27 min of the 30), and writes
# bench/out/<UTC timestamp>/: summary.md, *.csv, *.png, run.log.
#
#   bench/run.sh [--reference] [--budget 27m] [-- extra steerbench flags]
#
# --reference also copies the run into bench/results/ (committed). Needs root, runc, criu, nft.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=0
budget=27m
extra=()
while [ $# -gt 0 ]; do
	case "$1" in
	--reference) ref=1 ;;
	--budget) budget=$2; shift ;;
	-h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; echo "steerbench flags (after --): bin/steerbench -h"; exit 0 ;;
	--) shift; extra=("$@"); break ;;
	*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (network namespaces, runc, CRIU, XDP)" >&2; exit 1; }
for t in runc criu nft ip; do
	command -v "$t" >/dev/null || { echo "run.sh: $t not found: run 'make deps'" >&2; exit 1; }
done
ts=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/out/$ts
mkdir -p "$out" bin
CGO_ENABLED=0 go build -o bin/kvsvc ./bench/cmd/kvsvc
# The steerd matrix runs the real binaries (as make build makes them: static, for the container).
CGO_ENABLED=0 go build -o bin/ ./cmd/steerd ./cmd/steerctl ./examples/kvservice
go build -o bin/steerbench ./bench/cmd/steerbench
# XDP per-packet cost from the datapath package's own benchmark (BPF_PROG_TEST_RUN), bounded.
if ls datapath/*_test.go >/dev/null 2>&1; then
	timeout 120 go test -count=1 -run '^$' -bench BenchmarkXDP -benchtime 2000x ./datapath/ >"$out/xdp_bench.txt" 2>&1 ||
		echo "(BenchmarkXDP failed or timed out; see above)" >>"$out/xdp_bench.txt"
fi
bin/steerbench -out "$out" -kvsvc bin/kvsvc -bin bin -repo . -budget "$budget" \
	-xdp-bench "$out/xdp_bench.txt" "${extra[@]}" 2>&1 | tee "$out/run.log"
echo "run.sh: results in $out"
if [ "$ref" -eq 1 ]; then
	rm -rf bench/results
	mkdir -p bench/results
	cp -r "$out"/. bench/results/
	echo "$ts" >bench/results/RUN_ID
	echo "run.sh: copied to bench/results/ (commit it)"
fi
