#!/bin/sh
# The Linux guest kit: Debian's own kernels with a busybox initramfs, disk images and boot media, to run real
# Linux under vmd on hosts with VT-x/AMD-V (on a software KVM a full kernel does not boot in useful time).
#
# Usage: guest-kit.sh DIR   (scripts/setup.sh runs it with DIR = guest-kit/; needs root for the loop mount)
#
# What DIR holds (stable paths, relied on by tests):
#   vmlinuz             Debian's linux-image-amd64 kernel, a bzImage
#   vmlinux             the same kernel decompressed: an ELF64 with the Xen PVH note (boots through PVH)
#   initrd.img          the busybox initramfs (amd64): modules, init, shell (see below)
#   cmdline             the recommended kernel command line, one line: "console=ttyS0 quiet cryptomgr.notests"
#   disk.img            a 64 MiB ext4 image holding hello.txt: "hello from the vmd guest kit disk"
#   i386/vmlinuz        Debian's linux-image-686 kernel (i386), a bzImage
#   i386/initrd.img     the same initramfs with the i386 busybox and the i386 modules
#   extlinux.img        a raw disk, unpartitioned ext4 with EXTLINUX in its boot sector (SeaBIOS boots it):
#                       vmlinuz, initrd.img, hello.txt ("hello from the vmd guest kit extlinux disk") and an
#                       extlinux.conf (SERIAL 0 115200) that prints "vmd guest kit: EXTLINUX is booting the kit"
#                       on COM1 and boots the kit at once with cmdline; the kit then mounts this disk on /mnt
#   isolinux.iso        an El Torito (no emulation) ISO9660 CD with ISOLINUX configured the same way
#                       ("vmd guest kit: ISOLINUX is booting the kit") and /hello.txt:
#                       "hello from the vmd guest kit cdrom"
#   stamp               what the kit was built from (rebuilt when a script under scripts/ that makes it changes)
#
# The initramfs: /init is busybox init (scripts/kit/rootfs/etc/inittab). Its boot script (etc/kit/rcS) mounts
# proc, sysfs, devtmpfs and devpts, loads the modules of lib/modules/order (virtio PCI, blk, net, SCSI and rng,
# sd and sr, ext4 with crc32c, isofs, the ACPI button, evdev) in dependency order, starts acpid, mounts
# /dev/vda on /mnt when there is one ("vmd guest kit: /dev/vda mounted on /mnt"), prints
#   vmd guest kit: Linux <release> <machine>, <n> CPU(s), <m> MiB, up <seconds> s
# and then the ready line
#   vmd guest kit: ready
# just before init starts a login shell on the console (cttyhack: a controlling tty) with the prompt
#   vmd-kit#
# SCSI is scanned synchronously, so /dev/sr0 exists by then (mount -t iso9660 /dev/sr0 /cdrom). The modules are
# Debian's with their signatures removed (scripts/kit/unsign.py): checking them was a quarter of the boot.
# The ACPI power button (vmd presses it on vmctl stop) runs etc/acpi/PWRF/00000080: poweroff through init, which
# first syncs and unmounts every disk file system (etc/kit/shutdown); poweroff and reboot typed in the shell do
# the same. udhcpc configures its lease with etc/udhcpc/default.script.
#
# Kernels are unpacked under build/debian/{amd64,i386} by scripts/debian-kernel.sh; scripts/kmods.py picks
# the modules; scripts/kit/ holds the initramfs files (rootfs/), vmlinux.py and unsign.py.
set -eu
kit=${1:?usage: guest-kit.sh DIR}
scripts=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$scripts")
build=$top/build
mkdir -p "$kit"
kit=$(cd "$kit" && pwd)

