/*
 * vmd._runloop: the vCPU run loop in C, for the exit hot path.
 *
 * run(fd, run_mmap, pio_bus, mmio_bus) -> exit reason
 *
 * Same contract as vmd.vcpu_loop.python_run_loop: loops on KVM_RUN with the GIL released, serves
 * KVM_EXIT_IO and KVM_EXIT_MMIO by calling the device handlers found through Bus.find(address), and
 * returns any other exit reason (KVM_EXIT_INTR when KVM_RUN was interrupted by a signal or
 * immediate_exit). The kvm_run layout is Documentation/virt/kvm/api.rst section 5.
 * A one-entry cache per bus skips Bus.find while the same device keeps being hit and the bus's
 * `version` attribute has not changed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

typedef struct {
    PyObject *bus;
    PyObject *find;      /* bound Bus.find */
    PyObject *version;   /* the bus version the cache was filled at */
    uint64_t start, end;
    PyObject *read, *write;
} bus_cache;

static PyObject *version_name;

static void cache_clear(bus_cache *c)
{
    Py_CLEAR(c->find);
    Py_CLEAR(c->version);
    Py_CLEAR(c->read);
    Py_CLEAR(c->write);
    c->start = c->end = 0;
}

/* Look up the handlers for address: 1 found, 0 unclaimed, -1 with a Python error set. */
static int lookup(bus_cache *c, uint64_t address)
{
    PyObject *version = PyObject_GetAttr(c->bus, version_name);
    if (version == NULL)
        return -1;
    if (c->read != NULL && version == c->version && address >= c->start && address < c->end) {
        Py_DECREF(version);
        return 1;
    }
    Py_CLEAR(c->read);
    Py_CLEAR(c->write);
    Py_XSETREF(c->version, version);
    PyObject *key = PyLong_FromUnsignedLongLong(address);
    if (key == NULL)
        return -1;
    PyObject *entry = PyObject_CallOneArg(c->find, key);
    Py_DECREF(key);
    if (entry == NULL)
        return -1;
    if (entry == Py_None) {
        Py_DECREF(entry);
        return 0;
    }
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4) {
        Py_DECREF(entry);
        PyErr_SetString(PyExc_TypeError, "Bus.find must return (start, end, read, write) or None");
        return -1;
    }
    c->start = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 0));
    c->end = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 1));
    if (PyErr_Occurred()) {
        Py_DECREF(entry);
        return -1;
    }
    c->read = Py_NewRef(PyTuple_GET_ITEM(entry, 2));
    c->write = Py_NewRef(PyTuple_GET_ITEM(entry, 3));
    Py_DECREF(entry);
    return 1;
}

static uint64_t load_le(const uint8_t *p, unsigned size)
{
    uint64_t value = 0;
    for (unsigned i = 0; i < size; i++)
        value |= (uint64_t)p[i] << (8 * i);
    return value;
}

static void store_le(uint8_t *p, unsigned size, uint64_t value)
{
    for (unsigned i = 0; i < size; i++)
        p[i] = (uint8_t)(value >> (8 * i));
}

/* One access through the bus: 0 on success, -1 with a Python error set. */
static int bus_access(bus_cache *c, uint64_t address, unsigned size, int is_write, uint8_t *data)
{
    int found = lookup(c, address);
    if (found < 0)
        return -1;
    if (!found) {
        if (!is_write)
            memset(data, 0xff, size);
        return 0;
    }
    PyObject *offset = PyLong_FromUnsignedLongLong(address - c->start);
    PyObject *width = PyLong_FromUnsignedLong(size);
    PyObject *result;
    if (offset == NULL || width == NULL) {
        Py_XDECREF(offset);
        Py_XDECREF(width);
        return -1;
    }
    if (is_write) {
        PyObject *value = PyLong_FromUnsignedLongLong(load_le(data, size));
        if (value == NULL) {
            Py_DECREF(offset);
            Py_DECREF(width);
            return -1;
        }
        PyObject *args[3] = {offset, width, value};
        result = PyObject_Vectorcall(c->write, args, 3, NULL);
        Py_DECREF(value);
    } else {
        PyObject *args[2] = {offset, width};
        result = PyObject_Vectorcall(c->read, args, 2, NULL);
    }
    Py_DECREF(offset);
    Py_DECREF(width);
    if (result == NULL)
        return -1;
    if (!is_write) {
        uint64_t value = PyLong_AsUnsignedLongLongMask(result);
        if (PyErr_Occurred()) {
            Py_DECREF(result);
            return -1;
        }
        store_le(data, size, value);
    }
    Py_DECREF(result);
    return 0;
}

static PyObject *run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "run(fd, run_mmap, pio_bus, mmio_bus)");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if ((size_t)view.len < sizeof(struct kvm_run)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "run_mmap is smaller than struct kvm_run");
        return NULL;
    }
    struct kvm_run *kr = view.buf;
    bus_cache pio = {.bus = args[2]}, mmio = {.bus = args[3]};
    PyObject *reason_obj = NULL;
    pio.find = PyObject_GetAttrString(pio.bus, "find");
    mmio.find = PyObject_GetAttrString(mmio.bus, "find");
    if (pio.find == NULL || mmio.find == NULL)
        goto out;

    for (;;) {
        int rc, saved_errno;
        Py_BEGIN_ALLOW_THREADS
        rc = ioctl(fd, KVM_RUN, 0);
        saved_errno = errno;
        Py_END_ALLOW_THREADS
        if (rc < 0) {
            if (saved_errno == EINTR || saved_errno == EAGAIN) {
                reason_obj = PyLong_FromLong(KVM_EXIT_INTR);
                break;
            }
            errno = saved_errno;
            PyErr_SetFromErrno(PyExc_OSError);
            break;
        }
        uint32_t reason = kr->exit_reason;
        if (reason == KVM_EXIT_IO) {
            uint8_t *data = (uint8_t *)kr + kr->io.data_offset;
            unsigned size = kr->io.size;
            if (size > 8 || kr->io.data_offset + (uint64_t)size * kr->io.count > (uint64_t)view.len) {
                reason_obj = PyLong_FromLong(reason);
                break;
            }
            int failed = 0;
            for (uint32_t i = 0; i < kr->io.count && !failed; i++)
                failed = bus_access(&pio, kr->io.port, size, kr->io.direction == KVM_EXIT_IO_OUT, data + i * size);
            if (failed)
                break;
        } else if (reason == KVM_EXIT_MMIO) {
            unsigned size = kr->mmio.len;
            if (size == 0 || size > 8) {
                reason_obj = PyLong_FromLong(reason);
                break;
            }
            if (bus_access(&mmio, kr->mmio.phys_addr, size, kr->mmio.is_write, kr->mmio.data) < 0)
                break;
        } else {
            reason_obj = PyLong_FromLong(reason);
            break;
        }
    }
out:
    cache_clear(&pio);
    cache_clear(&mmio);
    PyBuffer_Release(&view);
    return reason_obj;
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
     "run(fd, run_mmap, pio_bus, mmio_bus) -> exit reason: KVM_RUN until an exit the caller must handle"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vmd._runloop", "The vCPU run loop in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__runloop(void)
{
    version_name = PyUnicode_InternFromString("version");
    if (version_name == NULL)
        return NULL;
    return PyModule_Create(&module);
}
