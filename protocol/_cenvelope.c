/* The compiled message decoders: `request(frames)`, `reply(frames)` and `stream(frames)`
 * answer what envelope.py's decode_request_python, decode_reply_python and
 * decode_stream_python answer, for the messages almost every call and stream is made of,
 * and hand every other one to those functions (given to `configure`), which are the
 * reference and say what is wrong with a bad one.
 *
 * What is decoded here: a header that is a map holding only the keys the protocol defines
 * for it (request: id, sid, op, deadline_ms, ep; reply: id, ok, ep; stream: seq, ep,
 * welcome), each once and of a type the reference accepts, with no bytes after it; and a
 * body that is a protocol value (maps with str keys, no extension type, nested at most
 * MAX_DEPTH) within the reference's limits. Anything else (an extension type, a key the
 * header does not define, invalid UTF-8, a value out of range, a body nested too deep or
 * holding too many values, a short buffer) is the reference's to decode or refuse: this
 * file never raises a protocol error of its own, so it cannot answer one differently. The
 * tests hold both to the same answers over the vectors and a fuzzed corpus.
 *
 * Why: msgpack's unpackb builds an unpacking context per call and the reference then reads
 * the header's dict back key by key; for a request of four header keys and a one-key body
 * that was 1.3 µs of every request's 4 µs of work in an actor, and every step of it runs
 * again cold after each wake-up. This reads the bytes once, into the result.
 *
 * msgpack as the reference decodes it (msgpack-python >= 1.0, raw=False): str is UTF-8,
 * decoded strictly; bin is bytes; float 32 widens to a double; every int encoding is an int.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *request_type = NULL; /* envelope.Request */
static PyObject *reply_type = NULL;   /* envelope.Reply */
static PyObject *stream_type = NULL;  /* envelope.StreamMessage */
static PyObject *request_fallback = NULL; /* envelope.decode_request_python */
static PyObject *reply_fallback = NULL;   /* envelope.decode_reply_python */
static PyObject *stream_fallback = NULL;  /* envelope.decode_stream_python */
static PyObject *tag = NULL; /* bytes */
static Py_ssize_t max_header, max_op_len, max_attachments, max_body, max_values, max_message;
static int max_depth = 32;
static unsigned long long max_id;

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
    Py_ssize_t presize;  /* elements its containers may still be made at their size */
} reader;

/* A value read from the buffer: its kind, and what it holds. */
enum kind { K_BAD, K_NIL, K_BOOL, K_UINT, K_INT, K_FLOAT, K_STR, K_BIN, K_MAP, K_ARRAY };

typedef struct {
    enum kind kind;
    int flag;               /* K_BOOL */
    unsigned long long u;   /* K_UINT; the length of K_STR, K_BIN, K_MAP, K_ARRAY */
    long long i;            /* K_INT (negative) */
    double f;               /* K_FLOAT */
    const unsigned char *s; /* K_STR, K_BIN */
} value;

static inline int
need(reader *r, Py_ssize_t n)
{
    return r->end - r->p >= n;
}

static inline unsigned long long
be(const unsigned char *p, int n)
{
    unsigned long long v = 0;
    for (int k = 0; k < n; k++)
        v = v << 8 | p[k];
    return v;
}

/* The next value's head; a str's or bin's bytes are skipped over (and pointed to), a map's or
 * array's elements are not. K_BAD: something this file does not decode (or a short buffer). */
