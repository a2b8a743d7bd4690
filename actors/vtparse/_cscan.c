/* The compiled core of vtparse's markers-only ground loop: `scan`, as _scan.py's `scan_python`
 * does it (the contract is written there, and the tests hold the two to the same events).
 *
 * It walks a chunk from one ESC to the next with memchr. At `ESC ]` it finds the end of the
 * OSC (BEL or ST, within the cap) and looks its payload up in the parser's memo of decoded
 * payloads: a hit is built into its event here (one call of the event class), a quiet OSC is
 * skipped. Everything else it hands back, by index, to the Python code, which holds the rules:
 * a payload not in the memo yet, a DCS, an ESC followed by a C0 control or DEL, an OSC that is
 * cut by the end of the chunk, longer than the cap, or ended by CAN, SUB or another ESC.
 * Other escape sequences (CSI, ESC, SOS/PM/APC) carry no marker and need no state here: an
 * ESC ends any of them, so the next `ESC ]` starts an OSC whatever came before. At the end of
 * the chunk it says whether the last of them is complete, a clean start the chunk cuts (the
 * caller keeps it for the next chunk), or neither (the caller's machine takes it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* BEL, CAN, SUB and ESC end an OSC payload (a C0 control otherwise stays in it) */
static unsigned char ends_osc[256];

/* The OSC numbers that may carry a marker (_markers.MARKER_COMMANDS). */
static int
is_marker_command(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t k = 0;
    long value = 0;
    while (k < n && p[k] != ';')
        k++;
    if (k == 0 || k > 9)
        return 0;
    for (Py_ssize_t h = 0; h < k; h++) {
        if (p[h] < '0' || p[h] > '9')
            return 0;
        value = value * 10 + (p[h] - '0');
    }
    return value == 7 || value == 133 || value == 633 || value == 1337;
}

/* Where an event class keeps each field, so that an event is built by filling its slots:
 * calling the class runs its dataclass __init__, a Python frame that cost 0.6 us of a
 * marker's 0.8 in a 1 KiB feed of prompts. Only where that __init__ does no more: a
 * dataclass with slots (`__slots__` its fields, in order; ClassVars are not in it) whose
 * __init__ is the one @dataclass wrote, each field taken by position, no __post_init__,
 * object's __new__, object as its base and type as its metaclass. Any other class is
 * called. */
#define MAX_FIELDS 16
#define MAX_LAYOUTS 64
typedef struct {
    PyTypeObject *type;  /* a strong reference, held for the module's life */
    Py_ssize_t nfields;  /* -1: not one we fill; called */
    Py_ssize_t offset[MAX_FIELDS];
} Layout;
static Layout layouts[MAX_LAYOUTS];
static int nlayouts;

static Py_ssize_t
member_offset(PyTypeObject *t, PyObject *name)
{
    const char *want = PyUnicode_AsUTF8(name);
    if (want == NULL || t->tp_members == NULL)
        return -1;
    for (PyMemberDef *m = t->tp_members; m->name != NULL; m++)
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY) && strcmp(m->name, want) == 0)
            return m->offset;
    return -1;
}

/* A field its class's __init__ takes by position: in __init__ (init=True), not keyword-only. */
static int
positional_field(PyObject *fields, PyObject *name)
{
    PyObject *field = PyDict_GetItemWithError(fields, name);  /* borrowed */
    PyObject *init, *kw_only;
    int ok;

    if (field == NULL)
        return 0;
    init = PyObject_GetAttrString(field, "init");
    kw_only = PyObject_GetAttrString(field, "kw_only");
    ok = init == Py_True && kw_only == Py_False;
    Py_XDECREF(init);
    Py_XDECREF(kw_only);
    return ok;
}

/* `cls.name`, or NULL with no exception set. */
static PyObject *
attr_or_null(PyObject *cls, const char *name)
{
    PyObject *value = PyObject_GetAttrString(cls, name);
    if (value == NULL)
        PyErr_Clear();
    return value;
}

