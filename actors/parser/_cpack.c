/* The compiled loop of parse.feed's answer (actors/parser/packing.py): the run of events
 * whose packing is remembered, packed in one call.
 *
 *     pack_known(events, start, known) -> (bytes, stop)
 *
 * `known` maps an event class to (head, key, tails): the bytes of its map up to `start`'s
 * value, the callable that gives the event's remembered fields as one key, and the dict of
 * those fields' packings. From events[start] on, each event whose class is known, whose
 * key is in tails (a key that raises TypeError, or is unhashable, is not: as in the Python
 * loop) and whose start and end are ints in [0, 2^63) is packed as
 *
 *     head, start, "end", end, tails[key(event)]
 *
 * which is what EventPacker.answer's Python loop makes of it, byte for byte (the tests
 * compare both with msgpack's packing of the events' dicts). The first event that is not
 * ends the run: `stop` is its index (len(events) once all are packed), and the caller packs
 * it the long way (remembering its fields for the next time) and goes on after it.
 *
 * Why: a 64 KiB feed of compiler-like output answers about 45 markers, and the Python loop
 * (a class lookup, an attrgetter, a dict lookup and two msgpack calls per event) took
 * 73 us a feed on this VM, as long as the parse itself; this takes 35.
 */
#include "_msgpack_out.h"

static PyObject *start_name, *end_name;

/* `v`, an exact int in [0, 2^63), packed as msgpack packs it; 1 if `v` is not one */
static int
put_offset(Out *o, PyObject *v)
{
    if (!PyLong_CheckExact(v))
        return 1;
    int overflow;
    long long d = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (d == -1 && PyErr_Occurred())
        return -1;
    if (overflow || d < 0)
        return 1;
    return put_int(o, d);
}

/* events[i] packed from what `known` remembers: 0, 1 (not remembered, or an offset that is
 * not a plain one: the long way), -1 (an error) */
static int
put_known(Out *o, PyObject *e, PyObject *known)
{
    PyObject *entry = PyDict_GetItemWithError(known, (PyObject *)Py_TYPE(e));
    if (entry == NULL)
        return PyErr_Occurred() ? -1 : 1;
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 0)) ||
        !PyDict_CheckExact(PyTuple_GET_ITEM(entry, 2))) {
        PyErr_SetString(PyExc_TypeError, "pack_known: known[cls] must be (bytes, key, dict)");
        return -1;
    }
    PyObject *head = PyTuple_GET_ITEM(entry, 0);
    Py_INCREF(entry);  /* (the key's call runs Python code: keep what it reads alive) */
    PyObject *key = PyObject_CallOneArg(PyTuple_GET_ITEM(entry, 1), e);
    PyObject *tail = NULL;
    int rc = 1;
    if (key == NULL) {
        /* As the Python loop (the reference), which takes a TypeError from the key as from
         * its lookup: the long way, which says what it is; any other error is the caller's. */
        if (PyErr_ExceptionMatches(PyExc_TypeError))
            PyErr_Clear();
        else
            rc = -1;
        goto done;
    }
    tail = PyDict_GetItemWithError(PyTuple_GET_ITEM(entry, 2), key);
    Py_DECREF(key);
    if (tail == NULL) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                rc = -1;
                goto done;
            }
            PyErr_Clear();  /* (an unhashable field: the long way says what it is) */
        }
        goto done;
    }
    Py_INCREF(tail);
    if (!PyBytes_CheckExact(tail)) {
        PyErr_SetString(PyExc_TypeError, "pack_known: a remembered tail must be bytes");
        rc = -1;
        goto done;
    }
    PyObject *start = PyObject_GetAttr(e, start_name);
    if (start == NULL) {
        rc = -1;
        goto done;
    }
    PyObject *end = PyObject_GetAttr(e, end_name);
    if (end == NULL) {
        Py_DECREF(start);
        rc = -1;
        goto done;
    }
    Py_ssize_t mark = o->len;
    rc = put(o, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head));
    if (rc == 0)
        rc = put_offset(o, start);
    if (rc == 0)
        rc = put(o, "\xa3" "end", 4);
    if (rc == 0)
        rc = put_offset(o, end);
    if (rc == 0)
        rc = put(o, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
    if (rc == 1)
        o->len = mark;  /* (half an event written: taken back) */
    Py_DECREF(start);
    Py_DECREF(end);
done:
    Py_XDECREF(tail);
    Py_DECREF(entry);
    return rc;
}

PyDoc_STRVAR(pack_known_doc,
"pack_known(events, start, known) -> (bytes, stop)\n\n"
"events[start:stop] packed from what `known` remembers; events[stop] is the first it does\n"
"not (see the module).");

static PyObject *
pack_known(PyObject *module, PyObject *args)
{
    PyObject *events, *known, *result = NULL;
    Py_ssize_t i;
    Out o = {NULL, 0, 0};

    (void)module;
    if (!PyArg_ParseTuple(args, "O!nO!:pack_known", &PyList_Type, &events, &i, &PyDict_Type,
                          &known))
        return NULL;
    if (i < 0) {
        PyErr_SetString(PyExc_ValueError, "pack_known: start must be >= 0");
        return NULL;
    }
    for (; i < PyList_GET_SIZE(events); i++) {
        PyObject *e = PyList_GET_ITEM(events, i);
        Py_INCREF(e);
        int rc = put_known(&o, e, known);
        Py_DECREF(e);
        if (rc < 0)
            goto done;
        if (rc > 0)
            break;
    }
    result = Py_BuildValue("y#n", o.buf ? o.buf : "", o.len, i);
done:
    PyMem_Free(o.buf);
    return result;
}

static PyMethodDef methods[] = {
    {"pack_known", pack_known, METH_VARARGS, pack_known_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cpack",
    "The compiled loop of parse.feed's answer (see packing.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cpack(void)
{
    start_name = PyUnicode_InternFromString("start");
    end_name = PyUnicode_InternFromString("end");
    if (start_name == NULL || end_name == NULL)
        return NULL;
    return PyModule_Create(&module_def);
}