static value
next(reader *r)
{
    value v = {K_BAD, 0, 0, 0, 0.0, NULL};
    if (!need(r, 1))
        return v;
    unsigned char b = *r->p++;
    int width = 0; /* bytes of a length or number after the head byte */
    if (b <= 0x7f) {
        v.kind = K_UINT;
        v.u = b;
        return v;
    }
    if (b >= 0xe0) {
        v.kind = K_INT;
        v.i = (signed char)b;
        return v;
    }
    if ((b & 0xf0) == 0x80) {
        v.kind = K_MAP;
        v.u = b & 0x0f;
        return v;
    }
    if ((b & 0xf0) == 0x90) {
        v.kind = K_ARRAY;
        v.u = b & 0x0f;
        return v;
    }
    if ((b & 0xe0) == 0xa0) {
        v.kind = K_STR;
        v.u = b & 0x1f;
    }
    else {
        switch (b) {
        case 0xc0: v.kind = K_NIL; return v;
        case 0xc2: v.kind = K_BOOL; v.flag = 0; return v;
        case 0xc3: v.kind = K_BOOL; v.flag = 1; return v;
        case 0xc4: case 0xc5: case 0xc6:
            width = 1 << (b - 0xc4);
            if (!need(r, width))
                return v;
            v.kind = K_BIN;
            v.u = be(r->p, width);
            r->p += width;
            break;
        case 0xca: case 0xcb: {
            width = b == 0xca ? 4 : 8;
            if (!need(r, width))
                return v;
            unsigned long long bits = be(r->p, width);
            r->p += width;
            if (width == 4) {
                uint32_t b32 = (uint32_t)bits;
                float f;
                memcpy(&f, &b32, 4);
                v.f = f;
            }
            else {
                memcpy(&v.f, &bits, 8);
            }
            v.kind = K_FLOAT;
            return v;
        }
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            width = 1 << (b - 0xcc);
            if (!need(r, width))
                return v;
            v.kind = K_UINT;
            v.u = be(r->p, width);
            r->p += width;
            return v;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
            width = 1 << (b - 0xd0);
            if (!need(r, width))
                return v;
            unsigned long long raw = be(r->p, width);
            r->p += width;
            long long s; /* sign-extended from `width` bytes */
            if (width == 8)
                s = (long long)raw;
            else {
                unsigned long long sign = 1ULL << (width * 8 - 1);
                s = (long long)((raw ^ sign) - sign);
            }
            if (s >= 0) {
                v.kind = K_UINT;
                v.u = (unsigned long long)s;
            }
            else {
                v.kind = K_INT;
                v.i = s;
            }
            return v;
        }
        case 0xd9: case 0xda: case 0xdb:
            width = 1 << (b - 0xd9);
            if (!need(r, width))
                return v;
            v.kind = K_STR;
            v.u = be(r->p, width);
            r->p += width;
            break;
        case 0xdc: case 0xdd:
            width = b == 0xdc ? 2 : 4;
            if (!need(r, width))
                return v;
            v.kind = K_ARRAY;
            v.u = be(r->p, width);
            r->p += width;
            return v;
        case 0xde: case 0xdf:
            width = b == 0xde ? 2 : 4;
            if (!need(r, width))
                return v;
            v.kind = K_MAP;
            v.u = be(r->p, width);
            r->p += width;
            return v;
        default: /* ext types, and 0xc1, which msgpack never uses */
            return v;
        }
    }
    /* K_STR or K_BIN: its bytes */
    if ((unsigned long long)(r->end - r->p) < v.u) {
        v.kind = K_BAD;
        return v;
    }
    v.s = r->p;
    r->p += v.u;
    return v;
}

/* A scalar value as the reference decodes it; NULL without an exception: not decoded here
 * (a container, invalid UTF-8); NULL with one: out of memory. */
static PyObject *
scalar(value v)
{
    switch (v.kind) {
    case K_NIL: Py_RETURN_NONE;
    case K_BOOL: return PyBool_FromLong(v.flag);
    case K_UINT: return PyLong_FromUnsignedLongLong(v.u);
    case K_INT: return PyLong_FromLongLong(v.i);
    case K_FLOAT: return PyFloat_FromDouble(v.f);
    case K_BIN: return PyBytes_FromStringAndSize((const char *)v.s, (Py_ssize_t)v.u);
    case K_STR: {
        PyObject *s = PyUnicode_DecodeUTF8((const char *)v.s, (Py_ssize_t)v.u, NULL);
        if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_Clear();
        return s;
    }
    default: return NULL;
    }
}

/* Short strs, decoded once: a body's maps repeat a few short keys ("kind", "path", "size"...)
 * hundreds of times (a parse.feed answer of 150 events, a listing, a batch of watcher
 * events), and many of their values too (an event's kind, a marker's nonce, a file's type);
 * each was a new str: UTF-8 decoded, allocated, hashed on insertion. A slot keeps the str of
 * the last short string of its hash (its bytes beside it, compared whole), with its hash
 * computed, so a repeated one is a reference taken (a str is immutable: a shared one is the
 * same value). A value seen once costs the hash and a slot's turn: a batch of 150 watcher
 * events with distinct paths decodes no slower. Touched only with the GIL held. */
