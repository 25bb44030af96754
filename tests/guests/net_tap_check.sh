#!/bin/bash
# Run as root: python3 tests/guests/build.py first; needs dnsmasq (dnsmasq-base) and ping.
# usage: net_tap_check.sh [msix|intx|poll] [extra virtio-net-pci options, e.g. ,vectors=0]
# tap in a network namespace, dnsmasq as DHCP server, the guest serves for 8 s while we ping it
set -u
ELF=${ELF:-$(dirname "$0")/out/virtio_net.elf}
NS=vmdnet$$
IRQ=${1:-msix}; DEV=${2:-}
ip netns add $NS
ip netns exec $NS ip link set lo up
ip netns exec $NS ip tuntap add dev tap0 mode tap
ip netns exec $NS ip addr add 10.9.0.1/24 dev tap0
ip netns exec $NS ip link set tap0 up
ip netns exec $NS dnsmasq --no-daemon --interface=tap0 --bind-interfaces --port=0 \
   --dhcp-range=10.9.0.50,10.9.0.99,255.255.255.0,1h --dhcp-option=option:router,10.9.0.1 \
   --dhcp-option=option:dns-server,10.9.0.1 --dhcp-host=52:54:00:aa:bb:01,10.9.0.77,vmdguest \
   --no-resolv --no-hosts --pid-file=/tmp/$NS.pid > /tmp/$NS.dnsmasq.log 2>&1 &
DPID=$!
ip netns exec $NS timeout 60 qemu-system-x86_64 -enable-kvm -cpu host,-xsave,-avx,-avx2,-cx16,-arch-capabilities -m 64M \
  -display none -nodefaults -chardev stdio,id=c0,mux=off -serial chardev:c0 -no-reboot \
  -device isa-debug-exit,iobase=0xf4,iosize=1 -kernel "$ELF" -append "irq=$IRQ serve=8" \
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
  -device virtio-net-pci,netdev=n0,disable-legacy=on,mac=52:54:00:aa:bb:01$DEV > /tmp/$NS.out 2>&1 &
QPID=$!
for i in $(seq 1 40); do grep -q "serving" /tmp/$NS.out && break; sleep 0.25; done
ip netns exec $NS ping -c 3 -i 0.3 -W 1 10.9.0.77; PRC=$?; echo "ping rc=$PRC"
wait $QPID; QRC=$?; echo "qemu rc=$QRC"
kill $DPID; wait $DPID 2>/dev/null
cat /tmp/$NS.out; tail -3 /tmp/$NS.dnsmasq.log
ip netns del $NS
[ $PRC = 0 ] && [ $QRC = 1 ] && grep -q "ALL OK" /tmp/$NS.out; RC=$?
rm -f /tmp/$NS.out /tmp/$NS.dnsmasq.log /tmp/$NS.pid
exit $RC
