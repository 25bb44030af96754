#!/bin/sh
# The README's main job: boot the bundled demo guest under vmd and attach to its console.
# Starts vmd with a small vm.conf defining the VM "demo" unless a vmd already answers on the socket.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
vmd="$top/.venv/bin/vmd"
vmctl="$top/.venv/bin/vmctl"
socket=${VMD_SOCKET:-/run/vmd.sock}
conf=/run/vmd-demo.conf

if [ ! -S "$socket" ] || ! python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])" "$socket" 2>/dev/null; then
	cat > "$conf" <<CONF
# The demo VM of vmd's README: a tiny serial shell (tests/guests/src/demo.c).
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
if "$vmctl" status demo 2>/dev/null | grep -q running; then
	exec "$vmctl" console demo
fi
exec "$vmctl" start -c demo
