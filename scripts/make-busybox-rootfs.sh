#!/usr/bin/env bash
# Builds a small root filesystem from Debian's busybox-static: /bin/busybox,
# one symlink per applet, and the directories a sandbox expects.
# Usage: scripts/make-busybox-rootfs.sh DIR
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ] || [ $# -ne 1 ]; then
  echo "usage: scripts/make-busybox-rootfs.sh DIR"
  echo "Builds a busybox root filesystem in DIR (from Debian's busybox-static) to use as a sandbox image."
  [ $# -eq 1 ] && exit 0 || exit 2
fi
dir=$1
if [ -f "$dir/.complete" ]; then exit 0; fi
[ -x /bin/busybox ] || { echo "make-busybox-rootfs: /bin/busybox missing; install busybox-static" >&2; exit 1; }
tmp="$dir.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/proc" "$tmp/dev" "$tmp/sys" "$tmp/tmp" "$tmp/work" "$tmp/root" "$tmp/usr" "$tmp/var"
cp /bin/busybox "$tmp/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$tmp/bin/$applet"
done
ln -s ../bin "$tmp/usr/bin"
ln -s bin "$tmp/sbin"
chmod 1777 "$tmp/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$tmp/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$tmp/etc/group"
echo ok > "$tmp/.complete"
mkdir -p "$(dirname "$dir")"
rm -rf "$dir"
mv "$tmp" "$dir"
