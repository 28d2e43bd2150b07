#!/usr/bin/env bash
# install-deps.sh: installs, idempotently and only when missing, what steerd needs on a Debian 12
# node: clang-19/llvm-19, libbpf-dev, bpftool, runc, iproute2, nftables, and a working CRIU >= 4.2.
#
# CRIU: Debian 12's criu 3.17 fails `criu check` on recent kernels (vDSO), trixie's 4.1 cannot dump
# UDP sockets (SO_PASSSEC). When the system criu does not pass `criu check`, this script takes
# criu 4.2+ from Debian's `sid` suite: it derives a temporary apt source from this machine's own
# Debian source entry (same URI and keyring, suite "sid"; no host name is written anywhere), downloads
# criu, libcompel1 and the shared libraries they need, unpacks them into a private prefix
# ($STEERD_CRIU_PREFIX, default /opt/steerd/criu) and installs a `criu` wrapper in /usr/local/sbin
# that starts the binary through the prefix's own ld-linux-x86-64.so.2 (runc runs `criu` from PATH).
# It also writes `network-lock skip` to /etc/criu/runc.conf (runc's CRIU config; no iptables here).
#
# Exit status: 0 when everything is installed and `criu check` passes; non-zero with a message that
# says what is missing and how to get it otherwise.
set -euo pipefail

PREFIX=${STEERD_CRIU_PREFIX:-/opt/steerd/criu}
WRAPPER=/usr/local/sbin/criu
log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, /etc/criu, /usr/local/sbin); try: sudo make deps"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian 12 (bookworm) nodes"

apt_updated=0
apt_update() {
	if [ "$apt_updated" -eq 0 ]; then
		log "apt-get update"
		apt-get update -qq || die "apt-get update failed: check the node's apt sources and network"
		apt_updated=1
	fi
}

# --- Debian packages -------------------------------------------------------------------------
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in clang-19 llvm-19 libbpf-dev bpftool runc iproute2 nftables ethtool; do
	have "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	apt_update
	log "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
		die "apt-get install ${need[*]} failed"
fi

# --- kernel features -------------------------------------------------------------------------------
if ! mountpoint -q /sys/fs/bpf; then
	log "mounting the BPF filesystem on /sys/fs/bpf (steerd pins its maps there)"
	mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs on /sys/fs/bpf: the kernel needs CONFIG_BPF_SYSCALL"
fi
[ -d /proc/sys/net/ipv4 ] || die "no IPv4 networking in this kernel"
if [ ! -e /sys/kernel/btf/vmlinux ]; then
	log "warning: /sys/kernel/btf/vmlinux missing (CONFIG_DEBUG_INFO_BTF off): steerd's XDP programs still load, but bpftool cannot show map layouts"
fi

# --- CRIU ----------------------------------------------------------------------------------------
# Post-copy: CRIU grows its page pipes to 4 MiB with F_SETPIPE_SZ, which above fs.pipe-max-size
# needs CAP_SYS_RESOURCE (root on some VMs lacks it). Raise the limit, persistently.
want_pipe=4194304
if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt "$want_pipe" ]; then
	log "raising fs.pipe-max-size to $want_pipe (CRIU lazy pages / page server)"
	sysctl -qw fs.pipe-max-size=$want_pipe || die "cannot set fs.pipe-max-size: post-copy migration would fail"
fi
if [ -d /etc/sysctl.d ] && ! grep -qs "fs.pipe-max-size = $want_pipe" /etc/sysctl.d/60-steerd-criu.conf; then
	echo "fs.pipe-max-size = $want_pipe" >/etc/sysctl.d/60-steerd-criu.conf
fi
mkdir -p /etc/criu
if ! grep -qx 'network-lock skip' /etc/criu/runc.conf 2>/dev/null; then
	log "writing 'network-lock skip' to /etc/criu/runc.conf"
	echo 'network-lock skip' >>/etc/criu/runc.conf
fi

criu_ok() { "$1" check >/dev/null 2>&1 && "$1" --version 2>/dev/null | grep -Eq 'Version: (4\.([2-9]|[1-9][0-9])|[5-9])'; }

# report_features tells which live-migration techniques this kernel allows (CRIU feature checks).
report_features() {
	local c=$1
	if "$c" check --feature mem_dirty_track >/dev/null 2>&1; then
		log "pre-copy: available (soft-dirty memory tracking)"
	else
		log "pre-copy: unavailable: no soft-dirty memory tracking (kernel option CONFIG_MEM_SOFT_DIRTY)"
	fi
	if "$c" check --feature uffd-noncoop >/dev/null 2>&1; then
		log "post-copy (lazy pages): available (userfaultfd, fs.pipe-max-size $(cat /proc/sys/fs/pipe-max-size))"
	else
		log "post-copy (lazy pages): unavailable: needs userfaultfd with non-cooperative events (CONFIG_USERFAULTFD)"
	fi
}

