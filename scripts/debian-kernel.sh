#!/bin/sh
# Debian's own kernel package, unpacked (never installed): the guest kit's kernels and the kernel of the
# hardware-virtualization test host come from here.
# Usage: debian-kernel.sh ARCH DIR   ARCH: amd64 (linux-image-amd64) or i386 (linux-image-686).
# Leaves DIR/vmlinuz, DIR/config, DIR/System.map and DIR/lib/modules/<version>/; does nothing when
# DIR/vmlinuz exists.
set -eu
arch=${1:?usage: debian-kernel.sh amd64|i386 DIR}
dir=${2:?usage: debian-kernel.sh amd64|i386 DIR}
[ -s "$dir/vmlinuz" ] && exit 0
case "$arch" in
amd64) meta=linux-image-amd64 ;;
i386) meta=linux-image-686:i386 ;;
*) echo "debian-kernel.sh: unknown architecture $arch" >&2; exit 2 ;;
esac
if [ "$arch" = i386 ] && ! dpkg --print-foreign-architectures | grep -qx i386; then
	dpkg --add-architecture i386
	apt-get update -qq
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
find_image() { apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
image=$(find_image)
if [ -z "$image" ]; then
	apt-get update -qq
	image=$(find_image)
fi
[ -n "$image" ] || { echo "debian-kernel.sh: apt knows no package behind $meta" >&2; exit 1; }
case "$image" in *:*) ;; *) [ "$arch" = i386 ] && image="$image:i386" ;; esac
( cd "$work" && apt-get download "$image" >/dev/null 2>&1 ) \
	|| { apt-get update -qq && ( cd "$work" && apt-get download "$image" >/dev/null ); }
mkdir -p "$work/x"
dpkg-deb -x "$work"/linux-image-*.deb "$work/x"
mkdir -p "$dir/lib"
rm -rf "$dir/lib/modules"
mv "$work/x/lib/modules" "$dir/lib/modules"
cp "$work"/x/boot/config-* "$dir/config"
cp "$work"/x/boot/System.map-* "$dir/System.map"
cp "$work"/x/boot/vmlinuz-* "$dir/vmlinuz.part"
mv "$dir/vmlinuz.part" "$dir/vmlinuz"
echo "setup: Debian kernel $(ls "$dir/lib/modules") ($arch) in $dir"
