/* The compiled core of the watcher's tree walk: `walk`, as snapshot.py's `walk_python` does
 * it (the contract is written there, and the tests hold the two to the same results).
 *
 * A walk of a 100,000-file tree is 100,000 lstats; in Python each also made a DirEntry, an
 * os.stat_result of nineteen fields and the packed stat from six of them, and that was most
 * of its time. Here the reads and the lstats of a batch of entries run without the GIL
 * (the loop serves meanwhile: a watch's walk runs on a worker thread), then the batch's
 * paths and packed stats go into the dict with it. Only `keep`, `on_dir` and `on_error`,
 * when given, call back into Python.
 *
 * A directory is opened by its path, and one whose path is longer than the kernel takes in
 * one call (PATH_MAX: a tree nested deep by relative mkdirs, a runaway recursive copy) a
 * part at a time, each part relative to the directory the one before opened: the walk has
 * no limit on depth, and one such path neither stops it nor hides what is below it.
 */
#define _GNU_SOURCE  /* memrchr, O_PATH */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BATCH 256      /* entries read and lstat'ed per release of the GIL */
#define STAT_SIZE 44   /* "<IQQqqq": mode, dev, ino, size, mtime_ns, ctime_ns */

typedef struct {
    char name[256];    /* d_name is at most NAME_MAX (255) bytes */
    struct stat st;
    int err;           /* the lstat's errno, 0 when it succeeded */
} Entry;

static void
put_le(unsigned char *p, unsigned long long v, int n)
{
    for (int k = 0; k < n; k++)
        p[k] = (unsigned char)(v >> (8 * k));
}

/* The stat the index keeps (snapshot.as_stat): a directory's size and times are zero. */
static PyObject *
packed(const struct stat *st)
{
    unsigned char b[STAT_SIZE];
    long long size = 0, mtime = 0, ctime = 0;
    if (!S_ISDIR(st->st_mode)) {
        size = (long long)st->st_size;
        mtime = (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
        ctime = (long long)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec;
    }
    put_le(b, (unsigned long long)st->st_mode, 4);
    put_le(b + 4, (unsigned long long)st->st_dev, 8);
    put_le(b + 12, (unsigned long long)st->st_ino, 8);
    put_le(b + 20, (unsigned long long)size, 8);
    put_le(b + 28, (unsigned long long)mtime, 8);
    put_le(b + 36, (unsigned long long)ctime, 8);
    return PyBytes_FromStringAndSize((const char *)b, STAT_SIZE);
}

/* Read up to BATCH entries of `d` (not "." and "..") and lstat each; no GIL is held.
 * Returns how many, or -1 with errno set when the read failed. */
static int
read_batch(DIR *d, int dfd, Entry *batch, int *done)
{
    int n = 0;
    while (n < BATCH) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0)
                return -1;
            *done = 1;
            break;
        }
        const char *nm = de->d_name;
        if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0)))
            continue;
        Entry *e = &batch[n++];
        size_t len = strlen(nm);
        memcpy(e->name, nm, len + 1);
        e->err = fstatat(dfd, nm, &e->st, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : errno;
    }
    return n;
}

/* `path` joined to the entry's name as os.path.join would: no second slash after "/". */
static PyObject *
joined(PyObject *prefix, const char *name)
{
    PyObject *tail = PyUnicode_DecodeFSDefault(name);
    if (tail == NULL)
        return NULL;
    PyObject *out = PyUnicode_Concat(prefix, tail);
    Py_DECREF(tail);
    return out;
}