/* The class's __init__ is the one @dataclass wrote (it compiles its functions from text:
 * their file is "<string>"), not one of the class body's, which @dataclass keeps. */
static int
dataclass_init(PyTypeObject *t, PyObject *cls)
{
    PyObject *init = PyDict_GetItemString(t->tp_dict, "__init__");  /* borrowed */
    PyObject *params = attr_or_null(cls, "__dataclass_params__");
    PyObject *wanted = params != NULL ? attr_or_null(params, "init") : NULL;
    int ok = wanted == Py_True && init != NULL && PyFunction_Check(init) &&
             PyUnicode_CompareWithASCIIString(
                 ((PyCodeObject *)PyFunction_GET_CODE(init))->co_filename, "<string>") == 0;
    Py_XDECREF(params);
    Py_XDECREF(wanted);
    return ok;
}

static void
fill_layout(Layout *L, PyObject *cls)
{
    PyTypeObject *t = (PyTypeObject *)cls;
    PyObject *slots, *fields, *post;
    Py_ssize_t n;

    L->nfields = -1;
    if (Py_TYPE(cls) != &PyType_Type || !(t->tp_flags & Py_TPFLAGS_HEAPTYPE) ||
        t->tp_base != &PyBaseObject_Type || t->tp_new != PyBaseObject_Type.tp_new ||
        t->tp_alloc != PyType_GenericAlloc || !dataclass_init(t, cls))
        return;
    post = attr_or_null(cls, "__post_init__");
    fields = attr_or_null(cls, "__dataclass_fields__");
    slots = attr_or_null(cls, "__slots__");
    if (post == NULL && fields != NULL && slots != NULL && PyTuple_Check(slots) &&
        PyDict_Check(fields) && (n = PyTuple_GET_SIZE(slots)) <= MAX_FIELDS) {
        Py_ssize_t k;
        for (k = 0; k < n; k++) {
            PyObject *name = PyTuple_GET_ITEM(slots, k);
            if (!PyUnicode_Check(name) || !positional_field(fields, name) ||
                (L->offset[k] = member_offset(t, name)) < 0)
                break;
        }
        if (k == n)
            L->nfields = n;
    }
    Py_XDECREF(post);
    Py_XDECREF(fields);
    Py_XDECREF(slots);
    PyErr_Clear();
}

/* The layout of `cls` if its events are built here, else NULL (they are called). */
static const Layout *
layout_of(PyObject *cls)
{
    for (int k = 0; k < nlayouts; k++)
        if ((PyObject *)layouts[k].type == cls)
            return layouts[k].nfields < 0 ? NULL : &layouts[k];
    if (!PyType_Check(cls) || nlayouts == MAX_LAYOUTS)
        return NULL;
    Layout *L = &layouts[nlayouts++];
    Py_INCREF(cls);
    L->type = (PyTypeObject *)cls;
    fill_layout(L, cls);
    return L->nfields < 0 ? NULL : L;
}

/* Build the event of a memo entry (cls, args) at [start, end) and append it to `out`. */
static int
emit(PyObject *out, PyObject *spec, Py_ssize_t start, Py_ssize_t end)
{
    PyObject *stack[16];
    PyObject *cls, *args, *event;
    Py_ssize_t nargs, k;

    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 2) {
        PyErr_SetString(PyExc_TypeError, "a memo entry is (event class, args)");
        return -1;
    }
    cls = PyTuple_GET_ITEM(spec, 0);
    args = PyTuple_GET_ITEM(spec, 1);
    if (!PyTuple_Check(args) || PyTuple_GET_SIZE(args) > 14) {
        PyErr_SetString(PyExc_TypeError, "a memo entry's args are a tuple of at most 14");
        return -1;
    }
    nargs = PyTuple_GET_SIZE(args);
    stack[0] = PyLong_FromSsize_t(start);
    stack[1] = PyLong_FromSsize_t(end);
    if (stack[0] == NULL || stack[1] == NULL) {
        Py_XDECREF(stack[0]);
        Py_XDECREF(stack[1]);
        return -1;
    }
    for (k = 0; k < nargs; k++)
        stack[2 + k] = PyTuple_GET_ITEM(args, k);
    const Layout *L = layout_of(cls);
    if (L != NULL && L->nfields == 2 + nargs) {
        event = L->type->tp_alloc(L->type, 0);
        if (event != NULL) {
            for (k = 0; k < 2 + nargs; k++) {
                Py_INCREF(stack[k]);
                *(PyObject **)((char *)event + L->offset[k]) = stack[k];
            }
        }
    } else {
        event = PyObject_Vectorcall(cls, stack, 2 + nargs, NULL);
    }
    Py_DECREF(stack[0]);
    Py_DECREF(stack[1]);
    if (event == NULL)
        return -1;
    k = PyList_Append(out, event);
    Py_DECREF(event);
    return (int)k;
}

