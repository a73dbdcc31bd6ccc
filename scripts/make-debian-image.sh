#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) minbase image with python3 as a two-layer OCI
# image layout tar, written by umoci (not by Paddock's own code):
#   layer 1: debootstrap --variant=minbase, trimmed
#   layer 2: python3 installed on top with apt-get, trimmed again
# The result is cached: OUT plus OUT.stamp. A second run with a complete cache
# returns at once; concurrent runs wait on OUT.lock and the later ones reuse the
# first one's result. Needs root (debootstrap, chroot) and the Debian mirror.
set -euo pipefail

RECIPE="debian-python3 v3 (bookworm minbase + python3, two layers, trimmed)"

usage() {
  cat <<'EOF'
usage: scripts/make-debian-image.sh [--out FILE] [--mirror URL] [--suite SUITE] [--force]

Builds a Debian minbase image with python3 as an OCI image layout tar (two layers:
minbase, then python3), made with debootstrap and umoci. Cached: when FILE and
FILE.stamp are complete it prints FILE's path and exits at once.

  --out FILE     where to write the tar (default build/test-images/debian-python3.oci.tar)
  --mirror URL   Debian mirror (default: $PADDOCK_DEBIAN_MIRROR, else the first Debian
                 mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/*)
  --suite SUITE  Debian suite (default bookworm)
  --force        rebuild even when the cache is complete
  --help         this text

Needs root, debootstrap and umoci (scripts/install-deps.sh installs them). Takes a few
minutes; progress goes to stderr. The layout's one image is tagged "debian-python3".
EOF
}

out="build/test-images/debian-python3.oci.tar"
mirror="${PADDOCK_DEBIAN_MIRROR:-}"
suite="bookworm"
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --mirror) mirror="${2:?--mirror needs a value}"; shift 2 ;;
    --suite) suite="${2:?--suite needs a value}"; shift 2 ;;
    --force) force=1; shift ;;
    *) echo "make-debian-image: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "make-debian-image: $*" >&2; }
die() { echo "make-debian-image: error: $*" >&2; exit 1; }

mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
stamp="$out.stamp"

cache_ok() { [ -f "$out" ] && [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "$RECIPE" ]; }

if [ "$force" = 0 ] && cache_ok; then
  echo "$out"
  exit 0
fi

# One builder at a time; the others wait and then find the cache complete.
exec 9>"$out.lock"
if ! flock -n 9; then
  say "another build of $out is running; waiting for it"
  flock 9
fi
if [ "$force" = 0 ] && cache_ok; then
  say "built by a concurrent run; reusing $out"
  echo "$out"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (run scripts/install-deps.sh)"
command -v umoci >/dev/null || die "umoci is not installed (run scripts/install-deps.sh)"

# The mirror: the machine's own apt sources, first Debian (non-security) entry.
if [ -z "$mirror" ]; then
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    cand="$( { grep -E '^[[:space:]]*deb[[:space:]]' "$f" | awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; break } }';
               grep -E '^[[:space:]]*URIs:' "$f" | awk '{ for (i = 2; i <= NF; i++) print $i }'; } 2>/dev/null |
             grep -E '/debian/?$' | grep -v -- '-security' | head -n1 || true)"
    if [ -n "$cand" ]; then mirror="$cand"; break; fi
  done
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d/*}; pass --mirror URL or set PADDOCK_DEBIAN_MIRROR"
mirror="${mirror%/}"

say "checking the Debian mirror $mirror ($suite)"
if command -v wget >/dev/null; then
  wget -q -T 20 -t 2 -O /dev/null "$mirror/dists/$suite/Release" ||
    die "the Debian mirror $mirror is unreachable (could not fetch dists/$suite/Release); the Debian test image needs it"
elif command -v curl >/dev/null; then
  curl -fsS -m 20 -o /dev/null "$mirror/dists/$suite/Release" ||
    die "the Debian mirror $mirror is unreachable (could not fetch dists/$suite/Release); the Debian test image needs it"
fi

work="$(mktemp -d "$(dirname "$out")/.debian-image.XXXXXX")"
cleanup() {
  for m in "$work/bundle/rootfs/proc" "$work/bundle/rootfs/dev"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT
start=$SECONDS

# Removes what an image does not need: package lists, caches, docs, man pages,
# logs, and device nodes (a sandbox brings its own /dev); and the build host's
# name and resolver, which debootstrap copies in.
trim() {
  local r=$1
  : > "$r/etc/resolv.conf"
  echo localhost > "$r/etc/hostname"
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
         "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian \
         "$r"/usr/share/locale/* "$r"/var/log/* "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.cache
  find "$r"/dev -mindepth 1 -delete 2>/dev/null || true
  find "$r" -xdev \( -type c -o -type b -o -type s \) -delete
}

say "[1/5] debootstrap --variant=minbase $suite (downloads ~40 MB; takes a minute or more)"
if ! debootstrap --variant=minbase "$suite" "$work/rootfs" "$mirror" 2>&1 |
    while IFS= read -r line; do case "$line" in I:\ Retrieving*|I:\ Validating*) ;; *) echo "  $line" >&2 ;; esac; done; then
  die "debootstrap failed (mirror $mirror)"
fi
[ -x "$work/rootfs/bin/sh" ] || die "debootstrap produced no /bin/sh"
trim "$work/rootfs"

say "[2/5] layer 1 (minbase) with umoci"
layout="$work/oci"
umoci init --layout "$layout"
umoci new --image "$layout:debian-python3"
umoci unpack --image "$layout:debian-python3" "$work/bundle" >/dev/null
cp -a "$work/rootfs/." "$work/bundle/rootfs/"
rm -rf "$work/rootfs"
umoci repack --refresh-bundle --image "$layout:debian-python3" --history.created_by "debootstrap --variant=minbase $suite" "$work/bundle"

say "[3/5] apt-get install python3 in the image"
r="$work/bundle/rootfs"
mkdir -p "$r/dev" "$r/proc"
mount --bind /dev "$r/dev"
mount -t proc proc "$r/proc"
cp /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
echo "deb $mirror $suite main" > "$r/etc/apt/sources.list"
chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  apt-get -qq update >&2 || die "apt-get update in the image failed (mirror $mirror)"
chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  apt-get -y -qq --no-install-recommends install python3 >&2 || die "apt-get install python3 failed"
chroot "$r" /usr/bin/python3 -c 'import sys; assert sys.version_info >= (3, 11)' || die "python3 does not run in the image"
umount "$r/proc"
umount -l "$r/dev"
trim "$r"

say "[4/5] layer 2 (python3) with umoci"
umoci repack --image "$layout:debian-python3" --history.created_by "apt-get install python3" "$work/bundle"
umoci config --image "$layout:debian-python3" \
  --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --config.env "LANG=C.UTF-8" --config.workingdir / --config.cmd /usr/bin/python3
umoci gc --layout "$layout"

say "[5/5] writing $out"
tar -C "$layout" -cf "$out.tmp.$$" .
mv -f "$out.tmp.$$" "$out"
{ echo "$RECIPE"; echo "mirror $mirror"; echo "built $(date -u +%FT%TZ) in $((SECONDS - start)) s"; } > "$stamp.tmp.$$"
mv -f "$stamp.tmp.$$" "$stamp"
say "done in $((SECONDS - start)) s: $(du -h "$out" | cut -f1) ($out)"
echo "$out"
