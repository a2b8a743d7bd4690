/* The compiled fast paths of the watcher's file service (files.py), each the common case of
 * a Python method in one call, which leaves everything else to that method.
 *
 *     read_cached(path, offset, length, max_read) -> (data, stat_result) | None
 *
 * The loop's page-cache read: what `FileService.read_file` does with `wait` false for the
 * common file (regular, not empty, within the read limit, all of it in the page cache). In
 * Python that read was seven calls of the os module and a ctypes call: the open without
 * symlinks (openat2, whose ctypes call cost twice the syscall), the two fstats around the
 * read (each an os.stat_result), a preadv into a bytearray copied to bytes, the close: 25 of
 * a cache-missing fs.read's 50 us in process, and each of them slower still on a loop just
 * woken. Here they are the syscalls alone, and the data is read into the bytes it is returned
 * in. `length` -1 is to the end of the file. None means "take the Python path", which then
 * does it all again and says why: openat2 refused (no such call, a filter, a symlink on the
 * way), not a regular file, empty (a pseudo file that tells no size), more than `max_read`,
 * not all in the page cache or no RWF_NOWAIT, a short read, a change between the two fstats
 * (torn). Any other failure of the open is its OSError, as Python's open raises it.
 *
 *     write_plain(parent, name, data) -> stat_result | None
 *
 * A worker's write in place (`FileService._write` with no temporary file and no
 * if_match) of a regular file or a new one: the directory opened without symlinks, the
 * name's lstat, the open, the reservation of the room for the new bytes (fallocate, as
 * files.py's `_make_room`: a full disk fails it before any old byte is overwritten), write,
 * truncate and fstats, all with the GIL released once. In Python each of those calls let
 * the GIL go and took it back, and every take waited for the watcher's loop, which holds it
 * while it serves requests: three futex calls on the loop per write, and the loop's time
 * shared out with the workers' waits. None: the Python path (openat2 refused; the name is
 * a directory, a symlink or a special file, which it refuses by name; a file swapped for a
 * special one; a new file made by another writer since the lstat; no room for the file or
 * its bytes, the file put back as it was first: the Python path then answers the error and
 * says the file is as it was). Any other failure is its OSError (one of room, then, came
 * after the first byte: where the file system cannot reserve). A new file is made 0666
 * under the umask, as the Python path and any other program make one. The stat_result is
 * the fstat right after the write (no fsync between): whether it is our version is the
 * caller's to judge (its size).
 *
 * Every stat_result is the one os.fstat would give (the tests compare every field).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
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

/* `path` (a real path, inside a root) opened with `flags` without following any symlink on
 * the way, as FileService's `open` does; -2 where openat2 refuses (no such call, a filter, a
 * symlink on the way: the caller then takes the Python path, which opens and checks the
 * descriptor itself), -1 with errno set on any other failure. */
static int
open_no_symlinks(const char *path, int flags)
{
    struct open_how how;
    int fd;

    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)flags;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd < 0 && (errno == ENOSYS || errno == EPERM || errno == ELOOP || errno == E2BIG ||
                   errno == EINVAL || errno == EXDEV || errno == EAGAIN))
        return -2;
    return fd;
}

PyDoc_STRVAR(read_cached_doc,
"read_cached(path, offset, length, max_read) -> (data, stat_result) | None\n\n"
"FileService.read_file's page-cache read of a regular file, in one call (see the module).");

