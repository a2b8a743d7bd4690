/* The compiled fast path of the watcher's file read on its loop: `read_cached`, what
 * files.py's `FileService.read_file` does with `wait` false for the common file (regular, not
 * empty, within the read limit, all of it in the page cache), in one call.
 *
 * In Python that read was seven calls of the os module and a ctypes call: the open without
 * symlinks (openat2, whose ctypes call cost twice the syscall), the two fstats around the
 * read (each an os.stat_result), a preadv into a bytearray copied to bytes, the close: 25 of
 * a cache-missing fs.read's 50 us in process, and each of them slower still on a loop just
 * woken. Here they are the syscalls alone, and the data is read into the bytes it is returned
 * in.
 *
 *     read_cached(path, offset, length, max_read) -> (data, stat_result) | None
 *
 * `length` -1 is to the end of the file. None means "take the Python path", which then does
 * it all again and says why: openat2 refused (no such call, a filter, a symlink on the way),
 * not a regular file, empty (a pseudo file that tells no size), more than `max_read`, not all
 * in the page cache or no RWF_NOWAIT, a short read, a change between the two fstats (torn).
 * Any other failure of the open is its OSError, as Python's open raises it. The stat_result
 * is the one os.fstat would give after the read (the tests compare every field).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

static PyTypeObject *stat_result_type;  /* os.stat_result */

static PyObject *
time_float(const struct timespec *t)
{
    return PyFloat_FromDouble((double)t->tv_sec + t->tv_nsec * 1e-9);  /* as os.stat does */
}

/* os.stat_result of `st`, field for field as posixmodule's _pystat_fromstructstat fills it:
 * mode, ino, dev, nlink, uid, gid, size, the three times as int seconds, as floats and in
 * ns, then blksize, blocks, rdev. */
static PyObject *
stat_result(const struct stat *st)
{
    PyObject *v = PyStructSequence_New(stat_result_type);
    const struct timespec *times[3] = {&st->st_atim, &st->st_mtim, &st->st_ctim};
    if (v == NULL)
        return NULL;
    PyStructSequence_SET_ITEM(v, 0, PyLong_FromLong((long)st->st_mode));
    PyStructSequence_SET_ITEM(v, 1, PyLong_FromUnsignedLongLong(st->st_ino));
    PyStructSequence_SET_ITEM(v, 2, PyLong_FromUnsignedLongLong(st->st_dev));
    PyStructSequence_SET_ITEM(v, 3, PyLong_FromLong((long)st->st_nlink));
    PyStructSequence_SET_ITEM(v, 4, PyLong_FromUnsignedLong(st->st_uid));
    PyStructSequence_SET_ITEM(v, 5, PyLong_FromUnsignedLong(st->st_gid));
    PyStructSequence_SET_ITEM(v, 6, PyLong_FromLongLong(st->st_size));
    for (int k = 0; k < 3; k++) {
        PyStructSequence_SET_ITEM(v, 7 + k, PyLong_FromLongLong(times[k]->tv_sec));
        PyStructSequence_SET_ITEM(v, 10 + k, time_float(times[k]));
        PyStructSequence_SET_ITEM(v, 13 + k, PyLong_FromLongLong(
            (long long)times[k]->tv_sec * 1000000000LL + times[k]->tv_nsec));
    }
    PyStructSequence_SET_ITEM(v, 16, PyLong_FromLong((long)st->st_blksize));
    PyStructSequence_SET_ITEM(v, 17, PyLong_FromLong((long)st->st_blocks));
    PyStructSequence_SET_ITEM(v, 18, PyLong_FromLong((long)st->st_rdev));
    for (Py_ssize_t k = 0; k < 19; k++) {
        if (PyStructSequence_GET_ITEM(v, k) == NULL) {
            Py_DECREF(v);
            return NULL;
        }
    }
    return v;
}

