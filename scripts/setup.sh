#!/bin/sh
# Set up a fresh Debian 12 machine for vmd: packages, the Python venv (with the C run loop),
# the test guests, and the Linux guest kit. Idempotent; run as root.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

packages="gcc make python3-venv qemu-system-x86 qemu-utils seabios extlinux isolinux syslinux-common
  xorriso busybox-static e2fsprogs cpio iproute2 iputils-ping mandoc gdb python3-seccomp"
missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "setup: installing$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# The unprivileged user VM processes run as (vmd(8): _vmd).
if ! getent passwd _vmd >/dev/null; then
	useradd --system --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin _vmd
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
	echo "setup: creating .venv"
	"$python" -m venv .venv
fi
# Install (and build the C run loop) only when what the install depends on has changed since the last one.
stamp=.venv/.vmd-install-stamp
wanted=$(cat pyproject.toml setup.py src/vmd/_runloop.c | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || [ ! -x .venv/bin/vmd ]; then
	echo "setup: installing vmd and its test tools into .venv"
	.venv/bin/python -m pip install -q --upgrade pip >/dev/null
	.venv/bin/python -m pip install -q -e '.[test]'
	echo "$wanted" >"$stamp"
fi

# libseccomp's own Python binding (the VM processes' system-call filter, vmd/sandbox.py) comes with Debian's
# libseccomp, not from PyPI: the venv sees that one module, not the rest of the system's packages.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for module in /usr/lib/python3/dist-packages/seccomp.cpython-*.so; do
	[ -e "$module" ] && ln -sf "$module" "$site/"
done
.venv/bin/python -c 'import seccomp' || { echo "setup: libseccomp's Python binding does not load in .venv" >&2; exit 1; }

echo "setup: building the test guests"
.venv/bin/python tests/guests/build.py tests/guests/out >/dev/null

sh scripts/guest-kit.sh "$top/guest-kit"
echo "setup: done"
