/* The compiled protocol-value check: `walk(obj)`, what envelope.py's `_walk(obj)` answers, for
 * every body and result that holds a container (the contract is written there, and the tests
 * hold the two to the same answers).
 *
 * A value is a protocol value when no map or array in it is nested deeper than the limit,
 * every map key is a str, and no msgpack Timestamp is in it. Python's walk costs 40-100 ns
 * an element (a type test and a loop turn each); this one a few: an fs.query page of 100,000
 * names, or the 48 marker records of a 64 KiB parse.feed reply, are checked in microseconds.
 *
 * The recursion is bounded by the depth limit (a container past it is refused before its
 * children are looked at). Only the Timestamp test can run Python code (an object's own
 * __class__); each element is held while it is walked, so a container changed meanwhile
 * costs a wrong answer at worst, never freed memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static int max_depth = 32;
static PyObject *timestamp_type = NULL; /* msgpack.Timestamp, given by `configure` */

/* str, int, float, bool, bytes and None, exactly (envelope.SCALAR_TYPES) */
static inline int
is_scalar(PyObject *v)
{
    return PyUnicode_CheckExact(v) || PyLong_CheckExact(v) || PyFloat_CheckExact(v) ||
           PyBool_Check(v) || PyBytes_CheckExact(v) || v == Py_None;
}

static PyObject *too_deep(void)
{
    return PyUnicode_FromFormat("nesting deeper than %d", max_depth);
}

static PyObject *walk(PyObject *obj, int depth);

/* An element of a container at `depth`: a scalar is fine as it is; anything else is walked,
 * held meanwhile. */
static inline PyObject *
walk_item(PyObject *v, int depth)
{
    if (is_scalar(v))
        return Py_None;
    Py_INCREF(v);
    PyObject *problem = walk(v, depth);
    Py_DECREF(v);
    return problem;
}

/* NULL with an exception set, Py_None (borrowed) when fine, or a new str: the problem. */
static PyObject *
walk(PyObject *obj, int depth)
{
    if (PyDict_Check(obj)) {
        if (depth > max_depth)
            return too_deep();
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(obj, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(k)) {
                PyObject *name = PyType_GetName(Py_TYPE(k));
                if (name == NULL)
                    return NULL;
                PyObject *msg = PyUnicode_FromFormat("map keys must be strings, not %U", name);
                Py_DECREF(name);
                return msg;
            }
            PyObject *problem = walk_item(v, depth + 1);
            if (problem != Py_None)
                return problem;
        }
        return Py_None;
    }
    if (PyList_Check(obj) || PyTuple_Check(obj)) {
        if (depth > max_depth)
            return too_deep();
        /* (the size is read again each turn: a list changed meanwhile is not overrun) */
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(obj); i++) {
            PyObject *problem = walk_item(PySequence_Fast_GET_ITEM(obj, i), depth + 1);
            if (problem != Py_None)
                return problem;
        }
        return Py_None;
    }
    if (timestamp_type != NULL) {
        int is_ts = PyObject_IsInstance(obj, timestamp_type);
        if (is_ts < 0)
            return NULL;
        if (is_ts)
            return PyUnicode_FromString("msgpack timestamps are not part of the protocol");
    }
    return Py_None; /* a scalar, or what the packer itself refuses */
}

static PyObject *
shape_walk(PyObject *module, PyObject *obj)
{
    if (is_scalar(obj))
        Py_RETURN_NONE;
    PyObject *problem = walk(obj, 1);
    if (problem == Py_None)
        Py_RETURN_NONE;
    return problem; /* a new reference, or NULL */
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    int depth;
    PyObject *ts;
    if (!PyArg_ParseTuple(args, "iO:configure", &depth, &ts))
        return NULL;
    if (!PyType_Check(ts)) {
        PyErr_SetString(PyExc_TypeError, "configure: the timestamp type must be a type");
        return NULL;
    }
    max_depth = depth;
    Py_INCREF(ts);
    Py_XSETREF(timestamp_type, ts);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"walk", shape_walk, METH_O,
     "walk(obj) -> None, or why obj is not a protocol value (envelope._walk's answer)."},
    {"configure", configure, METH_VARARGS,
     "configure(max_depth, timestamp_type): the depth limit and msgpack's Timestamp."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cshape",
    "The compiled protocol-value check (envelope.py's _walk).", -1, methods,
};

PyMODINIT_FUNC
PyInit__cshape(void)
{
    return PyModule_Create(&module);
}