#define STR_SLOTS 512
#define STR_MAX 24

typedef struct {
    PyObject *str;
    Py_ssize_t len;
    unsigned char bytes[STR_MAX];
} str_slot;

static str_slot strs[STR_SLOTS];

/* The str of `v` (K_STR), as scalar() makes it; NULL as scalar() says. */
static PyObject *
short_str(value v)
{
    Py_ssize_t n = (Py_ssize_t)v.u;
    if (n > STR_MAX)
        return scalar(v);
    unsigned h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ v.s[i]) * 16777619u;
    str_slot *slot = &strs[h & (STR_SLOTS - 1)];
    if (slot->str != NULL && slot->len == n && memcmp(slot->bytes, v.s, (size_t)n) == 0) {
        Py_INCREF(slot->str);
        return slot->str;
    }
    PyObject *s = scalar(v);
    if (s == NULL)
        return NULL;
    if (PyObject_Hash(s) == -1) {  /* (a str's hash, kept with it for every insert) */
        Py_DECREF(s);
        return NULL;
    }
    Py_XSETREF(slot->str, Py_NewRef(s));
    slot->len = n;
    memcpy(slot->bytes, v.s, (size_t)n);
    return s;
}

/* A value and what it holds, as the reference decodes and then checks it (a protocol value:
 * str keys, no extension, containers at most `max_depth` deep, the outermost at depth 1),
 * `*left` counting down the values it may hold when counting (each container 1, each
 * element 1, a map's two). NULL without an exception: the reference's to decode. */
static PyObject *
decode_value(reader *r, int depth, long long *left)
{
    value head = next(r);
    if (head.kind == K_STR)
        return short_str(head);
    if (head.kind != K_MAP && head.kind != K_ARRAY)
        return scalar(head);
    if (depth > max_depth)
        return NULL;
    unsigned long long per = head.kind == K_MAP ? 2 : 1;
    if (head.u > (unsigned long long)(r->end - r->p)) /* each element takes a byte */
        return NULL;
    if (left != NULL) {
        *left -= 1 + (long long)(per * head.u);
        if (*left < 0)
            return NULL;
    }
    Py_ssize_t n = (Py_ssize_t)head.u;
    /* A container is made at its declared size (PyDict_New's table holds five, so an
     * event's eight or nine keys cost a resize and every key inserted twice), while the
     * sizes so made add up to no more than the body's bytes: every value takes one at
     * least, so a body's true containers always fit, and a header's count costs nothing
     * before its entries do (maps nested twenty deep, each saying a million entries, would
     * otherwise take 2.6 MB each, arrays 8 MB, from a body of one megabyte). Past that
     * budget a container grows as its entries come. */
    int grow = n > r->presize;
    if (!grow)
        r->presize -= n;
    PyObject *out = head.kind != K_MAP ? PyList_New(grow ? 0 : n)
                    : grow ? PyDict_New() : _PyDict_NewPresized(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *key = NULL;
        if (head.kind == K_MAP) {
            value kv = next(r);
            if (kv.kind != K_STR || (key = short_str(kv)) == NULL)
                goto miss;
        }
        PyObject *item = decode_value(r, depth + 1, left);
        if (item == NULL) {
            Py_XDECREF(key);
            goto miss;
        }
        if (key != NULL) {
            int rc = PyDict_SetItem(out, key, item);
            Py_DECREF(key);
            Py_DECREF(item);
            if (rc < 0)
                goto miss;
        }
        else if (!grow) {
            PyList_SET_ITEM(out, k, item);
        }
        else {
            int rc = PyList_Append(out, item);
            Py_DECREF(item);
            if (rc < 0)
                goto miss;
        }
    }
    return out;
miss:
    Py_DECREF(out);
    return NULL;
}

/* A whole body, nothing after it: what the reference's unpackb(body, max_len, max_values)
 * answers for it (values_cap < 0: not counted). NULL without an exception: the reference's
 * to decode. */
