/* The compiled core of protocol/wire.py: a whole multipart message in or out in one call.

   pyzmq's per-frame calls cost more than libzmq's: a received frame is a Python `Frame`
   (about 2 µs each), "more frames follow" is a getsockopt that builds an enum (about 1 µs),
   and a would-block is an exception built in Python. Here a message is received as a list of
   bytes with zmq_msg_more, sent frame by frame with zmq_send (which copies: only frames
   below the zero-copy threshold come here), and a would-block is a plain None.

   Nothing is linked at build time: `bind` takes the addresses of the libzmq functions from
   the very library pyzmq loaded (wire.py finds it in /proc/self/maps), so both speak to the
   same sockets, and the install needs no libzmq headers. A socket is reached through pyzmq's
   `underlying` (its libzmq handle; 0 once closed, which is refused here as ENOTSOCK).

   Blocking calls release the GIL, as pyzmq's do; an interrupted one runs the signal handlers
   and goes on (or raises what a handler raised). Errors other than EAGAIN are raised by
   wire.py's `raise_for(errno)`, so each is pyzmq's own exception class. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>

typedef struct {
    unsigned char _[64] __attribute__((aligned(sizeof(void *))));
} zmq_msg_t;

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2
#define ZMQ_EVENTS 15
#define ZMQ_POLLIN 1
#define ZMQ_ENOTSOCK ENOTSOCK

typedef int (*msg_init_f)(zmq_msg_t *);
typedef int (*msg_recv_f)(zmq_msg_t *, void *, int);
typedef void *(*msg_data_f)(zmq_msg_t *);
typedef size_t (*msg_size_f)(const zmq_msg_t *);
typedef int (*msg_more_f)(const zmq_msg_t *);
typedef int (*msg_close_f)(zmq_msg_t *);
typedef int (*send_f)(void *, const void *, size_t, int);
typedef int (*errno_f)(void);
typedef int (*getsockopt_f)(void *, int, void *, size_t *);

static msg_init_f z_msg_init;
static msg_recv_f z_msg_recv;
static msg_data_f z_msg_data;
static msg_size_f z_msg_size;
static msg_more_f z_msg_more;
static msg_close_f z_msg_close;
static send_f z_send;
static errno_f z_errno;
static getsockopt_f z_getsockopt;
static PyObject *raise_for;     /* wire.py's: raises pyzmq's exception for an errno */
static PyObject *underlying_s;  /* "underlying" */
static Py_ssize_t copy_threshold = 131072;

static int fail(int err)
{
    PyObject *r = PyObject_CallFunction(raise_for, "i", err);
    Py_XDECREF(r);
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_OSError, "libzmq error %d", err);
    return -1;
}

static void *handle_of(PyObject *sock)
{
    if (raise_for == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cwire: bind() was not called");
        return NULL;
    }
    PyObject *u = PyObject_GetAttr(sock, underlying_s);
    if (u == NULL)
        return NULL;
    void *h = PyLong_AsVoidPtr(u);
    Py_DECREF(u);
    if (h == NULL) {
        if (!PyErr_Occurred())
            fail(ZMQ_ENOTSOCK);
        return NULL;
    }
    return h;
}

/* recv(sock, flags) -> list[bytes] | None (None: nothing waits and `flags` said DONTWAIT,
   or a receive timeout passed). */