if [ -x "$WRAPPER" ] && criu_ok "$WRAPPER"; then
	log "criu ok: $("$WRAPPER" --version | head -1) ($WRAPPER)"
	report_features "$WRAPPER"
	exit 0
fi
for c in /usr/sbin/criu /usr/bin/criu; do
	if [ -x "$c" ] && criu_ok "$c"; then
		log "system criu passes 'criu check': $("$c" --version | head -1)"
		report_features "$c"
		exit 0
	fi
done

log "no working criu >= 4.2 on this node; fetching criu from Debian sid into $PREFIX"
work=$(mktemp -d /tmp/steerd-criu.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{lists/partial,archives/partial,sources.list.d,preferences.d}

# Derive the sid source from the first Debian (non-security) entry of this machine's apt sources.
uri="" keyring=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
	read -r uri keyring < <(awk -v RS='' '
		/Suites:/ && !/-security/ {
			u=""; k="";
			n=split($0, L, "\n");
			for (i=1;i<=n;i++) {
				if (L[i] ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", L[i]); split(L[i], a, " "); u=a[1] }
				if (L[i] ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", L[i]); k=L[i] }
			}
			if (u != "") { print u, (k==""?"-":k); exit }
		}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
	uri=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
fi
[ -n "$uri" ] || die "cannot find a Debian apt source on this node to derive the sid source from; add CRIU >= 4.2 by hand (a 'criu' on PATH that passes 'criu check')"
[ "${keyring:-}" = "-" ] && keyring=""
[ -n "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$work/sources.list.d/sid.sources" <<EOF
Types: deb
URIs: $uri
Suites: sid
Components: main
Signed-By: $keyring
EOF
aptopt=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/sources.list.d"
	-o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$work/preferences.d"
	-o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
	-o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Architecture=amd64"
	-o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
log "apt-get update (sid, temporary source derived from $uri)"
apt-get "${aptopt[@]}" update -qq || die "apt-get update of the temporary sid source failed"

# criu, libcompel1 and every library (lib*) in their dependency closure, libc6 included.
pkgs=$(apt-cache "${aptopt[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
	--no-breaks --no-replaces --no-enhances --no-pre-depends criu 2>/dev/null |
	awk '/^[a-z0-9]/ {print $1}' | grep -E '^(criu|libcompel1|lib[a-z0-9.+-]+)$' |
	grep -Ev '^(libc-bin|libc-dev-bin|libgcc-s1-dbg)$' | sort -u)
[ -n "$pkgs" ] || die "apt-cache found no criu in sid"
log "downloading $(echo "$pkgs" | wc -l) packages: $(echo $pkgs)"
(cd "$work/archives" && apt-get "${aptopt[@]}" download $pkgs >/dev/null) || die "apt-get download failed"

rm -rf "$PREFIX.new"
mkdir -p "$PREFIX.new"
for deb in "$work"/archives/*.deb; do dpkg-deb -x "$deb" "$PREFIX.new"; done
[ -x "$PREFIX.new/usr/sbin/criu" ] || die "the sid criu package has no usr/sbin/criu"
ldso=$(ls "$PREFIX.new"/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$PREFIX.new"/lib64/ld-linux-x86-64.so.2 2>/dev/null | head -1 || true)
[ -n "$ldso" ] || die "sid libc6 has no ld-linux-x86-64.so.2"
rm -rf "$PREFIX.old"
[ -d "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
mv "$PREFIX.new" "$PREFIX"
rm -rf "$PREFIX.old"
ldso=${ldso/$PREFIX.new/$PREFIX}
libpath="$PREFIX/usr/lib/x86_64-linux-gnu:$PREFIX/lib/x86_64-linux-gnu"

mkdir -p "$(dirname "$WRAPPER")"
cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
# criu wrapper installed by steerd's scripts/install-deps.sh: runs CRIU from Debian sid, unpacked in
# $PREFIX, through that prefix's own dynamic loader so the node's libc is untouched.
exec "$ldso" --library-path "$libpath" "$PREFIX/usr/sbin/criu" "\$@"
EOF
chmod 0755 "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"

if ! out=$("$WRAPPER" check 2>&1); then
	die "criu from sid installed in $PREFIX but 'criu check' fails: $out"
fi
log "criu ok: $("$WRAPPER" --version | head -1); 'criu check': $out"
report_features "$WRAPPER"
