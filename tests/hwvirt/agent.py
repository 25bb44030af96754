"""The test host's agent: runs the commands tests/hwvirt/testhost.py sends over a virtio-serial port.

Started by the test host's /init inside the overlay root, as root. Protocol, JSON lines both ways:
    -> {"op": "run", "argv": [...], "cwd": "...", "env": {...}, "timeout": seconds}
    <- {"out": base64}...  {"report": base64}...  {"alive": seconds}...  {"status": exit status}
    -> {"op": "poweroff"}
Output (stdout and stderr merged) streams as it comes; lines the command writes to the fd named by
$VMD_HWVIRT_REPORT_FD come back as "report" messages; "alive" comes every HEARTBEAT seconds while the command
runs, so the other side can tell a silent command from a hung machine. The command's end is its process's
exit: what it left running (a daemon holding the output pipe) does not keep the answer back.
Standard library only: it runs before anything else.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import sys
import time

PORT_NAME = "vmd.agent"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_COMMAND = 1 << 20
HEARTBEAT = 20.0  # seconds between "alive" messages
DRAIN = 2.0  # seconds to read what is still in the pipes once the command has exited


def find_port() -> str:
    base = "/sys/class/virtio-ports"
    for entry in sorted(os.listdir(base)):
        try:
            with open(os.path.join(base, entry, "name")) as handle:
                if handle.read().strip() == PORT_NAME:
                    return f"/dev/{entry}"
        except OSError:
            continue
    raise SystemExit(f"agent: no virtio port named {PORT_NAME}")


class Channel:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.buffer = b""

    def send(self, message: dict[str, object]) -> None:
        data = json.dumps(message).encode() + b"\n"
        while data:
            written = os.write(self.fd, data)
            data = data[written:]

    def receive(self) -> dict[str, object] | None:
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                time.sleep(0.1)  # the host side is not connected yet
                continue
            self.buffer += chunk
            if len(self.buffer) > MAX_COMMAND:
                self.buffer = b""
                return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            return None
        return message if isinstance(message, dict) else None


def run(channel: Channel, request: dict[str, object]) -> None:
    argv = request.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        channel.send({"error": "run: argv must be a non-empty list of strings"})
        return
    env = dict(os.environ, PATH=PATH)
    extra = request.get("env")
    if isinstance(extra, dict):
        env.update({str(k): str(v) for k, v in extra.items()})
    report_read, report_write = os.pipe()
    env["VMD_HWVIRT_REPORT_FD"] = str(report_write)
    timeout = request.get("timeout")
    deadline = time.monotonic() + (float(timeout) if isinstance(timeout, (int, float)) else 3600.0)
    try:
        process = subprocess.Popen(argv, cwd=str(request.get("cwd") or "/"), env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(report_write,),
                                   start_new_session=True)
    except OSError as error:
        os.close(report_read)
        os.close(report_write)
        channel.send({"out": base64.b64encode(f"agent: {argv[0]}: {error.strerror}\n".encode()).decode()})
        channel.send({"status": 127})
        return
    os.close(report_write)
    assert process.stdout is not None
    streams = {process.stdout.fileno(): "out", report_read: "report"}
    pending = {report_read: b""}
    timed_out = False
    started = beat = time.monotonic()
    exited_at: float | None = None
    while streams:
        now = time.monotonic()
        left = deadline - now
        if left <= 0 and not timed_out:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
        if now - beat >= HEARTBEAT:
            beat = now
            channel.send({"alive": round(now - started)})
        if exited_at is None and process.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > DRAIN:
            break  # something the command started still holds a pipe: the command itself is over
        ready, _, _ = select.select(list(streams), [], [], max(0.1, min(left, HEARTBEAT, 1.0)))
        for fd in ready:
            data = os.read(fd, 1 << 16)
            if not data:
                del streams[fd]
                continue
            if streams[fd] == "out":
                channel.send({"out": base64.b64encode(data).decode()})
            else:
                pending[fd] += data
                *lines, pending[fd] = pending[fd].split(b"\n")
                for line in lines:
                    channel.send({"report": base64.b64encode(line).decode()})
    process.stdout.close()
    os.close(report_read)
    status = process.wait()
    if timed_out:
        channel.send({"out": base64.b64encode(b"\nagent: timed out, killed\n").decode()})
        status = 124
    channel.send({"status": status if status >= 0 else 128 - status})


def main() -> int:
    channel = Channel(find_port())
    channel.send({"hello": "vmd-testhost-agent", "kernel": os.uname().release})
    while True:
        request = channel.receive()
        if request is None:
            channel.send({"error": "bad request"})
            continue
        if request.get("op") == "poweroff":
            os.sync()
            return 0
        if request.get("op") == "run":
            run(channel, request)
        else:
            channel.send({"error": f"unknown op {request.get('op')!r}"})


if __name__ == "__main__":
    sys.exit(main())