static int
same_version(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

PyDoc_STRVAR(read_cached_doc,
"read_cached(path, offset, length, max_read) -> (data, stat_result) | None\n\n"
"FileService.read_file's page-cache read of a regular file, in one call (see the module).");

static PyObject *
read_cached(PyObject *module, PyObject *args)
{
    PyObject *path_bytes = NULL, *data = NULL, *st_obj, *out = NULL;
    Py_ssize_t offset, length, max_read, n, got;
    struct open_how how;
    struct stat before, after;
    struct iovec iov;
    long long end;
    int fd;

    (void)module;
    if (!PyArg_ParseTuple(args, "O&nnn:read_cached", PyUnicode_FSConverter, &path_bytes,
                          &offset, &length, &max_read))
        return NULL;
    if (offset < 0 || length < -1) {
        Py_DECREF(path_bytes);
        PyErr_SetString(PyExc_ValueError, "read_cached: offset >= 0, length >= -1");
        return NULL;
    }
    memset(&how, 0, sizeof how);
    how.flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    fd = (int)syscall(SYS_openat2, AT_FDCWD, PyBytes_AS_STRING(path_bytes), &how, sizeof how);
    if (fd < 0) {
        int e = errno;
        if (e == ENOSYS || e == EPERM || e == ELOOP || e == E2BIG || e == EINVAL ||
            e == EXDEV || e == EAGAIN) {
            Py_DECREF(path_bytes);
            Py_RETURN_NONE;
        }
        errno = e;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError,
                                             PyTuple_GET_ITEM(args, 0));
        Py_DECREF(path_bytes);
        return NULL;
    }
    Py_DECREF(path_bytes);
    if (fstat(fd, &before) < 0 || !S_ISREG(before.st_mode) || before.st_size == 0)
        goto python;
    end = length < 0 ? before.st_size : (offset + (long long)length < before.st_size ?
                                          offset + (long long)length : before.st_size);
    n = end > offset ? (Py_ssize_t)(end - offset) : 0;
    if (n > max_read)
        goto python;
    data = PyBytes_FromStringAndSize(NULL, n);
    if (data == NULL)
        goto fail;
    if (n) {
        iov.iov_base = PyBytes_AS_STRING(data);
        iov.iov_len = (size_t)n;
        got = preadv2(fd, &iov, 1, offset, RWF_NOWAIT);
        if (got != n)  /* not all in the page cache, no RWF_NOWAIT, or shorter now */
            goto python;
    }
    if (fstat(fd, &after) < 0 || !same_version(&before, &after))
        goto python;
    close(fd);
    st_obj = stat_result(&after);
    if (st_obj == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    out = PyTuple_Pack(2, data, st_obj);
    Py_DECREF(data);
    Py_DECREF(st_obj);
    return out;

python:
    close(fd);
    Py_XDECREF(data);
    Py_RETURN_NONE;
fail:
    close(fd);
    return NULL;
}

static PyMethodDef methods[] = {
    {"read_cached", read_cached, METH_VARARGS, read_cached_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cread",
    "The compiled page-cache read of the watcher's loop (see files.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cread(void)
{
    PyObject *os = PyImport_ImportModule("os");
    if (os == NULL)
        return NULL;
    stat_result_type = (PyTypeObject *)PyObject_GetAttrString(os, "stat_result");
    Py_DECREF(os);
    if (stat_result_type == NULL)
        return NULL;
    /* The layout filled above, or no module (files.py then reads in Python). */
    PyObject *n = PyObject_GetAttrString((PyObject *)stat_result_type, "n_fields");
    PyObject *seq = PyObject_GetAttrString((PyObject *)stat_result_type, "n_sequence_fields");
    int ok = PyType_Check(stat_result_type) && n != NULL && seq != NULL &&
             PyLong_AsLong(n) == 19 && PyLong_AsLong(seq) == 10;
    Py_XDECREF(n);
    Py_XDECREF(seq);
    if (!ok) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ImportError, "os.stat_result is not the layout this fills");
        return NULL;
    }
    return PyModule_Create(&module_def);
}
