/* The compiled packing of the watcher's published events: `pack_events`, what pipeline.py's
 * `pack_events_python` makes, byte for byte (the tests compare them).
 *
 *     pack_events(rows, start, stop, instance, epoch, packb) -> bytes
 *
 * msgpack of {"events": [rows[start:stop]...]}. A row is an event's dict (packed by `packb`,
 * msgpack's own packer) or a flush's event as a tuple of ten:
 *
 *     (kind, path, type, origin, watches, size, mtime_ns, seq, extra_key, extra_value)
 *
 * which is the map {kind, path, type, origin, watches, [size, mtime_ns,] clock, [extra_key:
 * extra_value]} with clock [instance, epoch, seq]; size None leaves size and mtime_ns out,
 * extra_key None the last pair.
 *
 * Why: a flush built a dict of eight keys per event only for msgpack to walk it again, a
 * third of P10's time per event (5.9 us on this VM, 1.7 of them the packing). Here the keys
 * are constant bytes and the values are packed as msgpack packs them (the smallest int
 * encoding, str as UTF-8 with the smallest header, tuples and lists as arrays); any value
 * of another type, and any this cannot pack (a str that is not valid UTF-8, an int out of
 * range), is packed by `packb`, which packs it or raises what it raises for the dict.
 */
#include "_msgpack_out.h"

#define MAX_DEPTH 32

/* `v` as msgpack's packb packs it, by its own packer for anything but the common types */
static int
put_packed_by(Out *o, PyObject *v, PyObject *packb)
{
    PyObject *b = PyObject_CallOneArg(packb, v);
    if (b == NULL)
        return -1;
    if (!PyBytes_Check(b)) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_TypeError, "pack_events: packb must return bytes");
        return -1;
    }
    int rc = put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
    Py_DECREF(b);
    return rc;
}

static int
put_value(Out *o, PyObject *v, PyObject *packb, int depth)
{
    if (v == Py_None)
        return put_tagged(o, 0xc0, 0, 0);
    if (v == Py_True || v == Py_False)
        return put_tagged(o, v == Py_True ? 0xc3 : 0xc2, 0, 0);
    if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) {  /* (surrogates): msgpack's packer says how it fails */
            PyErr_Clear();
            return put_packed_by(o, v, packb);
        }
        if (put_str_header(o, n) < 0)
            return -1;
        return put(o, s, n);
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long d = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (d == -1 && PyErr_Occurred())
            return -1;
        if (!overflow)
            return put_int(o, d);
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(v);
            if (!(u == (unsigned long long)-1 && PyErr_Occurred()))
                return put_tagged(o, 0xcf, u, 8);
            PyErr_Clear();
        }
        return put_packed_by(o, v, packb);  /* out of msgpack's range: it raises */
    }
    if ((PyTuple_CheckExact(v) || PyList_CheckExact(v)) && depth < MAX_DEPTH) {
        PyObject *seq = PySequence_Fast(v, "");
        if (seq == NULL)
            return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        int rc = put_array_header(o, n);
        for (Py_ssize_t i = 0; rc == 0 && i < n; i++)
            rc = put_value(o, PySequence_Fast_GET_ITEM(seq, i), packb, depth + 1);
        Py_DECREF(seq);
        return rc;
    }
    return put_packed_by(o, v, packb);
}

#define KEY(o, lit) put((o), lit, (Py_ssize_t)sizeof(lit) - 1)

static int
put_row(Out *o, PyObject *row, PyObject *instance, PyObject *epoch, PyObject *packb)
{
    PyObject **f = &PyTuple_GET_ITEM(row, 0);
    int stat = f[5] != Py_None, extra = f[8] != Py_None;
    if (put_tagged(o, (unsigned char)(0x80 | (6 + 2 * stat + extra)), 0, 0) < 0 ||
        KEY(o, "\xa4" "kind") < 0 || put_value(o, f[0], packb, 0) < 0 ||
        KEY(o, "\xa4" "path") < 0 || put_value(o, f[1], packb, 0) < 0 ||
        KEY(o, "\xa4" "type") < 0 || put_value(o, f[2], packb, 0) < 0 ||
        KEY(o, "\xa6" "origin") < 0 || put_value(o, f[3], packb, 0) < 0 ||
        KEY(o, "\xa7" "watches") < 0 || put_value(o, f[4], packb, 0) < 0)
        return -1;
    if (stat && (KEY(o, "\xa4" "size") < 0 || put_value(o, f[5], packb, 0) < 0 ||
                 KEY(o, "\xa8" "mtime_ns") < 0 || put_value(o, f[6], packb, 0) < 0))
        return -1;
    if (KEY(o, "\xa5" "clock" "\x93") < 0 || put_value(o, instance, packb, 0) < 0 ||
        put_value(o, epoch, packb, 0) < 0 || put_value(o, f[7], packb, 0) < 0)
        return -1;
    if (extra && (put_value(o, f[8], packb, 0) < 0 || put_value(o, f[9], packb, 0) < 0))
        return -1;
    return 0;
}

PyDoc_STRVAR(pack_events_doc,
"pack_events(rows, start, stop, instance, epoch, packb) -> bytes\n\n"
"msgpack of {\"events\": rows[start:stop]}, a tuple row as the map it stands for (see the\n"
"module).");

static PyObject *
pack_events(PyObject *module, PyObject *args)
{
    PyObject *rows, *instance, *epoch, *packb, *result = NULL;
    Py_ssize_t start, stop;
    Out o = {NULL, 0, 0};

    (void)module;
    if (!PyArg_ParseTuple(args, "O!nnOOO:pack_events", &PyList_Type, &rows, &start, &stop,
                          &instance, &epoch, &packb))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    if (start < 0 || stop > n || start > stop) {
        PyErr_SetString(PyExc_ValueError, "pack_events: 0 <= start <= stop <= len(rows)");
        return NULL;
    }
    if (KEY(&o, "\x81\xa6" "events") < 0 || put_array_header(&o, stop - start) < 0)
        goto done;
    for (Py_ssize_t i = start; i < stop; i++) {
        if (i >= PyList_GET_SIZE(rows)) {  /* (packb ran Python code: the list changed) */
            PyErr_SetString(PyExc_RuntimeError, "pack_events: rows changed size");
            goto done;
        }
        PyObject *row = PyList_GET_ITEM(rows, i);
        Py_INCREF(row);
        int rc = PyTuple_CheckExact(row) && PyTuple_GET_SIZE(row) == 10
                     ? put_row(&o, row, instance, epoch, packb)
                     : put_packed_by(&o, row, packb);
        Py_DECREF(row);
        if (rc < 0)
            goto done;
    }
    result = PyBytes_FromStringAndSize(o.buf, o.len);
done:
    PyMem_Free(o.buf);
    return result;
}

static PyMethodDef methods[] = {
    {"pack_events", pack_events, METH_VARARGS, pack_events_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cevents",
    "The compiled packing of the watcher's published events (see pipeline.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cevents(void)
{
    return PyModule_Create(&module_def);
}