static int
is_true(PyObject *fn, PyObject *path)
{
    PyObject *r = PyObject_CallOneArg(fn, path);
    if (r == NULL)
        return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* The directory at `path` (`len` bytes, NUL-terminated), opened with `flags`: by its path
 * when the kernel takes it in one call, else a part of fewer than PATH_MAX bytes at a time,
 * each ending at a slash and opened relative to the one before (O_PATH: as open(2) of the
 * whole path, the directories on the way need only be searchable). Returns the
 * descriptor, or -1 with errno set. No GIL is needed. */
static int
open_dir(const char *path, size_t len, int flags)
{
    if (len < PATH_MAX)
        return open(path, flags);
    char part[PATH_MAX];
    int fd = AT_FDCWD;
    size_t at = 0;
    while (at < len) {
        size_t n = len - at;
        int last = n < PATH_MAX;
        if (!last) {
            n = PATH_MAX - 1;
            while (n > 0 && path[at + n] != '/')
                n--;
        }
        int next = -1, err = ENAMETOOLONG;  /* (n == 0: no slash within reach) */
        if (n > 0) {
            memcpy(part, path + at, n);
            part[n] = 0;
            next = openat(fd, part, last ? flags : O_PATH | O_DIRECTORY | O_CLOEXEC);
            err = errno;
        }
        if (fd != AT_FDCWD)
            close(fd);
        if (next < 0) {
            errno = err;
            return -1;
        }
        fd = next;
        at += n;
        while (at < len && path[at] == '/')
            at++;
    }
    return fd;
}

/* lstat(2) of `path` (`len` bytes), also of one PATH_MAX bytes or longer: its directory
 * opened by open_dir, its name lstat'ed relative to that (the pipeline's stat of a change
 * the walk would find past the limit agrees with the walk's). No GIL is needed. */
static int
lstat_any(const char *path, size_t len, struct stat *st)
{
    if (len < PATH_MAX)
        return lstat(path, st);
    const char *slash = memrchr(path, '/', len);
    size_t dlen = slash == NULL ? 0 : (size_t)(slash - path);
    if (dlen == 0 || dlen + 1 == len) {  /* (no directory, or no name, to split it into) */
        errno = ENAMETOOLONG;
        return -1;
    }
    char *dir = malloc(dlen + 1);
    if (dir == NULL)
        return -1;
    memcpy(dir, path, dlen);
    dir[dlen] = 0;
    int fd = open_dir(dir, dlen, O_PATH | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd < 0)
        return -1;
    int rc = fstatat(fd, slash + 1, st, AT_SYMLINK_NOFOLLOW);
    int err = errno;
    close(fd);
    errno = err;
    return rc;
}

/* What the walk could not read (a directory, or an entry's lstat), as OSError(err, path):
 * given `on_error`, it hears of it and the walk goes on (all of a resync's roots are walked
 * at once, and one subtree must not sink every one of them); without, it is raised.
 * Returns 0, or -1 with an exception set. */
static int
unread(PyObject *on_error, PyObject *path, int err)
{
    if (on_error == Py_None) {
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        return -1;
    }
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "isO", err, strerror(err), path);
    if (exc == NULL)
        return -1;
    PyObject *r = PyObject_CallFunctionObjArgs(on_error, path, exc, NULL);
    Py_DECREF(exc);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* One directory: its entries into `out`, the directories to walk next onto `stack`.
 * Returns 0, or -1 with an exception set. A directory that is gone, not one any more or
 * unreadable is skipped (its parent's diff says so), as os.scandir's errors are in Python;
 * any other failure to read it, or to lstat an entry, goes to `unread`. */
static int
walk_dir(PyObject *top, PyObject *out, PyObject *stack, int recursive, PyObject *keep,
         PyObject *on_dir, PyObject *on_error, Entry *batch)
{
    PyObject *encoded = PyUnicode_EncodeFSDefault(top);
    if (encoded == NULL)
        return -1;
    DIR *d = NULL;
    int open_errno = 0;
    Py_BEGIN_ALLOW_THREADS
    int fd = open_dir(PyBytes_AS_STRING(encoded), (size_t)PyBytes_GET_SIZE(encoded),
                      O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        d = fdopendir(fd);
        if (d == NULL) {
            open_errno = errno;
            close(fd);
        }
    } else {
        open_errno = errno;
    }
    Py_END_ALLOW_THREADS
    Py_DECREF(encoded);
    if (d == NULL) {
        if (open_errno == ENOENT || open_errno == ENOTDIR || open_errno == EACCES
                || open_errno == EPERM)
            return 0;
        return unread(on_error, top, open_errno);
    }
    int dfd = dirfd(d);
    Py_ssize_t tlen = PyUnicode_GET_LENGTH(top);
    int slash = tlen > 0 && PyUnicode_READ_CHAR(top, tlen - 1) == '/';
    PyObject *prefix = slash ? (Py_INCREF(top), top) : PyUnicode_FromFormat("%U/", top);
    if (prefix == NULL) {
        closedir(d);
        return -1;
    }
    int rc = 0, done = 0;
    while (!done && rc == 0) {
        int n, read_errno;
        Py_BEGIN_ALLOW_THREADS
        n = read_batch(d, dfd, batch, &done);
        read_errno = errno;
        Py_END_ALLOW_THREADS
        if (n < 0) {  /* the listing failed midway: what its earlier batches gave is kept */
            rc = unread(on_error, top, read_errno);
            break;
        }
        for (int k = 0; k < n && rc == 0; k++) {
            Entry *e = &batch[k];
            if (e->err == ENOENT)
                continue;  /* gone since it was listed */
            PyObject *path = joined(prefix, e->name);
            if (path == NULL) {
                rc = -1;
                break;
            }
            int dir = e->err == 0 && S_ISDIR(e->st.st_mode);
            if (keep != Py_None) {
                int t = is_true(keep, path);
                if (t <= 0) {
                    if (t == 0 && dir && recursive && on_dir != Py_None) {
                        t = is_true(on_dir, path);  /* another watch may need it */
                        if (t > 0 && PyList_Append(stack, path) < 0)
                            t = -1;
                    }
                    Py_DECREF(path);
                    if (t < 0)
                        rc = -1;
                    continue;
                }
            }
            if (e->err != 0) {  /* (os.DirEntry.stat raises it too) */
                rc = unread(on_error, path, e->err);
                Py_DECREF(path);
                continue;
            }
            PyObject *st = packed(&e->st);
            if (st == NULL || PyDict_SetItem(out, path, st) < 0) {
                Py_XDECREF(st);
                Py_DECREF(path);
                rc = -1;
                break;
            }
            Py_DECREF(st);
            if (dir && recursive) {
                if (on_dir != Py_None && is_true(on_dir, path) < 0)
                    rc = -1;
                else if (PyList_Append(stack, path) < 0)
                    rc = -1;
            }
            Py_DECREF(path);
        }
    }
    Py_DECREF(prefix);
    closedir(d);
    return rc;
}

static PyObject *
walk(PyObject *self, PyObject *args)
{
    PyObject *root, *out, *keep, *on_dir, *on_error = Py_None;
    int recursive;
    if (!PyArg_ParseTuple(args, "UO!pOO|O:walk", &root, &PyDict_Type, &out, &recursive, &keep,
                          &on_dir, &on_error))
        return NULL;
    Entry *batch = PyMem_RawMalloc(sizeof(Entry) * BATCH);
    if (batch == NULL)
        return PyErr_NoMemory();
    PyObject *stack = PyList_New(0);
    if (stack == NULL || PyList_Append(stack, root) < 0) {
        Py_XDECREF(stack);
        PyMem_RawFree(batch);
        return NULL;
    }
    int rc = 0;
    while (rc == 0 && PyList_GET_SIZE(stack) > 0) {
        Py_ssize_t last = PyList_GET_SIZE(stack) - 1;
        PyObject *top = PyList_GET_ITEM(stack, last);
        Py_INCREF(top);
        if (PyList_SetSlice(stack, last, last + 1, NULL) < 0)
            rc = -1;
        else
            rc = walk_dir(top, out, stack, recursive, keep, on_dir, on_error, batch);
        Py_DECREF(top);
    }
    Py_DECREF(stack);
    PyMem_RawFree(batch);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* (packed stat, st_mode, st_size, st_mtime_ns) of `st`: what lstat_fields answers. */
static PyObject *
fields(const struct stat *st)
{
    PyObject *p = packed(st);
    if (p == NULL)
        return NULL;
    long long mtime = (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
    return Py_BuildValue("(NkLL)", p, (unsigned long)st->st_mode, (long long)st->st_size,
                         mtime);
}

/* lstat_fields(path) -> (packed stat, st_mode, st_size, st_mtime_ns), or None when the
 * lstat failed (gone again: its deletion follows): the pipeline's stat of each changed
 * path, without the os.stat_result of nineteen fields it would pack six of. */
static PyObject *
lstat_fields(PyObject *self, PyObject *arg)
{
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(arg, &path))
        return NULL;
    struct stat st;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = lstat_any(PyBytes_AS_STRING(path), (size_t)PyBytes_GET_SIZE(path), &st);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (rc != 0)
        Py_RETURN_NONE;
    return fields(&st);
}

/* lstat_many(paths) -> [lstat_fields(path) for path in paths], the lstats all made in one
 * release of the GIL: the watcher's stat-ahead thread (statahead.py) stats a window's paths
 * while the loop goes on reading and coalescing the next ones, and takes the GIL twice a
 * batch instead of twice a path. */
static PyObject *
lstat_many(PyObject *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "lstat_many: a list of paths");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **encoded = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    struct stat *st = PyMem_Malloc((n ? n : 1) * sizeof(struct stat));
    int *rc = PyMem_Malloc((n ? n : 1) * sizeof(int));
    PyObject *out = NULL;
    if (encoded == NULL || st == NULL || rc == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &encoded[i]))
            goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        rc[i] = lstat_any(PyBytes_AS_STRING(encoded[i]), (size_t)PyBytes_GET_SIZE(encoded[i]),
                          &st[i]);
    Py_END_ALLOW_THREADS
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = rc[i] != 0 ? Py_NewRef(Py_None) : fields(&st[i]);
        if (item == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    if (encoded != NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            Py_XDECREF(encoded[i]);
    }
    PyMem_Free(encoded);
    PyMem_Free(st);
    PyMem_Free(rc);
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(root, out, recursive, keep, on_dir, on_error=None): every entry below root "
     "into out, path -> packed stat (snapshot.walk_python's contract)."},
    {"lstat_fields", lstat_fields, METH_O,
     "lstat_fields(path): (packed stat, mode, size, mtime_ns), or None (snapshot's "
     "lstat_fields_python)."},
    {"lstat_many", lstat_many, METH_O,
     "lstat_many(paths): [lstat_fields(p) for p in paths], the lstats without the GIL "
     "(snapshot's lstat_many_python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cwalk", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__cwalk(void)
{
    return PyModule_Create(&module);
}