# The options that shorten boot without hiding what tests need, measured under QEMU TCG (README, SETTING UP):
# quiet (24 KB less console output: one port write or more a byte, each an exit under vmd), cryptomgr.notests
# (no self-tests of every crypto algorithm: 44% of the instructions to the ready line).
cmdline="console=ttyS0 quiet cryptomgr.notests"
modules="virtio_pci virtio_blk virtio_net virtio_scsi virtio_rng sr_mod sd_mod ext4 isofs button evdev"
artifacts="vmlinuz vmlinux initrd.img cmdline disk.img i386/vmlinuz i386/initrd.img extlinux.img isolinux.iso"

fingerprint() {
	cd "$scripts"
	find guest-kit.sh kmods.py debian-kernel.sh kit -type f ! -name '*.pyc' | LC_ALL=C sort | while read -r f; do
		echo "$f $(stat -c %a "$f") $(sha256sum <"$f")"
	done | sha256sum | cut -d' ' -f1
}
want=$(fingerprint)
up_to_date() {
	[ "$(sed -n 's/^scripts //p' "$kit/stamp" 2>/dev/null)" = "$want" ] || return 1
	for f in $artifacts; do [ -s "$kit/$f" ] || return 1; done
}
up_to_date && exit 0

echo "setup: preparing the Linux guest kit in $kit"
rm -f "$kit/stamp"
[ "$(id -u)" = 0 ] || { echo "guest-kit.sh: must run as root (extlinux.img is built on a loop mount)" >&2; exit 1; }
work=$(mktemp -d)
# Everything is built in $new, next to the kit, and renamed into place at the end: a VM already using the kit
# keeps the files it opened.
new="$kit/.new"
rm -rf "$new"
mkdir -p "$new/i386"
cleanup() {
	if mountpoint -q "$work/mnt" 2>/dev/null; then umount "$work/mnt"; fi
	rm -rf "$work" "$new"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

sh "$scripts/debian-kernel.sh" amd64 "$build/debian/amd64"
sh "$scripts/debian-kernel.sh" i386 "$build/debian/i386"

# busybox: the host's busybox-static for amd64; busybox-static:i386 unpacked from its package for i386.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" \
	|| { echo "guest-kit.sh: busybox-static is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
if [ ! -s "$build/debian/i386/busybox" ]; then
	mkdir -p "$work/bb"
	( cd "$work/bb" && apt-get download busybox-static:i386 >/dev/null 2>&1 ) \
		|| { apt-get update -qq && ( cd "$work/bb" && apt-get download busybox-static:i386 >/dev/null ); }
	dpkg-deb -x "$work"/bb/busybox-static_*.deb "$work/bb/x"
	cp "$work/bb/x/bin/busybox" "$build/debian/i386/busybox.part"
	mv "$build/debian/i386/busybox.part" "$build/debian/i386/busybox"
fi

# initramfs ARCH BUSYBOX OUTPUT: the kit's root file system for one architecture, as a compressed cpio.
initramfs() {
	root="$work/initramfs-$1"
	mkdir -p "$root"
	cp -a "$scripts/kit/rootfs/." "$root/"
	mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/mnt" "$root/tmp" "$root/root" \
		"$root/run" "$root/var/log" "$root/usr" "$root/cdrom"
	ln -s bin "$root/sbin"
	ln -s ../bin "$root/usr/bin"
	ln -s ../bin "$root/usr/sbin"
	ln -s run "$root/var/run"
	cp "$2" "$root/bin/busybox"
	chmod 755 "$root/bin/busybox"
	ln -s bin/busybox "$root/init"
	for applet in $("$2" --list); do
		[ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
	done
	mknod -m 600 "$root/dev/console" c 5 1
	python3 "$scripts/kmods.py" "$build/debian/$1"/lib/modules/* "$root/lib/modules" $modules
	python3 "$scripts/kit/unsign.py" "$root"/lib/modules/*.ko
	( cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet ) | gzip -9n >"$3"
}

cp "$build/debian/amd64/vmlinuz" "$new/vmlinuz"
python3 "$scripts/kit/vmlinux.py" "$new/vmlinuz" "$new/vmlinux" >/dev/null
initramfs amd64 /bin/busybox "$new/initrd.img"
cp "$build/debian/i386/vmlinuz" "$new/i386/vmlinuz"
initramfs i386 "$build/debian/i386/busybox" "$new/i386/initrd.img"
echo "$cmdline" >"$new/cmdline"

# disk.img: a small ext4 image with a marker file.
mkdir -p "$work/disk"
echo "hello from the vmd guest kit disk" >"$work/disk/hello.txt"
truncate -s 64M "$new/disk.img"
mkfs.ext4 -q -F -L vmdkit -E lazy_itable_init=0,lazy_journal_init=0 -d "$work/disk" "$new/disk.img"

# syslinux_files LOADER DIR CONFIG PREFIX: the EXTLINUX/ISOLINUX configuration CONFIG in DIR (PREFIX: DIR as the
# loader sees it): serial console, a banner, the kit at once. The banner comes from a Lua script (lua.c32):
# syslinux 6.04 loses what SAY prints while it reads its configuration (its library looks the serial port up
# before SERIAL sets it), and a module started afterwards prints to the serial console.
syslinux_files() {
	for module in lua liblua libcom32 libutil syslinux; do
		cp "/usr/lib/syslinux/modules/bios/$module.c32" "$2/"
	done
	cat >"$2/banner.lua" <<EOF
local syslinux = require("syslinux")
print("vmd guest kit: $1 is booting the kit")
syslinux.run_command("kit")
EOF
	cat >"$2/$3" <<EOF
SERIAL 0 115200
PROMPT 0
TIMEOUT 1
DEFAULT banner
LABEL banner
  COM32 lua.c32
  APPEND ${4}banner.lua
LABEL kit
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
EOF
}

# extlinux.img: EXTLINUX on an unpartitioned ext4 disk (its boot sector is the disk's sector 0). syslinux
# reads neither the 64bit nor the metadata_csum feature of ext4.
image="$new/extlinux.img"
truncate -s 32M "$image"
mkfs.ext4 -q -F -L vmdboot -O ^64bit,^metadata_csum -E lazy_itable_init=0,lazy_journal_init=0 "$image"
mkdir -p "$work/mnt"
mount -o loop "$image" "$work/mnt"
cp "$new/vmlinuz" "$new/initrd.img" "$work/mnt/"
echo "hello from the vmd guest kit extlinux disk" >"$work/mnt/hello.txt"
syslinux_files EXTLINUX "$work/mnt" extlinux.conf /
extlinux --install "$work/mnt" >/dev/null 2>&1 || { echo "guest-kit.sh: extlinux --install failed" >&2; exit 1; }
umount "$work/mnt"

# isolinux.iso: ISOLINUX on an El Torito no-emulation CD, with a marker file.
cd_root="$work/cdrom"
mkdir -p "$cd_root/isolinux"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$cd_root/isolinux/"
syslinux_files ISOLINUX "$cd_root/isolinux" isolinux.cfg /isolinux/
cp "$new/vmlinuz" "$new/initrd.img" "$cd_root/"
echo "hello from the vmd guest kit cdrom" >"$cd_root/hello.txt"
xorriso -as mkisofs -quiet -o "$new/isolinux.iso" -V VMDKIT -R -J \
	-b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table "$cd_root" \
	2>"$work/xorriso.log" || { cat "$work/xorriso.log" >&2; exit 1; }

mkdir -p "$kit/i386"
for f in $artifacts; do mv "$new/$f" "$kit/$f"; done

printf 'scripts %s\nkernels %s %s\n' "$want" "$(ls "$build/debian/amd64/lib/modules")" \
	"$(ls "$build/debian/i386/lib/modules")" >"$kit/stamp"
echo "setup: guest kit ready in $kit ($(ls "$build/debian/amd64/lib/modules"), $(ls "$build/debian/i386/lib/modules"))"