static PyObject *
body(PyObject *frame, Py_ssize_t max_len, Py_ssize_t values_cap)
{
    Py_ssize_t len = PyBytes_GET_SIZE(frame);
    if (len > max_len)
        return NULL;
    reader r = {(const unsigned char *)PyBytes_AS_STRING(frame),
                (const unsigned char *)PyBytes_AS_STRING(frame) + len, len};
    /* counted, as there, only past the cap's worth of bytes */
    long long left = values_cap;
    PyObject *out = decode_value(&r, 1, values_cap >= 0 && len > values_cap ? &left : NULL);
    if (out != NULL && r.p != r.end) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* The key of a header entry: its index in `names`, or -1. */
static int
key_index(value k, const char *const *names, int count)
{
    if (k.kind != K_STR)
        return -1;
    for (int j = 0; j < count; j++) {
        size_t n = strlen(names[j]);
        if (k.u == n && memcmp(k.s, names[j], n) == 0)
            return j;
    }
    return -1;
}

/* frames[from:], as a new list */
static PyObject *
attachments(PyObject *frames, Py_ssize_t from)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(frames);
    PyObject *out = PyList_New(n > from ? n - from : 0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = from; k < n; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(frames, k);
        Py_INCREF(item);
        PyList_SET_ITEM(out, k - from, item);
    }
    return out;
}

/* An instance of the NamedTuple `type`, taking the references in `items`; NULL (every one of
 * them given up) when one is missing: a message this file hands on, or out of memory. */
static PyObject *
named(PyObject *type, PyObject **items, Py_ssize_t n)
{
    PyObject *t = NULL;
    int whole = 1;
    for (Py_ssize_t k = 0; k < n; k++)
        whole &= items[k] != NULL;
    if (whole)
        t = ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, n);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (t != NULL)
            PyTuple_SET_ITEM(t, k, items[k]);
        else
            Py_XDECREF(items[k]);
    }
    return t;
}

/* A message of at least `body_at` + 1 frames, those bytes, the tag at `body_at` - 2, and
 * then its header (at `body_at` - 1): a map of only `names`, each at most once and none a
 * container, nothing after it; `got` and `seen` say what it held. 0: not decoded here. */
static int
read_header(PyObject *frames, Py_ssize_t body_at, const char *const *names, int count,
            value *got, int *seen)
{
    if (!PyList_CheckExact(frames) && !PyTuple_CheckExact(frames))
        return 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(frames);
    if (n <= body_at || n - body_at - 1 > max_attachments)
        return 0;
    for (Py_ssize_t k = 0; k <= body_at; k++)
        if (!PyBytes_CheckExact(PySequence_Fast_GET_ITEM(frames, k)))
            return 0;
    PyObject *t = PySequence_Fast_GET_ITEM(frames, body_at - 2);
    PyObject *h = PySequence_Fast_GET_ITEM(frames, body_at - 1);
    if (PyBytes_GET_SIZE(t) != PyBytes_GET_SIZE(tag) ||
        memcmp(PyBytes_AS_STRING(t), PyBytes_AS_STRING(tag), PyBytes_GET_SIZE(t)) != 0 ||
        PyBytes_GET_SIZE(h) > max_header)
        return 0;
    reader r = {(const unsigned char *)PyBytes_AS_STRING(h),
                (const unsigned char *)PyBytes_AS_STRING(h) + PyBytes_GET_SIZE(h), 0};
    value head = next(&r);
    if (head.kind != K_MAP || head.u > (unsigned long long)count)
        return 0;
    *seen = 0;
    for (unsigned long long k = 0; k < head.u; k++) {
        int j = key_index(next(&r), names, count);
        if (j < 0 || *seen & (1 << j))
            return 0;
        *seen |= 1 << j;
        got[j] = next(&r);
        if (got[j].kind == K_BAD || got[j].kind == K_MAP || got[j].kind == K_ARRAY)
            return 0; /* (no header value the protocol defines is a container) */
    }
    return r.p == r.end;
}

static inline int
is_int(value v)
{
    return v.kind == K_UINT || v.kind == K_INT;
}