static PyObject *cw_recv(PyObject *self, PyObject *args)
{
    PyObject *sock;
    int flags;
    if (!PyArg_ParseTuple(args, "Oi", &sock, &flags))
        return NULL;
    void *h = handle_of(sock);
    if (h == NULL)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    zmq_msg_t msg;
    for (;;) {
        int rc;
        z_msg_init(&msg);
        if (flags & ZMQ_DONTWAIT || PyList_GET_SIZE(out) > 0) {
            /* (a message's later frames are there once its first is: never a wait) */
            rc = z_msg_recv(&msg, h, flags | ZMQ_DONTWAIT);
        } else {
            Py_BEGIN_ALLOW_THREADS
            rc = z_msg_recv(&msg, h, flags);
            Py_END_ALLOW_THREADS
        }
        if (rc < 0) {
            int err = z_errno();
            z_msg_close(&msg);
            if (err == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    goto error;
                continue;
            }
            if (err == EAGAIN && PyList_GET_SIZE(out) == 0) {
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
            fail(err);
            goto error;
        }
        PyObject *b = PyBytes_FromStringAndSize(z_msg_data(&msg), (Py_ssize_t)z_msg_size(&msg));
        int more = z_msg_more(&msg);
        z_msg_close(&msg);
        if (b == NULL)
            goto error;
        int bad = PyList_Append(out, b);
        Py_DECREF(b);
        if (bad)
            goto error;
        if (!more)
            return out;
    }
error:
    Py_DECREF(out);
    return NULL;
}

/* send(sock, frames, flags) -> True (sent), False (would block, with DONTWAIT), or
   NotImplemented: a frame is not bytes or reaches the zero-copy threshold (wire.py sends
   those itself). */
static PyObject *cw_send(PyObject *self, PyObject *args)
{
    PyObject *sock, *frames;
    int flags;
    if (!PyArg_ParseTuple(args, "OOi", &sock, &frames, &flags))
        return NULL;
    /* a tuple of them, held: a list could change while the GIL is released for a wait */
    PyObject *seq = PySequence_Tuple(frames);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_CheckExact(items[i]) || PyBytes_GET_SIZE(items[i]) >= copy_threshold) {
            Py_DECREF(seq);
            Py_RETURN_NOTIMPLEMENTED;
        }
    }
    void *h = handle_of(sock);
    if (h == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int f = i < n - 1 ? flags | ZMQ_SNDMORE : flags;
        const char *data = PyBytes_AS_STRING(items[i]);
        size_t size = (size_t)PyBytes_GET_SIZE(items[i]);
        for (;;) {
            /* Tried without waiting first: a send that would wait (at the high-water mark)
               waits with the GIL released. Only a message's first frame can. */
            int rc = z_send(h, data, size, f | ZMQ_DONTWAIT);
            if (rc < 0 && z_errno() == EAGAIN && !(flags & ZMQ_DONTWAIT)) {
                Py_BEGIN_ALLOW_THREADS
                rc = z_send(h, data, size, f);
                Py_END_ALLOW_THREADS
            }
            if (rc >= 0)
                break;
            int err = z_errno();
            if (err == EINTR) {
                if (PyErr_CheckSignals() < 0) {
                    Py_DECREF(seq);
                    return NULL;
                }
                continue;
            }
            Py_DECREF(seq);
            if (err == EAGAIN && i == 0)
                Py_RETURN_FALSE;
            fail(err);
            return NULL;
        }
    }
    Py_DECREF(seq);
    Py_RETURN_TRUE;
}

/* readable(sock) -> bool: does a whole message wait (ZMQ_EVENTS & POLLIN)? */
static PyObject *cw_readable(PyObject *self, PyObject *sock)
{
    void *h = handle_of(sock);
    if (h == NULL)
        return NULL;
    int events = 0;
    size_t size = sizeof(events);
    for (;;) {
        if (z_getsockopt(h, ZMQ_EVENTS, &events, &size) == 0)
            break;
        int err = z_errno();
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return NULL;
            continue;
        }
        fail(err);
        return NULL;
    }
    return PyBool_FromLong(events & ZMQ_POLLIN);
}

/* bind(addresses, raise_for, copy_threshold): `addresses` maps each libzmq function's name
   to its address in the library pyzmq loaded. */
static PyObject *cw_bind(PyObject *self, PyObject *args)
{
    PyObject *addrs, *raiser;
    Py_ssize_t threshold;
    if (!PyArg_ParseTuple(args, "O!On", &PyDict_Type, &addrs, &raiser, &threshold))
        return NULL;
    static const char *names[] = {"zmq_msg_init", "zmq_msg_recv", "zmq_msg_data",
                                  "zmq_msg_size", "zmq_msg_more", "zmq_msg_close",
                                  "zmq_send", "zmq_errno", "zmq_getsockopt"};
    void *got[9];
    for (int i = 0; i < 9; i++) {
        PyObject *a = PyDict_GetItemString(addrs, names[i]);
        if (a == NULL)
            return PyErr_Format(PyExc_KeyError, "no address for %s", names[i]);
        got[i] = PyLong_AsVoidPtr(a);
        if (got[i] == NULL)
            return PyErr_Occurred() ? NULL
                                    : PyErr_Format(PyExc_ValueError, "%s at 0", names[i]);
    }
    z_msg_init = (msg_init_f)got[0];
    z_msg_recv = (msg_recv_f)got[1];
    z_msg_data = (msg_data_f)got[2];
    z_msg_size = (msg_size_f)got[3];
    z_msg_more = (msg_more_f)got[4];
    z_msg_close = (msg_close_f)got[5];
    z_send = (send_f)got[6];
    z_errno = (errno_f)got[7];
    z_getsockopt = (getsockopt_f)got[8];
    Py_INCREF(raiser);
    Py_XSETREF(raise_for, raiser);
    copy_threshold = threshold;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", cw_bind, METH_VARARGS, "Take the libzmq functions' addresses."},
    {"recv", cw_recv, METH_VARARGS, "One whole message as a list of bytes, or None."},
    {"send", cw_send, METH_VARARGS, "One whole message; True, False (would block) or NotImplemented."},
    {"readable", cw_readable, METH_O, "Does a whole message wait?"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cwire", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cwire(void)
{
    underlying_s = PyUnicode_InternFromString("underlying");
    if (underlying_s == NULL)
        return NULL;
    return PyModule_Create(&module);
}