/* A cache of memo lookups, shared by every parser in the process. A memo hit used to cost a
 * bytes object for the payload, its SipHash and a dict lookup: 0.1 us of a marker's 0.35 in a
 * 1 KiB feed of prompts. An entry copies a payload and the memo's answer for it, with the memo
 * and its version tag (CPython gives each state of each dict a tag no other state of any dict
 * has): while the memo's tag is the same, the memo is the same dict, unchanged, and still holds
 * the answer, so the entry is right and its answer alive. Any change to the memo (a new payload
 * decoded, the memo emptied) retires every entry of it at once.
 *
 * The slot is picked by a cheap hash; the payloads are then compared whole, in time that
 * depends on the length alone: a lookup tells no more than the dict's keyed hash did about
 * how much of a forged nonce was right. */
#define CACHE_SLOTS 256
#define CACHE_PAYLOAD 256  /* _machine.MEMO_PAYLOAD: no longer payload is in a memo */
typedef struct {
    PyObject *memo;    /* not a reference: with `version`, names a state of one dict */
    uint64_t version;
    PyObject *spec;    /* borrowed: the memo holds it while its version is the same */
    Py_ssize_t len;
    unsigned char payload[CACHE_PAYLOAD];
} Cached;
static Cached cache[CACHE_SLOTS];

