"""KVM's binary statistics of a vCPU (Documentation/virt/kvm/api.rst, 4.133 KVM_GET_STATS_FD; Linux 5.14+).

The kernel counts every exit itself, by reason (`io_exits`, `mmio_exits`, `halt_exits`, ...), so the run loop
pays nothing for them: the VM process reads the counters when vmd asks (a pread of the data block).
"""

from __future__ import annotations

import fcntl
import os
import struct

KVM_GET_STATS_FD = 0xAECE  # _IO(KVMIO, 0xce)
HEADER = struct.Struct("<6I")  # struct kvm_stats_header: flags, name_size, num_desc, id/desc/data offsets
DESC = struct.Struct("<IhHII")  # struct kvm_stats_desc: flags, exponent, size, offset, bucket_size; name[]
TYPE_MASK = 0xF  # KVM_STATS_TYPE_MASK: CUMULATIVE 0, INSTANT 1, PEAK 2, ...
TYPE_CUMULATIVE = 0
MAX_DESCRIPTORS = 4096  # far above the ~50 a vCPU has: a bound on what we read from the kernel
EXITS = "exits"  # the total; the reasons are the other cumulative `*_exits` counters


class KvmStatsError(Exception):
    pass


class VcpuStats:
    """The exit counters of one vCPU, read through its stats fd."""

    def __init__(self, vcpu_fd: int) -> None:
        try:
            self.fd = fcntl.ioctl(vcpu_fd, KVM_GET_STATS_FD, 0)
        except OSError as error:
            raise KvmStatsError(f"KVM_GET_STATS_FD: {error.strerror}") from None
        try:
            self._fields, self._data_offset, self._data_size = self._describe()
        except BaseException:
            os.close(self.fd)
            raise

    def _describe(self) -> tuple[list[tuple[str, int]], int, int]:
        """The exit counters (name, offset in the data block), and where the data block is."""
        header = os.pread(self.fd, HEADER.size, 0)
        if len(header) < HEADER.size:
            raise KvmStatsError("short stats header")
        _flags, name_size, count, _id_offset, desc_offset, data_offset = HEADER.unpack(header)
        if count > MAX_DESCRIPTORS or name_size > 256:
            raise KvmStatsError("implausible stats header")
        step = DESC.size + name_size
        table = os.pread(self.fd, step * count, desc_offset)
        fields: list[tuple[str, int]] = []
        end = 0
        for index in range(len(table) // step):
            flags, _exponent, size, offset, _bucket = DESC.unpack_from(table, index * step)
            raw = table[index * step + DESC.size : (index + 1) * step]
            name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
            end = max(end, offset + 8 * size)
            if size == 1 and flags & TYPE_MASK == TYPE_CUMULATIVE and (name == EXITS or name.endswith("_exits")):
                fields.append((name, offset))
        return fields, data_offset, end

    def exits(self) -> dict[str, int]:
        """{"exits": total, "io_exits": ..., ...}, as the kernel has them now."""
        data = os.pread(self.fd, self._data_size, self._data_offset)
        return {name: struct.unpack_from("<Q", data, offset)[0] for name, offset in self._fields
                if offset + 8 <= len(data)}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
