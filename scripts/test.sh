#!/usr/bin/env bash
# test.sh: runs every Go test (privileged ones included), prints the skip count and the skip reasons,
# and fails when running as root but a test skipped for lack of privilege.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/steerd-test.XXXXXX.log)
trap 'rm -f "$log"' EXIT

if [ "$(id -u)" -ne 0 ]; then
	echo "test: not root: privileged tests (netns, BPF, CRIU) will skip; run 'sudo make test' for the full suite" >&2
fi
go run ./tests/netns/cmd/sweep >/dev/null 2>&1 || true

go test -count=1 -timeout 30m -v "$@" ./... 2>&1 | tee "$log" | grep -Ev '^(=== (RUN|PAUSE|CONT|NAME)|\s*$)'
rc=${PIPESTATUS[0]}

# Count leaf tests only: a parent test whose subtests failed is not a failure of its own.
read -r passes fails skips < <(grep -E -- '--- (PASS|FAIL|SKIP): ' "$log" | sed -E 's/^ *--- (PASS|FAIL|SKIP): ([^ ]+).*/\1 \2/' | awk '
	{ res[NR] = $1; name[NR] = $2; n = NR; seen[$2] = 1 }
	END {
		for (i = 1; i <= n; i++) { p = name[i]; while (sub(/\/[^\/]*$/, "", p)) parent[p] = 1 }
		for (i = 1; i <= n; i++) if (!(name[i] in parent)) c[res[i]]++
		printf "%d %d %d\n", c["PASS"], c["FAIL"], c["SKIP"]
	}')
echo
echo "== test summary (leaf tests, subtests counted once) =="
echo "tests: ${passes} passed, ${fails} failed, ${skips} skipped"
if [ "$skips" -gt 0 ]; then
	echo "skipped tests and reasons:"
	grep -A1 -- '--- SKIP' "$log" | grep -v -- '^--$' | sed 's/^/  /'
fi
if [ "$(id -u)" -eq 0 ] && grep -A1 -- '--- SKIP' "$log" | grep -q 'missing capability'; then
	echo "test: FAIL: running as root but a privileged test skipped for a missing capability (see above)"
	rc=1
fi
go run ./tests/netns/cmd/sweep >/dev/null 2>&1 || true
exit "$rc"
