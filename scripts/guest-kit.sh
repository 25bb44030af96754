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

# A busybox initramfs whose /init loads the virtio drivers (modules in Debian's kernel), mounts the usual
# file systems and the first disk, and gives a shell on the console.
root="$work/initramfs"
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/mnt" "$root/lib/modules"
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount umount poweroff reboot ls cat echo dmesg ip mkdir uname sleep insmod udhcpc ifconfig route; do
	ln -s busybox "$root/bin/$applet"
done
# The modules vmd's devices need, with what they depend on (from each module's own "depends=" field:
# the package ships no modules.dep), in load order.
python3 - "$work/kernel" "$root/lib/modules" <<'PY'
import pathlib, re, shutil, sys
kernel, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
files = {p.name.split(".ko")[0].replace("-", "_"): p for p in kernel.glob("lib/modules/*/kernel/**/*.ko*")}
wanted = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_rng", "sr_mod", "sd_mod", "ext4"]
order, seen = [], set()
def visit(name):
    name = name.replace("-", "_")
    if name in seen or name not in files:
        return
    seen.add(name)
    match = re.search(rb"depends=([^\0]*)", files[name].read_bytes())
    for dep in (match.group(1).decode().split(",") if match and match.group(1) else []):
        visit(dep)
    order.append(name)
for name in wanted:
    visit(name)
for name in order:
    shutil.copy(files[name], target / files[name].name)
(target / "order").write_text("".join(files[n].name + "\n" for n in order))
PY
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read module; do insmod "/lib/modules/$module" 2>/dev/null; done < /lib/modules/order
echo "vmd guest kit: $(uname -sr), $(head -1 /proc/meminfo)"
sleep 1
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
