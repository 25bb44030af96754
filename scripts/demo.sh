#!/bin/sh
# The README's main job: boot a guest under vmd and attach to its console. On a host whose KVM runs real
# operating systems (VT-x or AMD-V: kvm_intel or kvm_amd), that guest is Debian's Linux from the guest kit,
# to its shell; elsewhere (a software KVM such as kvm_pvm) it is the small demo guest, a serial shell.
# Starts vmd with a vm.conf defining both unless a vmd already answers on the socket.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
vmd="$top/.venv/bin/vmd"
vmctl="$top/.venv/bin/vmctl"
socket=${VMD_SOCKET:-/run/vmd.sock}
conf=/run/vmd-demo.conf
state=/var/lib/vmd-demo

if [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; then
	guest=linux
else
	guest=demo
	kvm=$(ls -d /sys/module/kvm_* 2>/dev/null | sed 's,.*/,,' | head -1)
	echo "demo: this host's KVM (${kvm:-unknown}) is not VT-x/AMD-V and runs Linux too slowly to be useful: booting the small demo guest instead"
fi

if [ ! -S "$socket" ] || ! python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])" "$socket" 2>/dev/null; then
	mkdir -p "$state"
	[ -f "$state/linux.img" ] || cp "$top/guest-kit/disk.img" "$state/linux.img"
	cat > "$conf" <<CONF
# The demo VMs of vmd's README: Debian's Linux from the guest kit (scripts/guest-kit.sh), and a tiny serial
# shell (tests/guests/src/demo.c) for hosts whose KVM cannot run Linux well.
vm "linux" {
	memory 512M
	boot "$top/guest-kit/vmlinuz"
	initrd "$top/guest-kit/initrd.img"
	append "$(cat "$top/guest-kit/cmdline")"
	disk "$state/linux.img"
	disable
}
vm "demo" {
	memory 32M
	boot "$top/tests/guests/out/demo.elf"
	disable
}
CONF
	"$vmd" -f "$conf"
	i=0
	while [ ! -S "$socket" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	echo "demo: started vmd with $conf (stop it with: kill \$(pgrep -f 'vmd -f $conf'))"
fi
if "$vmctl" status "$guest" 2>/dev/null | grep -q running; then
	exec "$vmctl" console "$guest"
fi
exec "$vmctl" start -c "$guest"
