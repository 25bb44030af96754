"""virtio-scsi (virtio 1.2, 5.6) with one read-only MMC CD-ROM: target 0, LUN 0, 2048-byte blocks, on an ISO.

As vmd's vioscsi: the CD-ROM identifies as "OpenBSD " / "VMM CD-ROM      " / "001 ", a removable T_CDROM
device; every other target or LUN is VIRTIO_SCSI_S_BAD_TARGET. Without an image the drive is empty and the
media commands answer NOT READY, MEDIUM NOT PRESENT.

Queues (5.6.2): 0 control, 1 event, 2 request, 128 entries each. Requests are handed to a small thread pool,
as virtio-blk does; a READ goes with preadv straight from the image into the guest's data-in buffers, after
the response header (zero copy). Everything a guest supplies is checked: the header and response sizes
against the buffers (a request too short for them is a broken ring: QueueError, DEVICE_NEEDS_RESET), CDB
lengths against cdb_size, allocation lengths against what the data-in buffers hold, LBA ranges against the
medium. Event buffers are held (no event is ever reported: no hotplug, no media change) and returned on
reset. Control requests: task management functions complete after the requests queued before them,
asynchronous notification queries and subscriptions report no supported event.

SCSI references: SPC-4 (INQUIRY and VPD pages, REQUEST SENSE, REPORT LUNS, MODE SENSE, sense data),
SBC-3 (READ CAPACITY, READ), MMC-6 (READ TOC/PMA/ATIP, GET CONFIGURATION, GET EVENT STATUS NOTIFICATION,
READ DISC INFORMATION, MECHANISM STATUS, the capabilities mode page).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from vmd.devices.virtio.pci import VirtioDevice
from vmd.devices.virtio.queue import Chain, QueueError, Virtqueue, copy_into, split_views
from vmd.devices.virtio.workers import RequestWorkers
from vmd.disk.image import DiskImage

log = logging.getLogger("vmd.virtio.scsi")

VIRTIO_ID_SCSI = 8
QUEUE_SIZE = 128
CONTROL_QUEUE, EVENT_QUEUE, REQUEST_QUEUE = 0, 1, 2
WORKERS = 4

# Feature bits (5.6.3): none offered (no INOUT, HOTPLUG, CHANGE or T10_PI)
F_INOUT = 1 << 0
F_HOTPLUG = 1 << 1
F_CHANGE = 1 << 2
F_T10_PI = 1 << 3

# struct virtio_scsi_config (5.6.4) defaults; the driver may write sense_size and cdb_size
DEFAULT_SENSE_SIZE = 96
DEFAULT_CDB_SIZE = 32
MAX_SENSE_SIZE = 256  # bounds on what a driver may write there
MAX_CDB_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2
MAX_SECTORS = 0xFFFF
CMD_PER_LUN = 128
EVENT_INFO_SIZE = 16
CONFIG = struct.Struct("<IIIIIIIHHI")  # num_queues .. max_lun: 36 bytes
CONFIG_SENSE_SIZE_OFFSET = 20
CONFIG_CDB_SIZE_OFFSET = 24

# Request queue (5.6.6.1): struct virtio_scsi_req_cmd, device-readable part: lun[8], id, task_attr, prio, crn,
# then cdb[cdb_size]; device-writable part: sense_len, residual, status_qualifier, status, response, then
# sense[sense_size], then the data-in buffers.
REQ_HEADER = struct.Struct("<8sQBBB")
RESP_HEADER = struct.Struct("<IIHBB")

# Response codes (5.6.6.1)
S_OK = 0
S_OVERRUN = 1
S_ABORTED = 2
S_BAD_TARGET = 3
S_RESET = 4
S_BUSY = 5
S_TRANSPORT_FAILURE = 6
S_TARGET_FAILURE = 7
S_NEXUS_FAILURE = 8
S_FAILURE = 9
S_FUNCTION_SUCCEEDED = 10
S_FUNCTION_REJECTED = 11
S_INCORRECT_LUN = 12
S_FUNCTION_COMPLETE = S_OK

# Control queue (5.6.6.2): request types, TMF subtypes and the request layouts
T_TMF, T_AN_QUERY, T_AN_SUBSCRIBE = 0, 1, 2
TMF_ABORT_TASK, TMF_ABORT_TASK_SET, TMF_CLEAR_ACA, TMF_CLEAR_TASK_SET = 0, 1, 2, 3
TMF_I_T_NEXUS_RESET, TMF_LOGICAL_UNIT_RESET, TMF_QUERY_TASK, TMF_QUERY_TASK_SET = 4, 5, 6, 7
CTRL_TMF = struct.Struct("<II8sQ")  # type, subtype, lun, id; the driver's buffer: u8 response
CTRL_AN = struct.Struct("<I8sI")  # type, lun, event_requested; the driver's buffer: le32 event_actual, u8 response
AN_RESPONSE = struct.Struct("<IB")

# SCSI status codes (SAM-5)
GOOD = 0x00
CHECK_CONDITION = 0x02

# Sense keys and additional sense codes (SPC-4, 4.5.6 and annex D)
NO_SENSE, NOT_READY, MEDIUM_ERROR, ILLEGAL_REQUEST, DATA_PROTECT = 0x00, 0x02, 0x03, 0x05, 0x07
Sense = tuple[int, int, int]
SENSE_INVALID_OPCODE: Sense = (ILLEGAL_REQUEST, 0x20, 0x00)
SENSE_LBA_OUT_OF_RANGE: Sense = (ILLEGAL_REQUEST, 0x21, 0x00)
SENSE_INVALID_FIELD: Sense = (ILLEGAL_REQUEST, 0x24, 0x00)
SENSE_SAVING_UNSUPPORTED: Sense = (ILLEGAL_REQUEST, 0x39, 0x00)
SENSE_REMOVAL_PREVENTED: Sense = (ILLEGAL_REQUEST, 0x53, 0x02)
SENSE_NO_MEDIUM: Sense = (NOT_READY, 0x3A, 0x00)
SENSE_WRITE_PROTECTED: Sense = (DATA_PROTECT, 0x27, 0x00)
SENSE_READ_ERROR: Sense = (MEDIUM_ERROR, 0x11, 0x00)
FIXED_SENSE_LENGTH = 18

# Operation codes
TEST_UNIT_READY = 0x00
REQUEST_SENSE = 0x03
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
MODE_SELECT_6 = 0x15
MODE_SENSE_6 = 0x1A
START_STOP_UNIT = 0x1B
PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
SEEK_10 = 0x2B
WRITE_AND_VERIFY_10 = 0x2E
VERIFY_10 = 0x2F
SYNCHRONIZE_CACHE_10 = 0x35
WRITE_SAME_10 = 0x41
READ_TOC = 0x43
GET_CONFIGURATION = 0x46
GET_EVENT_STATUS_NOTIFICATION = 0x4A
READ_DISC_INFORMATION = 0x51
MODE_SELECT_10 = 0x55
MODE_SENSE_10 = 0x5A
READ_16 = 0x88
WRITE_16 = 0x8A
WRITE_AND_VERIFY_16 = 0x8E
WRITE_SAME_16 = 0x93
SERVICE_ACTION_IN_16 = 0x9E
SAI_READ_CAPACITY_16 = 0x10
REPORT_LUNS = 0xA0
READ_12 = 0xA8
WRITE_12 = 0xAA
WRITE_AND_VERIFY_12 = 0xAE
SET_CD_SPEED = 0xBB
MECHANISM_STATUS = 0xBD
WRITES = frozenset({WRITE_6, WRITE_10, WRITE_12, WRITE_16, WRITE_AND_VERIFY_10, WRITE_AND_VERIFY_12,
                    WRITE_AND_VERIFY_16, WRITE_SAME_10, WRITE_SAME_16})

# The CD-ROM
BLOCK = 2048
TYPE_CDROM = 0x05  # peripheral device type: CD/DVD (SPC-4, table 49)
VENDOR = b"OpenBSD "
PRODUCT = b"VMM CD-ROM      "
REVISION = b"001 "
CD_MAX_BLOCKS = 80 * 60 * 75  # an 80-minute CD; a larger medium is a DVD
PROFILE_NONE, PROFILE_CDROM, PROFILE_DVDROM = 0x0000, 0x0008, 0x0010
MAX_READ = 64 << 20  # one READ may move at most this much (as vmd)
MEDIA_EVENT_NEW_MEDIA = 2


class CheckCondition(Exception):
    """The command ends with CHECK CONDITION and this sense data."""

    def __init__(self, sense: Sense) -> None:
        super().__init__(sense)
        self.sense = sense


@dataclass
class ReadRequest:
    """A READ to be done straight into the data-in buffers."""

    lba: int
    blocks: int


def fixed_sense(sense: Sense) -> bytes:
    """Fixed-format sense data, current error (SPC-4, 4.5.3)."""
    key, asc, ascq = sense
    return struct.pack(">BBBIBIBBBBBB", 0x70, 0, key, 0, FIXED_SENSE_LENGTH - 8, 0, asc, ascq, 0, 0, 0, 0)


def descriptor_sense(sense: Sense) -> bytes:
    """Descriptor-format sense data without descriptors, current error (SPC-4, 4.5.2)."""
    key, asc, ascq = sense
    return struct.pack(">BBBBxxxB", 0x72, key, asc, ascq, 0)


def cdb_length(opcode: int) -> int | None:
    """The CDB size of an operation code's group (SPC-4, 4.2.5.1), None for variable or vendor groups."""
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(opcode >> 5)


