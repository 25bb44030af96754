"""Networking end to end: vmd runs inside a network namespace the test creates, so its taps and bridges live
there; the virtio_net test guest gets a DHCP lease on a local interface, pings the host and is pinged back, and
two guests on one switch reach each other. Traffic never leaves the namespace."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"vmdt-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    made = _ip("netns", "add", name)
    assert made.returncode == 0, made.stderr
    _ip("-n", name, "link", "set", "lo", "up")
    yield name
    _ip("netns", "del", name)


class NetVmd:
    def __init__(self, netns: str, config: str) -> None:
        self.netns = netns
        self.dir = tempfile.mkdtemp(prefix="vmdt-net-", dir="/tmp")
        self.socket = os.path.join(self.dir, "vmd.sock")
        self.config = Path(self.dir) / "vm.conf"
        self.config.write_text(config)
        self.log = Path(self.dir) / "vmd.log"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), VMD_SOCKET=self.socket)
        self.process = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "vmd.cli", "-d",
                                         "-f", str(self.config)], env=self.env, stdout=open(self.log, "wb"),
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def vmctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmd.ctl.main", *args], capture_output=True, text=True,
                              env=self.env, timeout=60)

    def status(self) -> dict[str, dict[str, object]]:
        done = self.vmctl("status", "--json")
        return {row["name"]: row for row in json.loads(done.stdout)} if done.returncode == 0 else {}

    def console_until(self, name: str, pattern: str, timeout: float = 60) -> str:
        """Read the VM's console (its pty) until pattern appears."""
        import select

        tty = str(self.status()[name]["tty"])
        fd = os.open(tty, os.O_RDONLY | os.O_NOCTTY)
        seen = b""
        try:
            deadline = time.monotonic() + timeout
            while not re.search(pattern.encode(), seen) and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.1)[0]:
                    try:
                        seen += os.read(fd, 4096)
                    except OSError:
                        break
        finally:
            os.close(fd)
        return seen.decode(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _nic_stats(vmd: NetVmd, name: str) -> dict[str, object]:
    stats = vmd.status()[name]["stats"]
    assert isinstance(stats, dict), stats
    (nic,) = stats["nics"]
    return nic  # type: ignore[no-any-return]


def _scrape(path: str) -> dict[str, float]:
    """The NIC samples of the metrics endpoint on a Unix socket, by name (one VM with one NIC)."""
    import socket

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    body = answer.partition(b"\r\n\r\n")[2].decode()
    return {s.name: s.value for family in text_string_to_metric_families(body) for s in family.samples
            if s.name.startswith("vmd_nic_")}


def _links(netns: str) -> dict[str, dict[str, object]]:
    shown = _ip("-n", netns, "-d", "-j", "link", "show")
    return {link["ifname"]: link for link in json.loads(shown.stdout or "[]")}


def test_local_interface_dhcp_ping_both_ways_and_cleanup(netns: str, guests: dict[str, Path]) -> None:
    guest = guests["virtio_net"]
    metrics = tempfile.mktemp(prefix="vmdt-metrics-", dir="/tmp")
    vmd = NetVmd(netns, f"""metrics socket "{metrics}"
vm "net1" {{
    disable
    memory 32M
    boot "{guest}"
    append "tests=dhcp,ping serve=6 irq=msix"
    local interface
}}
""")
    try:
        started = vmd.vmctl("start", "net1")
        assert started.returncode == 0, started.stderr + vmd.log.read_text()
        # vm id 1, first interface: host 100.64.1.2, guest 100.64.1.3 (vmd's local prefix arithmetic)
        links = _links(netns)
        taps = [link for link in links.values() if link.get("ifalias") == "vm1-if0-net1"]
        assert len(taps) == 1, links
        tap = str(taps[0]["ifname"])
        addresses = _ip("-n", netns, "-4", "addr", "show", "dev", tap).stdout
        assert "100.64.1.2/31" in addresses, addresses
        console = vmd.console_until("net1", r"serving 100\.64\.1\.3")
        assert "lease 100.64.1.3 router 100.64.1.2 dns 100.64.1.2" in console, console
        assert "ping reply from 100.64.1.2" in console, console
        ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "3", "-W", "2", "100.64.1.3"],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        # the NIC's counters (vmd(8), "Metrics"): the lease, the guest's ping and the host's three
        vmd.vmctl("pause", "net1")
        nic = _nic_stats(vmd, "net1")
        assert nic["interface"] == tap
        assert nic["tx_packets"] >= 5 and nic["rx_packets"] >= 5, nic  # DHCP, ARP, echo requests and replies
        assert nic["tx_bytes"] > 60 * 5 and nic["rx_bytes"] > 60 * 5, nic
        scraped = _scrape(metrics)
        for key in ("rx_packets", "rx_bytes", "rx_dropped", "tx_packets", "tx_bytes", "tx_dropped"):
            assert scraped[f"vmd_nic_{key}_total"] == nic[key], key
        assert vmd.vmctl("stop", "-f", "-w", "net1").returncode == 0
        assert tap not in _links(netns)  # the tap went with the VM
    finally:
        vmd.stop()
    assert [name for name in _links(netns) if name != "lo"] == []