static size_t
cache_slot(PyObject *memo, const unsigned char *p, Py_ssize_t n)
{
    uint64_t h = (uint64_t)(uintptr_t)memo ^ (uint64_t)n * 0x9E3779B97F4A7C15ull;
    Py_ssize_t k = 0;
    for (; k + 8 <= n; k += 8) {
        uint64_t w;
        memcpy(&w, p + k, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 29;
    }
    for (; k < n; k++)
        h = (h ^ p[k]) * 0x100000001B3ull;
    h ^= h >> 32;
    return (size_t)(h & (CACHE_SLOTS - 1));
}

/* Equal payloads, in time that depends on the length alone. */
static int
same_payload(const unsigned char *a, const unsigned char *b, Py_ssize_t n)
{
    unsigned char diff = 0;
    for (Py_ssize_t k = 0; k < n; k++)
        diff |= a[k] ^ b[k];
    return diff == 0;
}

/* The memo's answer for the payload p[0:n]: the spec (borrowed), Py_None for no event, or NULL
 * with no exception set when the payload is not in the memo; NULL with one on an error. */
static PyObject *
memo_lookup(PyObject *memo, const unsigned char *p, Py_ssize_t n)
{
    uint64_t version = ((PyDictObject *)memo)->ma_version_tag;
    Cached *c = NULL;
    PyObject *payload, *spec;

    if (n <= CACHE_PAYLOAD) {
        c = &cache[cache_slot(memo, p, n)];
        if (c->memo == memo && c->version == version && c->len == n &&
            same_payload(c->payload, p, n))
            return c->spec;
    }
    payload = PyBytes_FromStringAndSize((const char *)p, n);
    if (payload == NULL)
        return NULL;
    spec = PyDict_GetItemWithError(memo, payload);  /* borrowed */
    Py_DECREF(payload);
    if (spec != NULL && c != NULL) {
        c->memo = memo;
        c->version = version;
        c->spec = spec;
        c->len = n;
        memcpy(c->payload, p, (size_t)n);
    }
    return spec;
}

/* How the escape sequence at s[j] (not an OSC or a DCS) stands at the end of the chunk, as
 * _scan.py's _COMPLETE and _PREFIX read it: complete (1), a clean start the chunk cuts (0), or
 * neither (-1): a CSI or ESC sequence with a byte it cannot hold, an SOS, PM or APC. */
static int
sequence_state(const unsigned char *s, Py_ssize_t j, Py_ssize_t n)
{
    Py_ssize_t k = j + 1;
    unsigned char b;

    if (k == n)
        return 0;
    b = s[k];
    if (b == '[') {
        for (k++; k < n && s[k] >= 0x30 && s[k] <= 0x3f; k++)
            ;
        for (; k < n && s[k] >= 0x20 && s[k] <= 0x2f; k++)
            ;
        if (k == n)
            return 0;
        return s[k] >= 0x40 && s[k] <= 0x7e ? 1 : -1;
    }
    if (b >= 0x20 && b <= 0x2f) {
        for (; k < n && s[k] >= 0x20 && s[k] <= 0x2f; k++)
            ;
        if (k == n)
            return 0;
        return s[k] >= 0x30 && s[k] <= 0x7e ? 1 : -1;
    }
    if (b >= 0x30 && b <= 0x7e && b != 'P' && b != 'X' && b != '[' && b != ']' && b != '^' &&
        b != '_')
        return 1;
    return -1;
}

/* The well-formed sequence at s[j] (an ESC), as _parser.py's _SIMPLE_RE reads one: its end,
 * or -1. CSI: `[`, one optional private marker, at most 32 values (digits, `;` or `:`
 * between), at most 2 intermediates, a final; ESC: 1-2 intermediates and a final, or a final
 * that opens no CSI, OSC, DCS, SOS, PM or APC. */
static Py_ssize_t
well_formed(const unsigned char *s, Py_ssize_t j, Py_ssize_t n)
{
    Py_ssize_t k = j + 1, seps = 0, inter = 0;

    if (k >= n)
        return -1;
    if (s[k] == '[') {
        k++;
        if (k < n && s[k] >= '<' && s[k] <= '?')
            k++;
        for (; k < n && ((s[k] >= '0' && s[k] <= '9') || s[k] == ';' || s[k] == ':'); k++)
            if (s[k] == ';' || s[k] == ':')
                if (++seps > 31)
                    return -1;
        for (; k < n && s[k] >= 0x20 && s[k] <= 0x2f; k++)
            if (++inter > 2)
                return -1;
        return k < n && s[k] >= 0x40 && s[k] <= 0x7e ? k + 1 : -1;
    }
    for (; k < n && s[k] >= 0x20 && s[k] <= 0x2f; k++)
        if (++inter > 2)
            return -1;
    if (k >= n || s[k] < 0x30 || s[k] > 0x7e)
        return -1;
    if (inter == 0 && (s[k] == 'P' || s[k] == 'X' || s[k] == '[' || s[k] == ']' ||
                       s[k] == '^' || s[k] == '_'))
        return -1;
    return k + 1;
}

PyDoc_STRVAR(inert_doc,
"inert(data) -> bool\n\n"
"The compiled `_scan.inert_python`: plain text and well-formed CSI and ESC sequences only.");

static PyObject *
inert(PyObject *module, PyObject *data)
{
    const unsigned char *s, *esc;
    Py_ssize_t n, i = 0;

    (void)module;
    if (!PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "inert takes bytes");
        return NULL;
    }
    s = (const unsigned char *)PyBytes_AS_STRING(data);
    n = PyBytes_GET_SIZE(data);
    while (i < n && (esc = memchr(s + i, 0x1b, (size_t)(n - i))) != NULL) {
        i = well_formed(s, esc - s, n);
        if (i < 0)
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(scan_doc,
"scan(data, i, cap, base, memo, out) -> int\n\n"
"The compiled `_scan.scan_python`: the same contract, the same result.");

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *data, *memo, *out;
    Py_ssize_t i, cap, base, n, last;
    const unsigned char *s;

    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "scan takes data, i, cap, base, memo, out");
        return NULL;
    }
    data = args[0];
    memo = args[4];
    out = args[5];
    if (!PyBytes_CheckExact(data) || !PyDict_CheckExact(memo) || !PyList_CheckExact(out)) {
        PyErr_SetString(PyExc_TypeError, "scan takes bytes, int, int, int, dict, list");
        return NULL;
    }
    i = PyLong_AsSsize_t(args[1]);
    cap = PyLong_AsSsize_t(args[2]);
    base = PyLong_AsSsize_t(args[3]);
    if ((i == -1 || cap == -1 || base == -1) && PyErr_Occurred())
        return NULL;
    s = (const unsigned char *)PyBytes_AS_STRING(data);
    n = PyBytes_GET_SIZE(data);
    if (i < 0 || i > n || cap < 0) {
        PyErr_SetString(PyExc_ValueError, "scan: i must be within data and cap >= 0");
        return NULL;
    }
    last = -1;
    while (i < n) {
        const unsigned char *esc = memchr(s + i, 0x1b, (size_t)(n - i));
        Py_ssize_t j, p, q, limit, end;
        unsigned char b;
        PyObject *spec;

        if (esc == NULL)
            break;
        j = esc - s;
        if (j + 1 >= n)
            return PyLong_FromSsize_t(n + j);  /* a lone ESC at the end: a clean start */
        b = s[j + 1];
        if (b != ']') {
            if (b == 'P' || b < 0x20 || b == 0x7f)
                return PyLong_FromSsize_t(j);
            last = j;
            i = j + 1;  /* a CSI, ESC or SOS/PM/APC sequence: nothing in it for us */
            continue;
        }
        last = -1;
        p = j + 2;
        limit = n - p > cap ? p + cap + 1 : n;
        for (q = p; q + 8 <= limit; q += 8) {  /* eight bytes a step to the first C0 byte */
            uint64_t w;
            memcpy(&w, s + q, 8);
            if ((w - 0x2020202020202020ull) & ~w & 0x8080808080808080ull)
                break;
        }
        for (; q < limit && !ends_osc[s[q]]; q++)
            ;
        if (q == limit)  /* cut by the chunk (a clean start), or longer than the cap */
            return PyLong_FromSsize_t(n - p <= cap ? n + j : j);
        if (s[q] == 0x07)
            end = q + 1;
        else if (s[q] == 0x1b && q + 1 < n && s[q + 1] == '\\')
            end = q + 2;
        else
            return PyLong_FromSsize_t(j);  /* CAN, SUB, or an ESC that is not ST */
        i = end;
        if (!is_marker_command(s + p, q - p))
            continue;
        spec = memo_lookup(memo, s + p, q - p);  /* borrowed */
        if (spec == NULL) {
            if (PyErr_Occurred())
                return NULL;
            return PyLong_FromSsize_t(j);  /* not decoded yet: the caller decodes it */
        }
        if (spec != Py_None) {
            int failed;
            Py_INCREF(spec);  /* the event's construction runs Python code */
            failed = emit(out, spec, base + j, base + end) < 0;
            Py_DECREF(spec);
            if (failed)
                return NULL;
        }
    }
    if (last >= 0) {
        int state = sequence_state(s, last, n);
        if (state <= 0)
            return PyLong_FromSsize_t(state == 0 ? n + last : last);
    }
    return PyLong_FromSsize_t(-1);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, scan_doc},
    {"inert", inert, METH_O, inert_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cscan",
    "The compiled core of vtparse's markers-only scan (see _scan.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cscan(void)
{
    ends_osc[0x07] = ends_osc[0x18] = ends_osc[0x1a] = ends_osc[0x1b] = 1;
    return PyModule_Create(&module_def);
}