/* An epoch as the reference takes it: a str as it is, anything else as "" (NULL without an
 * exception: not decoded here). */
static PyObject *
epoch_or_empty(value v, int present)
{
    if (present && v.kind == K_STR)
        return scalar(v);
    if (present && v.kind == K_BIN)
        return NULL; /* (the reference decodes it, then drops it; rare enough to hand on) */
    return PyUnicode_FromStringAndSize("", 0);
}

static const char *const REQUEST_KEYS[] = {"id", "sid", "op", "deadline_ms", "ep"};
enum { R_ID, R_SID, R_OP, R_DEADLINE, R_EP, R_COUNT };

static PyObject *
decode_request_here(PyObject *frames)
{
    value got[R_COUNT];
    int seen;
    if (!read_header(frames, 2, REQUEST_KEYS, R_COUNT, got, &seen) || (seen & 7) != 7)
        return NULL;
    if (got[R_ID].kind != K_UINT || got[R_ID].u > max_id)
        return NULL;
    if (got[R_SID].kind != K_STR || got[R_SID].u == 0 || got[R_OP].kind != K_STR ||
        got[R_OP].u == 0)
        return NULL;
    if (seen & (1 << R_DEADLINE) && got[R_DEADLINE].kind != K_NIL && !is_int(got[R_DEADLINE]))
        return NULL;
    if (seen & (1 << R_EP) && got[R_EP].kind != K_NIL && got[R_EP].kind != K_STR)
        return NULL;

    PyObject *items[7] = {NULL};
    items[1] = scalar(got[R_SID]);
    if (items[1] != NULL && PyUnicode_GET_LENGTH(items[1]) > 128)
        Py_CLEAR(items[1]);
    if (items[1] == NULL || (items[2] = scalar(got[R_OP])) == NULL)
        return named(request_type, items, 7);
    if (PyUnicode_GET_LENGTH(items[2]) > max_op_len) {
        Py_CLEAR(items[2]);
        return named(request_type, items, 7);
    }
    if ((items[6] = seen & (1 << R_EP) ? scalar(got[R_EP]) : Py_NewRef(Py_None)) == NULL)
        return named(request_type, items, 7);
    PyObject *b = PySequence_Fast_GET_ITEM(frames, 2);
    if (PyBytes_GET_SIZE(b) == 1 && PyBytes_AS_STRING(b)[0] == (char)0xc0)
        items[4] = Py_NewRef(Py_None); /* the common "no arguments" */
    else if ((items[4] = body(b, max_body, max_values)) == NULL)
        return named(request_type, items, 7);
    if ((items[0] = PyLong_FromUnsignedLongLong(got[R_ID].u)) != NULL &&
        (items[3] = seen & (1 << R_DEADLINE) ? scalar(got[R_DEADLINE])
                                             : Py_NewRef(Py_None)) != NULL)
        items[5] = attachments(frames, 3);
    return named(request_type, items, 7);
}

static const char *const REPLY_KEYS[] = {"id", "ok", "ep"};
enum { P_ID, P_OK, P_EP, P_COUNT };

static PyObject *
decode_reply_here(PyObject *frames)
{
    value got[P_COUNT];
    int seen;
    if (!read_header(frames, 2, REPLY_KEYS, P_COUNT, got, &seen) ||
        !(seen & (1 << P_OK)) || got[P_OK].kind != K_BOOL)
        return NULL;
    if (seen & (1 << P_ID) && got[P_ID].kind != K_NIL && !is_int(got[P_ID]))
        return NULL;

    PyObject *items[5] = {NULL};
    if ((items[0] = seen & (1 << P_ID) ? scalar(got[P_ID]) : Py_NewRef(Py_None)) != NULL &&
        (items[2] = epoch_or_empty(got[P_EP], seen & (1 << P_EP))) != NULL &&
        (items[3] = body(PySequence_Fast_GET_ITEM(frames, 2), max_message, -1)) != NULL &&
        (items[4] = attachments(frames, 3)) != NULL)
        items[1] = PyBool_FromLong(got[P_OK].flag);
    return named(reply_type, items, 5);
}

static const char *const STREAM_KEYS[] = {"seq", "ep", "welcome"};
enum { S_SEQ, S_EP, S_WELCOME, S_COUNT };

