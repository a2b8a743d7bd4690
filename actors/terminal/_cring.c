/* The compiled core of actors/terminal/ring.py's `SessionRing.fill`: a keeper's turn of reads
   from a PTY master into the session's ring, in one call.

   A turn reads 4 KiB at a time (the PTY's line discipline hands over no more per read), and in
   Python each read cost some 4 µs beside its syscalls: the canary built from a big integer,
   the ring's region sliced into memoryviews, the header cells stored through ctypes. A `cat`
   of 50 MB is 12,000 such reads: on a raw PTY it ran 51-54 MB/s so, 72-83 here, where the
   same steps run in C, in the same order, with the GIL released. ring.py's `_fill_python` is
   the fallback and the reference; tests/test_ring_core.py holds both to the same bytes.

   Each read, as ring.py's module docstring explains: never more than FIONREAD counts (a PTY
   master then returns all of it), and first written down in the header (the canary in the
   target's first bytes and in two cells, the offset, then the length), so that a successor
   of a keeper killed mid-read knows whether the read happened. Each cell has one writer and
   is stored whole, in program order (release stores: x86 keeps them in order anyway). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

/* ring.py's layout: the header's size, and the cells this writes */
#define HEADER 128
#define C_WRITE 2
#define C_INTENT_OFF 5
#define C_INTENT_LEN 6
#define C_CANARY 8
#define READ_CHUNK 65536

static inline void store(volatile uint64_t *cells, int i, uint64_t v) {
    __atomic_store_n(&cells[i], v, __ATOMIC_RELEASE);
}

static inline uint64_t load(volatile uint64_t *cells, int i) {
    return __atomic_load_n(&cells[i], __ATOMIC_ACQUIRE);
}

/* ring.py's _canary(off)[:k] in `can` (zeros after k), for a read at `off`: 0xFF, then the
   120-bit seed xor the offset, little-endian. */
static void canary(uint64_t seed_lo, uint64_t seed_hi, uint64_t off, size_t k,
                   unsigned char can[16]) {
    uint64_t lo = seed_lo ^ off;
    can[0] = 0xFF;
    for (int i = 0; i < 8; i++)
        can[1 + i] = (unsigned char)(lo >> (8 * i));
    for (int i = 0; i < 7; i++)
        can[9 + i] = (unsigned char)(seed_hi >> (8 * i));
    memset(can + k, 0, 16 - k);
}

/* FIONREAD of `fd` into *avail; -1 with errno set on failure (EINTR: asked again). */
static int counted(int fd, int *avail) {
    int r;
    do
        r = ioctl(fd, FIONREAD, avail);
    while (r < 0 && errno == EINTR);
    return r;
}

/* One read of `n` bytes at the ring's write offset, written down first; returns what readv
   returned (-1 with errno set: nothing committed). */
static ssize_t read_one(volatile uint64_t *cells, unsigned char *data, uint64_t cap, int fd,
                        size_t n, uint64_t seed_lo, uint64_t seed_hi) {
    uint64_t off = load(cells, C_WRITE);
    size_t pos = (size_t)(off % cap);
    size_t first = n < cap - pos ? n : (size_t)(cap - pos);
    size_t k = n < 16 ? n : 16;
    unsigned char can[16];
    uint64_t c0, c1;
    struct iovec iov[2] = {{data + pos, first}, {data, n - first}};

    canary(seed_lo, seed_hi, off, k, can);
    for (size_t i = 0; i < k; i++) /* the canary may itself wrap */
        data[(pos + i) % cap] = can[i];
    memcpy(&c0, can, 8);
    memcpy(&c1, can + 8, 8);
    store(cells, C_CANARY, c0);
    store(cells, C_CANARY + 1, c1);
    store(cells, C_INTENT_OFF, off);
    store(cells, C_INTENT_LEN, n);
    ssize_t got = readv(fd, iov, first < n ? 2 : 1);
    if (got < 0) {
        int saved = errno;
        store(cells, C_INTENT_LEN, 0); /* (a read that failed read nothing) */
        errno = saved;
        return -1;
    }
    store(cells, C_WRITE, off + (uint64_t)got); /* committed first: then the intent is stale */
    store(cells, C_INTENT_LEN, 0);
    return got;
}

/* fill(map, cap, fd, room, batch, seed_lo, seed_hi) -> (got, end): ring.py's _fill_python. */
static PyObject *fill(PyObject *self, PyObject *args) {
    Py_buffer map;
    unsigned long long cap, seed_lo, seed_hi;
    long long room, batch;
    int fd;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*KiLLKK", &map, &cap, &fd, &room, &batch, &seed_lo,
                          &seed_hi))
        return NULL;
    if (cap == 0 || (unsigned long long)map.len < HEADER + cap) {
        PyBuffer_Release(&map);
        PyErr_SetString(PyExc_ValueError, "the map is smaller than a ring of that cap");
        return NULL;
    }
    volatile uint64_t *cells = (volatile uint64_t *)map.buf;
    unsigned char *data = (unsigned char *)map.buf + HEADER;
    long long got = 0;
    int end = -1; /* -1: stopped for want of bytes or room; 0: end of file; else errno */

    /* A read never wraps onto itself: room comes from cells any holder can write. */
    if (room > (long long)cap)
        room = (long long)cap;

    Py_BEGIN_ALLOW_THREADS
    while (room > 0 && got < batch) {
        int avail = 0;
        if (counted(fd, &avail) < 0) {
            end = errno == EAGAIN ? -1 : errno;
            break;
        }
        if (avail <= 0 && got)
            break; /* the loop's epoll wakes the keeper for the rest: ring.py's _fill_python
                      says why it does not poll here first */
        /* (nothing counted on the first read: the wake-up was the hang-up; its EIO says so) */
        long long n = avail > 0 ? avail : 1;
        if (n > READ_CHUNK)
            n = READ_CHUNK;
        if (n > room)
            n = room;
        ssize_t r = read_one(cells, data, cap, fd, (size_t)n, seed_lo, seed_hi);
        if (r < 0) {
            if (errno == EINTR) /* (nothing was read: the intent is cleared) */
                continue;
            end = errno == EAGAIN ? -1 : errno;
            break;
        }
        if (r == 0) {
            end = 0;
            break;
        }
        got += r;
        room -= r;
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&map);
    return Py_BuildValue("(Li)", got, end);
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS,
     "fill(map, cap, fd, room, batch, seed_lo, seed_hi) -> (got, end): a turn of reads of a "
     "PTY master into a ring (actors/terminal/ring.py's SessionRing.fill)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cring",
    "The compiled core of actors/terminal/ring.py's SessionRing.fill.", -1, methods,
};

PyMODINIT_FUNC PyInit__cring(void) { return PyModule_Create(&module); }