static PyObject *
read_cached(PyObject *module, PyObject *args)
{
    PyObject *path_bytes = NULL, *data = NULL, *st_obj, *out = NULL;
    Py_ssize_t offset, length, max_read, n, got;
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
    fd = open_no_symlinks(PyBytes_AS_STRING(path_bytes), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    int e = errno;  /* (kept across the release below) */
    Py_DECREF(path_bytes);
    if (fd == -2)
        Py_RETURN_NONE;
    if (fd < 0) {
        errno = e;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyTuple_GET_ITEM(args, 0));
    }
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

PyDoc_STRVAR(write_plain_doc,
"write_plain(parent, name, data) -> stat_result | None\n\n"
"FileService._write's write in place of a regular (or new) file, in one call with\n"
"the GIL released once (see the module).");

static int
no_room(int e)
{
    return e == ENOSPC || e == EDQUOT;
}

/* Reserve the room for `len` bytes from the start of the open file `fd`, whose fstat after
 * the open was `opened` (`made`: that open created it, as `name` in `dfd`), as files.py's
 * `_make_room` does. 0: reserved, or the file system cannot reserve (the write goes on
 * without); 1: it failed and the file is put back as it was (its size, which a reservation
 * that ran out partway may have grown, or no file at all for one it made), for the Python
 * path to try again and say so; -1 with errno set: it failed and could not be put back. */
static int
reserve(int dfd, const char *name, int fd, const struct stat *opened, int made, off_t len)
{
    struct stat now;
    int r, e;

    if (len == 0)
        return 0;
    do {  /* (the size left: it grows as the bytes are written, never with zeros first) */
        r = fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, len);
    } while (r < 0 && errno == EINTR);
    if (r == 0 || errno == EOPNOTSUPP || errno == ENOSYS)
        return 0;
    e = errno;
    if (made) {
        if (fstatat(dfd, name, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
            now.st_ino == opened->st_ino && unlinkat(dfd, name, 0) < 0)
            goto stuck;
    } else if (ftruncate(fd, opened->st_size) < 0) {  /* (blocks taken past its size too) */
        goto stuck;
    }
    return 1;
stuck:
    errno = e;
    return -1;
}

static PyObject *
write_plain(PyObject *module, PyObject *args)
{
    PyObject *parent_bytes = NULL, *name_bytes = NULL, *filename = NULL;
    Py_buffer data;
    struct stat cur, after;
    int dfd = -1, fd = -1, existed = 0, err = 0, python = 0, at_name = 0;

    (void)module;
    if (!PyArg_ParseTuple(args, "O&O&y*:write_plain", PyUnicode_FSConverter, &parent_bytes,
                          PyUnicode_FSConverter, &name_bytes, &data))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    dfd = open_no_symlinks(PyBytes_AS_STRING(parent_bytes),
                           O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd == -2) {
        python = 1;
    } else if (dfd < 0) {
        err = errno;
    } else {
        at_name = 1;  /* (an error from here on is the name's) */
        if (fstatat(dfd, PyBytes_AS_STRING(name_bytes), &cur, AT_SYMLINK_NOFOLLOW) == 0)
            existed = 1;
        else if (errno != ENOENT)
            err = errno;
        if (!err && existed && !S_ISREG(cur.st_mode)) {
            python = 1;  /* a directory, symlink or special file: refused by name there */
        } else if (!err) {
            /* O_NONBLOCK: a FIFO swapped in since the lstat fails the open, not waits;
               O_EXCL: a new file is one this open made (a failed reservation removes it) */
            fd = openat(dfd, PyBytes_AS_STRING(name_bytes),
                        O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK |
                        (existed ? 0 : O_EXCL),
                        existed ? (cur.st_mode & 07777) : 0666);  /* new: the umask's */
            if (fd < 0) {
                if (no_room(errno) || (!existed && errno == EEXIST))
                    python = 1;  /* nothing made: the Python path says why */
                else
                    err = errno;
            } else if (fstat(fd, &after) < 0) {
                err = errno;
            } else if (!S_ISREG(after.st_mode)) {
                python = 1;
            } else {
                int r = reserve(dfd, PyBytes_AS_STRING(name_bytes), fd, &after, !existed,
                                (off_t)data.len);
                if (r > 0)
                    python = 1;
                else if (r < 0)
                    err = errno;
            }
        }
        if (fd >= 0 && !err && !python) {
            const char *p = data.buf;
            Py_ssize_t left = data.len;
            while (left > 0) {
                ssize_t n = write(fd, p, (size_t)left);
                if (n < 0) {
                    if (errno == EINTR)
                        continue;
                    err = errno;
                    break;
                }
                p += n;
                left -= n;
            }
            /* overwritten, then what is left over cut: truncating to zero first would
               make ext4 flush the file on close (its replace-via-truncate heuristic) */
            if (!err && existed && cur.st_size > data.len && ftruncate(fd, data.len) < 0)
                err = errno;
            if (!err && fstat(fd, &after) < 0)
                err = errno;
        }
        if (fd >= 0)
            close(fd);
        close(dfd);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (err) {
        if (!at_name) {
            filename = Py_NewRef(PyTuple_GET_ITEM(args, 0));
        } else {
            PyObject *joined = PyBytes_FromFormat("%s/%s", PyBytes_AS_STRING(parent_bytes),
                                                  PyBytes_AS_STRING(name_bytes));
            filename = joined == NULL ? NULL : PyUnicode_DecodeFSDefaultAndSize(
                PyBytes_AS_STRING(joined), PyBytes_GET_SIZE(joined));
            Py_XDECREF(joined);
        }
        Py_DECREF(parent_bytes);
        Py_DECREF(name_bytes);
        if (filename == NULL)
            return NULL;
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, filename);
        Py_DECREF(filename);
        return NULL;
    }
    Py_DECREF(parent_bytes);
    Py_DECREF(name_bytes);
    if (python)
        Py_RETURN_NONE;
    return stat_result(&after);
}

static PyMethodDef methods[] = {
    {"read_cached", read_cached, METH_VARARGS, read_cached_doc},
    {"write_plain", write_plain, METH_VARARGS, write_plain_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cfile",
    "The compiled fast paths of the watcher's file service (see files.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cfile(void)
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