static PyObject *
decode_stream_here(PyObject *frames)
{
    value got[S_COUNT];
    int seen;
    if (!read_header(frames, 3, STREAM_KEYS, S_COUNT, got, &seen) ||
        !(seen & (1 << S_SEQ)) || !is_int(got[S_SEQ]))
        return NULL;
    /* welcome: `is True` there; anything but a bool or nil is handed on */
    if (seen & (1 << S_WELCOME) && got[S_WELCOME].kind != K_BOOL &&
        got[S_WELCOME].kind != K_NIL)
        return NULL;

    PyObject *items[6] = {NULL};
    PyObject *topic = PySequence_Fast_GET_ITEM(frames, 0);
    items[0] = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(topic), PyBytes_GET_SIZE(topic), NULL);
    if (items[0] == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear(); /* the reference names it */
    if (items[0] != NULL && (items[1] = scalar(got[S_SEQ])) != NULL &&
        (items[2] = epoch_or_empty(got[S_EP], seen & (1 << S_EP))) != NULL &&
        (items[3] = body(PySequence_Fast_GET_ITEM(frames, 3), max_message, -1)) != NULL &&
        (items[4] = attachments(frames, 4)) != NULL)
        items[5] = PyBool_FromLong(seen & (1 << S_WELCOME) && got[S_WELCOME].kind == K_BOOL &&
                                   got[S_WELCOME].flag);
    return named(stream_type, items, 6);
}

static PyObject *
decode_with(PyObject *(*here)(PyObject *), PyObject *fallback, PyObject *frames)
{
    if (fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cenvelope is not configured");
        return NULL;
    }
    PyObject *out = here(frames);
    if (out != NULL || PyErr_Occurred())
        return out;
    return PyObject_CallOneArg(fallback, frames);
}

static PyObject *
request(PyObject *self, PyObject *frames)
{
    return decode_with(decode_request_here, request_fallback, frames);
}

static PyObject *
reply(PyObject *self, PyObject *frames)
{
    return decode_with(decode_reply_here, reply_fallback, frames);
}

static PyObject *
stream(PyObject *self, PyObject *frames)
{
    return decode_with(decode_stream_here, stream_fallback, frames);
}

static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *rq, *rp, *st, *rqf, *rpf, *stf, *t;
    if (!PyArg_ParseTuple(args, "OOOOOOO!nnnnnnKi", &rq, &rp, &st, &rqf, &rpf, &stf,
                          &PyBytes_Type, &t, &max_header, &max_op_len, &max_attachments,
                          &max_body, &max_values, &max_message, &max_id, &max_depth))
        return NULL;
    PyObject *types[] = {rq, rp, st};
    for (int k = 0; k < 3; k++) {
        if (!PyType_Check(types[k]) ||
            !PyType_IsSubtype((PyTypeObject *)types[k], &PyTuple_Type)) {
            PyErr_SetString(PyExc_TypeError, "Request, Reply and StreamMessage are tuples");
            return NULL;
        }
    }
    Py_XSETREF(request_type, Py_NewRef(rq));
    Py_XSETREF(reply_type, Py_NewRef(rp));
    Py_XSETREF(stream_type, Py_NewRef(st));
    Py_XSETREF(request_fallback, Py_NewRef(rqf));
    Py_XSETREF(reply_fallback, Py_NewRef(rpf));
    Py_XSETREF(stream_fallback, Py_NewRef(stf));
    Py_XSETREF(tag, Py_NewRef(t));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(Request, Reply, StreamMessage, request_fallback, reply_fallback, "
     "stream_fallback, tag, max_header, "
     "max_op_len, max_attachments, max_body, max_values, max_message, max_id, max_depth)"},
    {"request", request, METH_O, "decode_request(frames): a Request, or the fallback's answer"},
    {"reply", reply, METH_O, "decode_reply(frames): a Reply, or the fallback's answer"},
    {"stream", stream, METH_O,
     "decode_stream(frames): a StreamMessage, or the fallback's answer"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cenvelope", "The compiled request and reply decoders.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__cenvelope(void)
{
    return PyModule_Create(&module);
}
