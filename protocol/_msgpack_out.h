/* Writing msgpack into a growing buffer, as msgpack-python's packer writes it (the smallest
 * int encoding, the smallest str and array headers): the compiled packers of the watcher's
 * events (actors/watcher/_cevents.c) and of the parser's answers (actors/parser/_cpack.c),
 * whose tests compare their bytes with msgpack's. Static inline functions: each module that
 * includes this has its own copy; each call runs with the GIL held. */
#ifndef MOORAGE_MSGPACK_OUT_H
#define MOORAGE_MSGPACK_OUT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} Out;

static inline int
reserve(Out *o, Py_ssize_t n)
{
    if (o->len + n <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + n)
        cap *= 2;
    char *b = PyMem_Realloc(o->buf, (size_t)cap);
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = b;
    o->cap = cap;
    return 0;
}

static inline int
put(Out *o, const void *p, Py_ssize_t n)
{
    if (reserve(o, n) < 0)
        return -1;
    memcpy(o->buf + o->len, p, (size_t)n);
    o->len += n;
    return 0;
}

/* `tag` then `v` big-endian in `width` bytes (0: the tag alone) */
static inline int
put_tagged(Out *o, unsigned char tag, uint64_t v, int width)
{
    unsigned char b[9];
    b[0] = tag;
    for (int k = 0; k < width; k++)
        b[1 + k] = (unsigned char)(v >> (8 * (width - 1 - k)));
    return put(o, b, 1 + width);
}

static inline int
put_int(Out *o, long long d)
{
    if (d < -(1LL << 5)) {
        if (d < -(1LL << 15))
            return d < -(1LL << 31) ? put_tagged(o, 0xd3, (uint64_t)d, 8)
                                    : put_tagged(o, 0xd2, (uint64_t)d, 4);
        return d < -(1LL << 7) ? put_tagged(o, 0xd1, (uint64_t)d, 2)
                               : put_tagged(o, 0xd0, (uint64_t)d, 1);
    }
    if (d < (1LL << 7))
        return put_tagged(o, (unsigned char)(d & 0xff), 0, 0);  /* a fixint, either sign */
    if (d < (1LL << 16))
        return d < (1LL << 8) ? put_tagged(o, 0xcc, (uint64_t)d, 1)
                              : put_tagged(o, 0xcd, (uint64_t)d, 2);
    return d < (1LL << 32) ? put_tagged(o, 0xce, (uint64_t)d, 4)
                           : put_tagged(o, 0xcf, (uint64_t)d, 8);
}

/* A str or array header: the fix form below `fix_n`, then 8 (str only: `t8`), 16 and 32-bit
 * lengths, whose tags follow each other in msgpack (`t16` + 1 is the 32-bit one). */
static inline int
put_header(Out *o, Py_ssize_t n, unsigned char fix, Py_ssize_t fix_n, unsigned char t8,
           unsigned char t16)
{
    if (n < fix_n)
        return put_tagged(o, (unsigned char)(fix | n), 0, 0);
    if (t8 && n < 256)
        return put_tagged(o, t8, (uint64_t)n, 1);
    if (n < 65536)
        return put_tagged(o, t16, (uint64_t)n, 2);
    return put_tagged(o, (unsigned char)(t16 + 1), (uint64_t)n, 4);
}

#define put_str_header(o, n) put_header((o), (n), 0xa0, 32, 0xd9, 0xda)
#define put_array_header(o, n) put_header((o), (n), 0x90, 16, 0, 0xdc)

#endif