def test_two_guests_on_one_switch_reach_each_other(netns: str, guests: dict[str, Path]) -> None:
    guest = guests["virtio_net"]
    vmd = NetVmd(netns, f"""switch "lan" {{
    interface vmdtbr0
}}
vm "server" {{
    disable
    memory 32M
    boot "{guest}"
    append "tests= ip=10.77.0.1 router=10.77.0.2 serve=15 irq=msix"
    interface {{ switch "lan" }}
}}
vm "client" {{
    disable
    memory 32M
    boot "{guest}"
    append "tests=ping ip=10.77.0.2 router=10.77.0.1 irq=msix serve=10"
    interface {{ switch "lan" }}
}}
""")
    try:
        deadline = time.monotonic() + 10  # vmd sets switches up right after it opens its socket
        while "vmdtbr0" not in (links := _links(netns)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert links["vmdtbr0"]["linkinfo"]["info_kind"] == "bridge", links  # type: ignore[index]
        assert vmd.vmctl("start", "server").returncode == 0
        assert "serving 10.77.0.1" in vmd.console_until("server", r"serving 10\.77\.0\.1")
        assert vmd.vmctl("start", "client").returncode == 0
        console = vmd.console_until("client", r"ping reply from 10\.77\.0\.1|FAIL")  # serve=10: it stays up to be read
        assert "ping reply from 10.77.0.1" in console, console
        masters = {link.get("master") for link in _links(netns).values()
                   if str(link.get("ifalias", "")).startswith("vm")}
        assert masters == {"vmdtbr0"}
    finally:
        vmd.vmctl("stop", "-a", "-f", "-w")
        vmd.stop()
    assert "vmdtbr0" not in _links(netns)  # vmd created the bridge, so it removed it on exit


def test_taps_go_away_when_the_vm_process_is_killed(netns: str, guests: dict[str, Path]) -> None:
    import signal

    guest = guests["virtio_net"]
    vmd = NetVmd(netns, f"""vm "crashy" {{
    disable
    memory 32M
    boot "{guest}"
    append "tests=dhcp serve=30 irq=msix"
    local interface
    interface
}}
""")
    try:
        assert vmd.vmctl("start", "crashy").returncode == 0
        taps = [name for name, link in _links(netns).items() if str(link.get("ifalias", "")).endswith("-crashy")]
        assert sorted(str(_links(netns)[t]["ifalias"]) for t in taps) == ["vm1-if0-crashy", "vm1-if1-crashy"]
        pid = int(str(vmd.status()["crashy"]["pid"]))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while vmd.status().get("crashy", {}).get("state") != "stopped" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert vmd.status()["crashy"]["state"] == "stopped"
        assert not set(taps) & set(_links(netns)), _links(netns)
        assert vmd.process.poll() is None  # vmd itself runs on
    finally:
        vmd.stop()


def test_reload_takes_down_removed_switches_and_sets_up_new_ones(netns: str) -> None:
    vmd = NetVmd(netns, 'switch "a" {\n    interface vmdtbra\n}\n')
    try:
        deadline = time.monotonic() + 10
        while "vmdtbra" not in _links(netns) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "vmdtbra" in _links(netns)
        vmd.config.write_text('switch "b" {\n    interface vmdtbrb\n}\n')
        assert vmd.vmctl("reload").returncode == 0
        links = _links(netns)
        assert "vmdtbrb" in links and "vmdtbra" not in links, links
    finally:
        vmd.stop()
    assert "vmdtbrb" not in _links(netns)
