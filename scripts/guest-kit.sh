#!/bin/sh
# The Linux guest kit, for hosts with VT-x/AMD-V: Debian's kernel, a busybox initramfs and an ext4 image.
# Usage: guest-kit.sh DIR. Does nothing when DIR/vmlinuz, DIR/initrd.img and DIR/disk.img exist.
set -eu
kit=${1:?usage: guest-kit.sh DIR}
mkdir -p "$kit"
cd "$kit"
if [ -s vmlinuz ] && [ -s initrd.img ] && [ -s disk.img ]; then
	exit 0
fi
echo "setup: preparing the Linux guest kit in $kit"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Debian's kernel, unpacked from its package (not installed on the host).
image=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
( cd "$work" && apt-get download "$image" >/dev/null 2>&1 ) || { apt-get update -qq && ( cd "$work" && apt-get download "$image" >/dev/null ); }
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
cp "$work"/kernel/boot/vmlinuz-* vmlinuz

# A busybox initramfs whose /init mounts the usual file systems and gives a shell on the console.
root="$work/initramfs"
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/mnt"
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount umount poweroff reboot ls cat echo dmesg ip mkdir uname sleep; do
	ln -s busybox "$root/bin/$applet"
done
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "vmd guest kit: $(uname -sr), $(cat /proc/meminfo | head -1)"
[ -b /dev/vda ] && mount /dev/vda /mnt && echo "vmd guest kit: /dev/vda mounted on /mnt"
exec sh
INIT
chmod +x "$root/init"
( cd "$root" && find . | cpio -o -H newc --quiet ) | gzip -9 > initrd.img

# A small ext4 disk image with a marker file.
mkdir -p "$work/disk"
echo "hello from the vmd guest kit disk" > "$work/disk/hello.txt"
mkfs.ext4 -q -F -L vmdkit -d "$work/disk" disk.img 64M
echo "setup: guest kit ready: $kit/vmlinuz $kit/initrd.img $kit/disk.img"