def lba_to_msf(lba: int) -> bytes:
    """A logical block address as a reserved byte, minutes, seconds and frames (MMC-6, 4.2.3.1: MSF
    00:02:00 is LBA 0)."""
    frames = lba + 150
    return bytes((0, (frames // (60 * 75)) & 0xFF, (frames // 75) % 60, frames % 75))


def parse_lun(lun: bytes) -> tuple[int, int] | None:
    """The virtio-scsi single-level LUN structure (5.6.6.1): byte 0 is 1, byte 1 the target, bytes 2-3 the
    LUN in flat space addressing (0x4000 | lun) or peripheral addressing; the rest is zero."""
    if lun[0] != 1 or any(lun[4:]):
        return None
    return lun[1], ((lun[2] << 8) | lun[3]) & 0x3FFF


def _be(data: bytes, start: int, length: int) -> int:
    return int.from_bytes(data[start : start + length], "big")


class VirtioScsiCdrom(VirtioDevice):
    device_type = VIRTIO_ID_SCSI
    pci_class = 0x010000  # mass storage, SCSI
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)
    device_features = 0

    def __init__(self, image: DiskImage | None, serial: str = "VMMCD0", workers: int = WORKERS) -> None:
        """image: the ISO (vmd.disk.open_image(path, "raw", writable=False)), or None for an empty drive."""
        self.image = image
        self.blocks = image.size // BLOCK if image is not None else 0
        self.serial = serial.encode("ascii", "replace")[:32]
        self._pool = RequestWorkers("vioscsi", max(1, workers))
        self._state = threading.Lock()
        self._order = threading.Condition()
        self._submitted = 0
        self._in_flight: set[int] = set()
        self._generation = 0
        self._held_events: list[Chain] = []
        self._reset_state()

    def _reset_state(self) -> None:
        with self._state:
            self.sense_size = DEFAULT_SENSE_SIZE
            self.cdb_size = DEFAULT_CDB_SIZE
            self.locked = False
            self._media_event = MEDIA_EVENT_NEW_MEDIA if self.image is not None else 0
            self._held_events = []

    @property
    def has_medium(self) -> bool:
        return self.image is not None

    @property
    def profile(self) -> int:
        if self.image is None:
            return PROFILE_NONE
        return PROFILE_DVDROM if self.blocks > CD_MAX_BLOCKS else PROFILE_CDROM

    # -- configuration (5.6.4) ------------------------------------------------------------------------
    @property
    def config(self) -> bytes:
        return CONFIG.pack(1, SEG_MAX, MAX_SECTORS, CMD_PER_LUN, EVENT_INFO_SIZE, self.sense_size,
                           self.cdb_size, 0, 0, 0)  # one request queue; channel, target and LUN 0 only

    def config_write(self, offset: int, size: int, value: int) -> None:
        if size != 4:
            return
        with self._state:
            if offset == CONFIG_SENSE_SIZE_OFFSET:
                self.sense_size = min(value, MAX_SENSE_SIZE)
            elif offset == CONFIG_CDB_SIZE_OFFSET:
                self.cdb_size = min(value, MAX_CDB_SIZE)

    # -- queues ---------------------------------------------------------------------------------------
    def queue_notify(self, queue: Virtqueue) -> None:
        generation = self._generation
        if queue.index == EVENT_QUEUE:
            self._hold_events(queue)
            return
        while True:
            chain = queue.pop()
            if chain is None:
                return
            with self._order:
                self._submitted += 1
                ticket = self._submitted
                self._in_flight.add(ticket)
            serve = self._serve_request if queue.index == REQUEST_QUEUE else self._serve_control
            self._pool.submit(self._run, serve, queue, chain, ticket, generation)

    def _hold_events(self, queue: Virtqueue) -> None:
        """Event buffers wait for an event (5.6.6.3); none ever comes, so they stay with the device."""
        while True:
            chain = queue.pop()
            if chain is None:
                return
            if chain.readable or chain.writable_length < EVENT_INFO_SIZE:
                raise QueueError("virtio-scsi event buffer is not a writable virtio_scsi_event")
            with self._state:
                if len(self._held_events) >= queue.size:
                    raise QueueError("virtio-scsi event queue: more buffers than the queue holds")
                self._held_events.append(chain)

    def _run(self, serve: Callable[[Chain, int], int], queue: Virtqueue, chain: Chain, ticket: int,
             generation: int) -> None:
        try:
            written = serve(chain, ticket)
        except QueueError as error:
            self.transport.fail(str(error))
            return
        except Exception:  # a bug must neither kill the worker nor leave the request hanging silently
            log.exception("virtio-scsi request failed")
            return
        finally:
            with self._order:
                self._in_flight.discard(ticket)
                self._order.notify_all()
        if generation != self._generation:
            return
        queue.push(chain.head, written)
        self.transport.interrupt(queue)

    # -- the control queue (5.6.6.2) ------------------------------------------------------------------
    def _serve_control(self, chain: Chain, ticket: int) -> int:
        request = b"".join(bytes(view) for view in split_views(chain.readable, 4)[0])
        kind = int.from_bytes(request, "little")
        if kind == T_TMF:
            header = b"".join(bytes(view) for view in split_views(chain.readable, CTRL_TMF.size)[0])
            response_views = split_views(chain.writable, 1)[0]
            _kind, subtype, lun, _tag = CTRL_TMF.unpack(header)
            copy_into(response_views, bytes((self._task_management(subtype, lun, ticket),)))
            return 1
        if kind in (T_AN_QUERY, T_AN_SUBSCRIBE):
            header = b"".join(bytes(view) for view in split_views(chain.readable, CTRL_AN.size)[0])
            response_views = split_views(chain.writable, AN_RESPONSE.size)[0]
            _kind, lun, _requested = CTRL_AN.unpack(header)
            response = S_OK if parse_lun(lun) == (0, 0) else S_BAD_TARGET
            copy_into(response_views, AN_RESPONSE.pack(0, response))  # event_actual: no event class supported
            return AN_RESPONSE.size
        if not chain.writable:
            raise QueueError(f"virtio-scsi control request of unknown type {kind} without a response buffer")
        chain.writable[0][0] = S_FAILURE  # unknown type: the first response byte is the response code
        return 1

    def _task_management(self, subtype: int, lun: bytes, ticket: int) -> int:
        if parse_lun(lun) != (0, 0):
            return S_BAD_TARGET
        if subtype in (TMF_ABORT_TASK, TMF_ABORT_TASK_SET, TMF_CLEAR_TASK_SET, TMF_I_T_NEXUS_RESET,
                       TMF_LOGICAL_UNIT_RESET, TMF_QUERY_TASK, TMF_QUERY_TASK_SET):
            # Requests cannot be stopped half-way, but they finish quickly: let every request queued before
            # this function complete, then nothing is left to abort or to find.
            with self._order:
                self._order.wait_for(lambda: not any(t < ticket for t in self._in_flight), timeout=30)
            if subtype == TMF_LOGICAL_UNIT_RESET:
                with self._state:
                    self.locked = False
            return S_FUNCTION_COMPLETE
        return S_FUNCTION_REJECTED  # CLEAR ACA (no ACA) and anything unknown

    # -- the request queue (5.6.6.1) ------------------------------------------------------------------
    def _serve_request(self, chain: Chain, ticket: int) -> int:
        with self._state:
            cdb_size, sense_size = self.cdb_size, self.sense_size
        header_views, _data_out = split_views(chain.readable, REQ_HEADER.size + cdb_size)
        header = b"".join(bytes(view) for view in header_views)
        lun, _tag, _task_attr, _prio, _crn = REQ_HEADER.unpack_from(header)
        cdb = header[REQ_HEADER.size :]
        response_views, data_in = split_views(chain.writable, RESP_HEADER.size + sense_size)
        data_in_length = sum(len(view) for view in data_in)

        def finish(status: int, sense: bytes = b"", transferred: int = 0, response: int = S_OK) -> int:
            sense = sense[:sense_size]
            copy_into(response_views, RESP_HEADER.pack(len(sense), data_in_length - transferred, 0, status,
                                                       response) + sense.ljust(sense_size, b"\0"))
            return RESP_HEADER.size + sense_size + transferred

        if parse_lun(lun) != (0, 0):
            return finish(GOOD, response=S_BAD_TARGET)
        try:
            result = self.execute(cdb)
        except CheckCondition as check:
            return finish(CHECK_CONDITION, fixed_sense(check.sense))
        if isinstance(result, ReadRequest):
            length = result.blocks * BLOCK
            if length > data_in_length:
                return finish(GOOD, response=S_OVERRUN)
            if length == 0:
                return finish(GOOD)
            assert self.image is not None
            try:
                self.image.preadv(split_views(data_in, length)[0], result.lba * BLOCK)
            except (OSError, ValueError) as error:
                log.warning("cdrom read error at block %d: %s", result.lba, error)
                return finish(CHECK_CONDITION, fixed_sense(SENSE_READ_ERROR))
            return finish(GOOD, transferred=length)
        transferred = copy_into(data_in, result[:data_in_length])
        return finish(GOOD, transferred=transferred)

    # -- SCSI commands --------------------------------------------------------------------------------
    def execute(self, cdb: bytes) -> bytes | ReadRequest:
        """Run one command: its data-in (already cut to the allocation length) or a READ to do. Raises
        CheckCondition."""
        if not cdb:
            raise CheckCondition(SENSE_INVALID_OPCODE)
        opcode = cdb[0]
        length = cdb_length(opcode)
        handler = self._handlers.get(opcode)
        if length is None or (handler is None and opcode not in WRITES):
            raise CheckCondition(SENSE_INVALID_OPCODE)
        if length > len(cdb):
            raise CheckCondition(SENSE_INVALID_FIELD)  # the driver's cdb_size cannot carry this command
        cdb = cdb[:length]
        if opcode in WRITES:
            raise CheckCondition(SENSE_WRITE_PROTECTED)
        assert handler is not None
        return handler(self, cdb)

    def _need_medium(self) -> None:
        if self.image is None:
            raise CheckCondition(SENSE_NO_MEDIUM)

    def _test_unit_ready(self, cdb: bytes) -> bytes:
        self._need_medium()
        return b""

    def _request_sense(self, cdb: bytes) -> bytes:
        sense = SENSE_NO_MEDIUM if self.image is None else (NO_SENSE, 0, 0)
        data = descriptor_sense(sense) if cdb[1] & 1 else fixed_sense(sense)
        return data[: cdb[4]]

    def _inquiry(self, cdb: bytes) -> bytes:
        evpd, page, allocation = cdb[1] & 1, cdb[2], _be(cdb, 3, 2)
        if cdb[1] & 0x02 or (not evpd and page):  # CmdDt is obsolete; a page needs EVPD
            raise CheckCondition(SENSE_INVALID_FIELD)
        if not evpd:
            # Standard INQUIRY data (SPC-4, 6.4.2): removable CD/DVD, SPC-3, response format 2
            data = struct.pack(">BBBBBBBB", TYPE_CDROM, 0x80, 0x05, 0x02, 31, 0, 0, 0) + VENDOR + PRODUCT + REVISION
        elif page == 0x00:  # supported VPD pages (SPC-4, 7.8.13)
            data = bytes((TYPE_CDROM, 0x00, 0, 3, 0x00, 0x80, 0x83))
        elif page == 0x80:  # unit serial number (SPC-4, 7.8.15)
            data = bytes((TYPE_CDROM, 0x80, 0, len(self.serial))) + self.serial
        elif page == 0x83:  # device identification (SPC-4, 7.8.6): one T10 vendor ID designator, ASCII
            designator = VENDOR + PRODUCT.rstrip() + b" " + self.serial
            descriptor = bytes((0x02, 0x01, 0, len(designator))) + designator
            data = struct.pack(">BBH", TYPE_CDROM, 0x83, len(descriptor)) + descriptor
        else:
            raise CheckCondition(SENSE_INVALID_FIELD)
        return data[:allocation]

    def _mode_sense(self, cdb: bytes) -> bytes:
        six = cdb[0] == MODE_SENSE_6
        control, page, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
        allocation = cdb[4] if six else _be(cdb, 7, 2)
        if control == 3:
            raise CheckCondition(SENSE_SAVING_UNSUPPORTED)
        if subpage not in (0x00, 0xFF) or (subpage == 0xFF and page != 0x3F):
            raise CheckCondition(SENSE_INVALID_FIELD)
        pages = self._mode_pages()
        if page == 0x3F:
            chosen = [pages[code] for code in sorted(pages)]
        elif page in pages:
            chosen = [pages[page]]
        else:
            raise CheckCondition(SENSE_INVALID_FIELD)
        if control == 1:  # changeable values: nothing can be changed
            chosen = [body[:2] + bytes(len(body) - 2) for body in chosen]
        body = b"".join(chosen)
        # Mode parameter headers (SPC-4, 7.5.5): no block descriptors
        if six:
            data = bytes((len(body) + 3, 0, 0, 0)) + body
        else:
            data = struct.pack(">HBBxxH", len(body) + 6, 0, 0, 0) + body
        return data[:allocation]

    def _mode_pages(self) -> dict[int, bytes]:
        with self._state:
            locked = self.locked
        return {
            # Read-write error recovery (SBC-3 6.4.9 / MMC-6 7.3): no retries to report, nothing set
            0x01: bytes((0x01, 0x0A)) + bytes(10),
            # MM capabilities and mechanical status (MMC-3 5.5.10; obsolete in MMC-6 but still asked for):
            # reads CD-R, CD-RW and DVD-ROM, writes nothing, multi-session, a tray that locks and ejects
            0x2A: bytes((0x2A, 0x14, 0x0B, 0x00, 0x40, 0x00, 0x29 | (0x02 if locked else 0), 0x00))
            + struct.pack(">HHHH", 40 * 176, 0, 0, 40 * 176) + bytes(6),
        }

    def _start_stop_unit(self, cdb: bytes) -> bytes:
        load_eject, start = cdb[4] & 0x02, cdb[4] & 0x01
        with self._state:
            if load_eject and not start and self.locked:
                raise CheckCondition(SENSE_REMOVAL_PREVENTED)
        return b""  # the image stays in the drive: vmd cannot change a CD-ROM while the VM runs

    def _prevent_allow(self, cdb: bytes) -> bytes:
        with self._state:
            self.locked = bool(cdb[4] & 0x01)
        return b""

    def _read_capacity_10(self, cdb: bytes) -> bytes:
        if not cdb[8] & 0x01 and _be(cdb, 2, 4):  # an LBA without PMI (SBC-3, 5.15.1)
            raise CheckCondition(SENSE_INVALID_FIELD)
        self._need_medium()
        last = max(self.blocks - 1, 0)
        return struct.pack(">II", min(last, 0xFFFF_FFFF), BLOCK)

    def _service_action_in(self, cdb: bytes) -> bytes:
        if cdb[1] & 0x1F != SAI_READ_CAPACITY_16:
            raise CheckCondition(SENSE_INVALID_FIELD)
        self._need_medium()
        # READ CAPACITY (16) parameter data (SBC-3, 5.16.2)
        data = struct.pack(">QI", max(self.blocks - 1, 0), BLOCK) + bytes(20)
        return data[: _be(cdb, 10, 4)]

    def _read(self, cdb: bytes) -> ReadRequest:
        opcode = cdb[0]
        if opcode == READ_6:
            lba, blocks = ((cdb[1] & 0x1F) << 16) | _be(cdb, 2, 2), cdb[4] or 256
        elif opcode == READ_10:
            lba, blocks = _be(cdb, 2, 4), _be(cdb, 7, 2)
        elif opcode == READ_12:
            lba, blocks = _be(cdb, 2, 4), _be(cdb, 6, 4)
        else:
            lba, blocks = _be(cdb, 2, 8), _be(cdb, 10, 4)
        if opcode != READ_6 and cdb[1] & 0xE0:  # RDPROTECT: no protection information here
            raise CheckCondition(SENSE_INVALID_FIELD)
        self._need_medium()
        if lba + blocks > self.blocks:
            raise CheckCondition(SENSE_LBA_OUT_OF_RANGE)
        if blocks * BLOCK > MAX_READ:
            raise CheckCondition(SENSE_INVALID_FIELD)
        return ReadRequest(lba, blocks)

    def _seek(self, cdb: bytes) -> bytes:
        self._need_medium()
        if _be(cdb, 2, 4) >= self.blocks:
            raise CheckCondition(SENSE_LBA_OUT_OF_RANGE)
        return b""

    def _read_toc(self, cdb: bytes) -> bytes:
        msf, fmt, track, allocation = bool(cdb[1] & 0x02), cdb[2] & 0x0F, cdb[6], _be(cdb, 7, 2)
        if fmt == 0:
            fmt = cdb[9] >> 6  # the older place for the format, in the control byte (SFF-8020)
        self._need_medium()

        def address(lba: int) -> bytes:
            return lba_to_msf(lba) if msf else struct.pack(">I", lba)

        if fmt == 0:  # formatted TOC (MMC-6, 6.26.3.2): track 1, data, from LBA 0; then the lead-out
            if track in (0, 1):
                descriptors = [(1, 0), (0xAA, self.blocks)]
            elif track == 0xAA:
                descriptors = [(0xAA, self.blocks)]
            else:
                raise CheckCondition(SENSE_INVALID_FIELD)
            body = b"".join(bytes((0, 0x14, number, 0)) + address(start) for number, start in descriptors)
            data = struct.pack(">HBB", len(body) + 2, 1, 1) + body
        elif fmt == 1:  # multi-session information (MMC-6, 6.26.3.3): one session, starting with track 1
            data = struct.pack(">HBB", 10, 1, 1) + bytes((0, 0x14, 1, 0)) + address(0)
        else:
            raise CheckCondition(SENSE_INVALID_FIELD)
        return data[:allocation]

    def _get_configuration(self, cdb: bytes) -> bytes:
        request_type, start, allocation = cdb[1] & 0x03, _be(cdb, 2, 2), _be(cdb, 7, 2)
        if request_type == 3:
            raise CheckCondition(SENSE_INVALID_FIELD)
        profile = self.profile
        medium = self.image is not None
        cd, dvd = profile == PROFILE_CDROM, profile == PROFILE_DVDROM
        # Feature descriptors (MMC-6, 5.2 and 5.3): code, version, persistent, current, feature data
        features: list[tuple[int, int, bool, bool, bytes]] = [
            (0x0000, 0, True, True,  # profile list: DVD-ROM, then CD-ROM, each flagged if current
             struct.pack(">HBxHBx", PROFILE_DVDROM, int(dvd), PROFILE_CDROM, int(cd))),
            (0x0001, 2, True, True, struct.pack(">IBxxx", 1, 0)),  # core: SCSI family interface
            (0x0002, 1, True, True, bytes(4)),  # morphing: polled event status only
            (0x0003, 0, True, True, bytes((0x29, 0, 0, 0))),  # removable medium: tray, eject, lock
            (0x0010, 0, False, medium, struct.pack(">IHBx", BLOCK, 16 if dvd else 1, 0)),  # random readable
            (0x001E, 2, False, cd, bytes(4)),  # CD read
            (0x001F, 0, False, dvd, b""),  # DVD read
        ]
        body = b""
        for code, version, persistent, current, payload in features:
            if request_type == 2 and code != start:
                continue
            if code < start or (request_type == 1 and not current):
                continue
            flags = (version << 2) | (0x02 if persistent else 0) | (0x01 if current else 0)
            body += struct.pack(">HBB", code, flags, len(payload)) + payload
        data = struct.pack(">IxxH", len(body) + 4, profile) + body  # feature header (MMC-6, 6.6.2.1)
        return data[:allocation]

    def _get_event_status(self, cdb: bytes) -> bytes:
        polled, classes, allocation = cdb[1] & 0x01, cdb[4], _be(cdb, 7, 2)
        if not polled:  # asynchronous notification is not offered
            raise CheckCondition(SENSE_INVALID_FIELD)
        supported = 0x10  # media class only (MMC-6, 6.7.2.2)
        if classes & 0x10:
            with self._state:
                event, self._media_event = self._media_event, 0
            status = 0x02 if self.image is not None else 0x00  # media present, tray closed
            data = struct.pack(">HBB", 4, 0x04, supported) + bytes((event, status, 0, 0))
        else:
            data = struct.pack(">HBB", 0, 0x80, supported)  # no event available (NEA)
        return data[:allocation]

    def _read_disc_information(self, cdb: bytes) -> bytes:
        if cdb[1] & 0x07:  # only standard disc information (MMC-6, 6.22.3.1)
            raise CheckCondition(SENSE_INVALID_FIELD)
        self._need_medium()
        # A finalised single-session disc: complete session, complete disc, tracks 1..1, unrestricted use,
        # CD-ROM disc type, no lead-in/lead-out addresses to report
        data = struct.pack(">HBBBBBBBB", 32, 0x0E, 1, 1, 1, 1, 0x20, 0x00, 0) + bytes(2) \
            + struct.pack(">III", 0, 0xFFFF_FFFF, 0xFFFF_FFFF) + bytes(10)
        return data[: _be(cdb, 7, 2)]

    def _mechanism_status(self, cdb: bytes) -> bytes:
        # Mechanism status header (MMC-6, 6.10.2): no fault, no changer, idle, door closed, no slot tables
        data = bytes(8)
        return data[: _be(cdb, 8, 2)]

    def _report_luns(self, cdb: bytes) -> bytes:
        select, allocation = cdb[2], _be(cdb, 6, 4)
        if select not in (0x00, 0x01, 0x02) or allocation < 16:  # SPC-4, 6.33
            raise CheckCondition(SENSE_INVALID_FIELD)
        luns = bytes(8) if select != 0x01 else b""  # LUN 0; no well-known LUNs
        data = struct.pack(">Ixxxx", len(luns)) + luns
        return data[:allocation]

    def _set_cd_speed(self, cdb: bytes) -> bytes:
        return b""

    _handlers: dict[int, Callable[[VirtioScsiCdrom, bytes], bytes | ReadRequest]] = {
        TEST_UNIT_READY: _test_unit_ready,
        REQUEST_SENSE: _request_sense,
        INQUIRY: _inquiry,
        MODE_SENSE_6: _mode_sense,
        MODE_SENSE_10: _mode_sense,
        START_STOP_UNIT: _start_stop_unit,
        PREVENT_ALLOW_MEDIUM_REMOVAL: _prevent_allow,
        READ_CAPACITY_10: _read_capacity_10,
        SERVICE_ACTION_IN_16: _service_action_in,
        READ_6: _read,
        READ_10: _read,
        READ_12: _read,
        READ_16: _read,
        SEEK_10: _seek,
        READ_TOC: _read_toc,
        GET_CONFIGURATION: _get_configuration,
        GET_EVENT_STATUS_NOTIFICATION: _get_event_status,
        READ_DISC_INFORMATION: _read_disc_information,
        MECHANISM_STATUS: _mechanism_status,
        REPORT_LUNS: _report_luns,
        SET_CD_SPEED: _set_cd_speed,
    }

    # -- lifecycle ------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._generation += 1
        self._reset_state()

    def close(self) -> None:
        self._generation += 1
        self._pool.close()
        if self.image is not None:
            self.image.close()
