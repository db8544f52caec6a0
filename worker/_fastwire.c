/* The miss path's wire work in C: a client's query parsed into its cache
 * key, an upstream response walked, classified and turned into the parts
 * of a cache Entry, and the upstream query's 0x20 case and answer check.
 *
 * worker/wire.py, response.py and upstream_query.py hold the reference implementation
 * in Python; this module is only an accelerator of it. Every function here
 * returns None for any input the Python code would refuse (or would treat
 * in a way not written here), and the caller then runs the Python code,
 * which raises the precise error. So the errors and their messages live in
 * one place, and tests/unit/test_fastwire.py checks that both agree on
 * every input hypothesis makes.
 *
 * Bounded like the Python: names walked label by label with the RFC 1035
 * limits (63-byte labels, 255-byte names), compression pointers only
 * backwards, every read checked against the length. No state: nothing here
 * outlives a call but the objects it returns.
 *
 * Also the two batch system calls of worker/mmsg.py, which otherwise goes
 * through ctypes: a ctypes call (argument conversion, libffi, byref) cost
 * more than the system call's own user-space work on every client batch;
 * and untrack(), which takes a cache Entry out of the cyclic collector.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>

#define TYPE_NS 2
#define TYPE_CNAME 5
#define TYPE_SOA 6
#define TYPE_OPT 41
#define TYPE_ANY 255
#define FLAG_TC 0x02
#define FLAG_AA 0x04
#define FLAG_CD 0x10
#define EDNS_DO 0x8000
#define MAX_LABEL 63
#define MAX_NAME 255
#define CLASSIC_UDP_PAYLOAD 512
/* Records per response we handle here; a longer response takes the Python path. */
#define MAX_RECORDS 64

enum kind { POSITIVE, NXDOMAIN, NODATA, REFERRAL, SERVFAIL, OTHER };

static inline unsigned get16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }
static inline uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

/* Offset past the name at `off`, or -1 where wire.skip_name raises. */
static Py_ssize_t skip_name(const uint8_t *d, Py_ssize_t size, Py_ssize_t off, int pointers) {
    Py_ssize_t start = off, total = 0;
    for (;;) {
        if (off >= size)
            return -1;
        unsigned length = d[off];
        if (length == 0)
            return off + 1;
        if (length >= 0xC0 && pointers) {
            if (off + 1 >= size)
                return -1;
            if ((Py_ssize_t)((length & 0x3F) << 8 | d[off + 1]) >= start)
                return -1;
            return off + 2;
        }
        if (length > MAX_LABEL)
            return -1;
        total += length + 1;
        if (total >= MAX_NAME)
            return -1;
        off += length + 1;
    }
}

/* parse_query(Question, data) -> Question | None: wire.parse_query's result
 * for a query it accepts, None for one it refuses. */
static PyObject *parse_query(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyType_Check(args[0]) || !PyType_IsSubtype((PyTypeObject *)args[0], &PyTuple_Type)
            || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "parse_query(Question: a tuple type, data: bytes)");
        return NULL;
    }
    PyTypeObject *question_type = (PyTypeObject *)args[0];
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    if (size < 12)
        Py_RETURN_NONE;
    unsigned b2 = d[2], b3 = d[3];
    unsigned qd = get16(d + 4), an = get16(d + 6), ns = get16(d + 8), ar = get16(d + 10);
    if ((b2 & 0x78) || qd != 1 || (b2 & FLAG_TC) || an || ns)
        Py_RETURN_NONE;
    Py_ssize_t qend = skip_name(d, size, 12, 0);
    if (qend < 0 || qend + 4 > size)
        Py_RETURN_NONE;
    unsigned qtype = get16(d + qend), qclass = get16(d + qend + 2);
    int cd = (b3 & FLAG_CD) != 0, has_opt = 0, dobit = 0;
    long payload = CLASSIC_UDP_PAYLOAD;
    Py_ssize_t off = qend + 4;
    for (unsigned i = 0; i < ar; i++) {     /* wire._find_opt, an and ns being 0 */
        Py_ssize_t start = skip_name(d, size, off, 1);
        if (start < 0 || start + 10 > size)
            Py_RETURN_NONE;
        unsigned rtype = get16(d + start), rclass = get16(d + start + 2);
        uint32_t ttl = get32(d + start + 4);
        if (rtype == TYPE_OPT) {
            if (has_opt || d[off] != 0 || (ttl >> 16 & 0xFF))
                Py_RETURN_NONE;
            has_opt = 1;
            payload = rclass > CLASSIC_UDP_PAYLOAD ? rclass : CLASSIC_UDP_PAYLOAD;
            dobit = (ttl & EDNS_DO) != 0;
        }
        off = start + 10 + get16(d + start + 8);
        if (off > size)
            Py_RETURN_NONE;
    }
    Py_ssize_t name_len = qend - 12;
    PyObject *key = PyBytes_FromStringAndSize(NULL, name_len + 5);
    if (key == NULL)
        return NULL;
    uint8_t *k = (uint8_t *)PyBytes_AS_STRING(key);
    for (Py_ssize_t i = 0; i < name_len; i++) {     /* bytes.lower(): ASCII letters only */
        uint8_t c = d[12 + i];
        k[i] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
    }
    memcpy(k + name_len, d + qend, 4);
    k[name_len + 4] = (uint8_t)(dobit << 1 | cd);
    PyObject *q = question_type->tp_alloc(question_type, 8);
    if (q == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    PyObject *items[8] = {
        key, PyLong_FromSsize_t(qend), PyLong_FromLong(qtype), PyLong_FromLong(qclass),
        PyBool_FromLong(has_opt), PyLong_FromLong(payload), PyBool_FromLong(dobit), PyBool_FromLong(cd)};
    for (int i = 0; i < 8; i++) {
        if (items[i] == NULL) {
            for (int j = 0; j < 8; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(q);
            return NULL;
        }
    }
    for (int i = 0; i < 8; i++)
        PyTuple_SET_ITEM(q, i, items[i]);
    return q;
}

struct record {
    int section;
    unsigned rtype;
    Py_ssize_t start, ttl_offset, end;
    int64_t ttl;
};

/* The records of a response as wire.parse_response walks them; the count,
 * or -1 where it raises (or past MAX_RECORDS). */
static int walk(const uint8_t *d, Py_ssize_t size, Py_ssize_t *name_end, struct record *recs) {
    if (size < 12 || get16(d + 4) != 1)
        return -1;
    Py_ssize_t end = skip_name(d, size, 12, 0);
    if (end < 0 || end + 4 > size)
        return -1;
    *name_end = end;
    unsigned counts[3] = {get16(d + 6), get16(d + 8), get16(d + 10)};
    Py_ssize_t off = end + 4;
    int n = 0;
    for (int section = 0; section < 3; section++) {
        for (unsigned i = 0; i < counts[section]; i++) {
            if (n == MAX_RECORDS)
                return -1;
            Py_ssize_t start = off;
            off = skip_name(d, size, off, 1);
            if (off < 0 || off + 10 > size)
                return -1;
            Py_ssize_t rend = off + 10 + get16(d + off + 8);
            if (rend > size)
                return -1;
            recs[n].section = section;
            recs[n].rtype = get16(d + off);
            recs[n].start = start;
            recs[n].ttl_offset = off + 4;
            recs[n].ttl = get32(d + off + 4);
            recs[n].end = rend;
            n++;
            off = rend;
        }
    }
    return n;
}

/* response.classify */
static enum kind classify(unsigned b2, unsigned b3, unsigned qtype, const struct record *recs, int n) {
    unsigned rcode = b3 & 0x0F;
    if (rcode == 2 || rcode == 5)
        return SERVFAIL;
    if ((rcode != 0 && rcode != 3) || (b2 & FLAG_TC))
        return OTHER;
    if (rcode == 3)
        return NXDOMAIN;
    int any_type = qtype == TYPE_CNAME || qtype == TYPE_ANY, answered = 0, has_ns = 0, has_soa = 0;
    for (int i = 0; i < n; i++) {
        if (recs[i].section == 0) {
            if (any_type || recs[i].rtype == qtype)
                return POSITIVE;
            answered = 1;
        } else if (recs[i].section == 1) {
            if (recs[i].rtype == TYPE_NS)
                has_ns = 1;
            else if (recs[i].rtype == TYPE_SOA)
                has_soa = 1;
        }
    }
    if (!answered && has_ns && !has_soa)
        return REFERRAL;
    return NODATA;
}

static inline int64_t clamp(int64_t t, int64_t low, int64_t high) {
    return t < low ? low : t > high ? high : t;
}

/* response.lifetime_and_ttls: the lifetime, and each record's TTL in `ttls`;
 * -1 where it raises. */
static int64_t lifetime_and_ttls(const uint8_t *d, enum kind kind, const struct record *recs, int n,
                                 int64_t *ttls, int64_t low, int64_t high, int64_t negative_max,
                                 int64_t servfail_ttl) {
    int64_t lifetime = 0;
    if (kind == POSITIVE) {
        int clamp_needed = 0;
        for (int i = 0; i < n; i++) {
            ttls[i] = recs[i].ttl;
            if (recs[i].ttl < low || recs[i].ttl > high)
                clamp_needed = 1;
        }
        for (int i = 0; i < n; i++) {
            if (clamp_needed)
                ttls[i] = clamp(ttls[i], low, high);
            if (i == 0 || ttls[i] < lifetime)
                lifetime = ttls[i];
        }
        return lifetime;
    }
    if (kind == SERVFAIL) {
        for (int i = 0; i < n; i++)
            ttls[i] = recs[i].ttl < servfail_ttl ? recs[i].ttl : servfail_ttl;
        return servfail_ttl;
    }
    for (int i = 0; i < n; i++)
        ttls[i] = recs[i].ttl;
    if (kind == OTHER)
        return 0;
    const struct record *soa = NULL;
    int answers = 0, all_cname = 1;
    for (int i = 0; i < n; i++) {
        if (recs[i].section == 0) {
            answers++;
            if (recs[i].rtype != TYPE_CNAME)
                all_cname = 0;
        } else if (recs[i].section == 1 && recs[i].rtype == TYPE_SOA && soa == NULL) {
            soa = &recs[i];
        }
    }
    if (soa == NULL) {
        if (kind == NODATA && answers && all_cname) {
            int first = 1;
            for (int i = 0; i < n; i++) {
                ttls[i] = clamp(ttls[i], low, high);
                if (recs[i].section == 0 && (first || ttls[i] < lifetime)) {
                    lifetime = ttls[i];
                    first = 0;
                }
            }
            return lifetime;
        }
        return 0;
    }
    if (soa->end - 4 < soa->ttl_offset + 6)
        return -1;                          /* wire.soa_minimum: SOA rdata too short */
    lifetime = soa->ttl;
    int64_t minimum = get32(d + soa->end - 4);
    if (minimum < lifetime)
        lifetime = minimum;
    if (negative_max < lifetime)
        lifetime = negative_max;
    for (int i = 0; i < n; i++)
        if (recs[i].section == 0 && recs[i].ttl < lifetime)
            lifetime = recs[i].ttl;
    for (int i = 0; i < n; i++)
        if (ttls[i] > lifetime)
            ttls[i] = lifetime;
    return lifetime;
}

/* entry_parts(data, min_ttl, max_ttl, negative_max_ttl, servfail_ttl,
 *             b2_set, b2_clear, b3_set, b3_clear)
 *   -> (template, name_end, ttl_offsets, ttls, lifetime, rcode) | None
 * What response.entry_from_response makes an Entry of: the upstream's OPT
 * dropped when it is the last record, AA cleared and the [[header]] rule's
 * bits set then cleared, the question in lower case, clamped TTLs written in.
 * None for a response it would refuse. */
static PyObject *entry_parts(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "entry_parts(data: bytes, 8 ints)");
        return NULL;
    }
    int64_t num[8];
    for (int i = 0; i < 8; i++) {
        num[i] = PyLong_AsLongLong(args[i + 1]);
        if (num[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), name_end;
    struct record recs[MAX_RECORDS];
    int64_t ttls[MAX_RECORDS];
    int n = walk(d, size, &name_end, recs);
    if (n < 0)
        Py_RETURN_NONE;
    Py_ssize_t template_size = size;
    unsigned arcount = get16(d + 10);
    if (n && recs[n - 1].rtype == TYPE_OPT) {
        if (arcount == 0)
            Py_RETURN_NONE;                 /* the Python raises (struct.error) */
        template_size = recs[n - 1].start;
        arcount--;
        n--;
    }
    for (int i = 0; i < n; i++)
        if (recs[i].rtype == TYPE_OPT)
            Py_RETURN_NONE;                 /* OPT record is not the last record */
    enum kind kind = classify(d[2], d[3], get16(d + name_end), recs, n);
    int64_t lifetime = lifetime_and_ttls(d, kind, recs, n, ttls, num[0], num[1], num[2], num[3]);
    if (lifetime < 0)
        Py_RETURN_NONE;
    for (int i = 0; i < n; i++)
        if (ttls[i] < 0 || ttls[i] > 0xFFFFFFFFLL)
            Py_RETURN_NONE;                 /* the Python raises (struct.error) */

    PyObject *template = PyBytes_FromStringAndSize(NULL, template_size);
    PyObject *offsets = PyTuple_New(n), *ttl_tuple = PyTuple_New(n);
    if (template == NULL || offsets == NULL || ttl_tuple == NULL)
        goto fail;
    uint8_t *t = (uint8_t *)PyBytes_AS_STRING(template);
    memcpy(t, d, template_size);
    t[10] = arcount >> 8;
    t[11] = arcount & 0xFF;
    t[2] = (uint8_t)((((d[2] & ~FLAG_AA) | num[4]) & ~num[5]) & 0xFF);
    t[3] = (uint8_t)(((d[3] | num[6]) & ~num[7]) & 0xFF);
    for (Py_ssize_t i = 12; i < name_end; i++)
        if (t[i] >= 'A' && t[i] <= 'Z')
            t[i] += 32;
    /* Tuples of ints are never in a cycle: the collector would untrack them
     * at its next pass, after walking them once; they live as long as the entry. */
    PyObject_GC_UnTrack(offsets);
    PyObject_GC_UnTrack(ttl_tuple);
    for (int i = 0; i < n; i++) {
        if (ttls[i] != recs[i].ttl)
            put32(t + recs[i].ttl_offset, (uint32_t)ttls[i]);
        PyObject *o = PyLong_FromSsize_t(recs[i].ttl_offset), *v = PyLong_FromLongLong(ttls[i]);
        if (o == NULL || v == NULL) {
            Py_XDECREF(o);
            Py_XDECREF(v);
            goto fail;
        }
        PyTuple_SET_ITEM(offsets, i, o);
        PyTuple_SET_ITEM(ttl_tuple, i, v);
    }
    return Py_BuildValue("(NnNNdi)", template, name_end, offsets, ttl_tuple, (double)lifetime, d[3] & 0x0F);
fail:
    Py_XDECREF(template);
    Py_XDECREF(offsets);
    Py_XDECREF(ttl_tuple);
    return NULL;
}

/* mix_case(name, noise, at) -> bytes | None: upstream_query.RandomCase.mix's
 * result, each letter of `name` with its case flipped where the 0x20 bit of
 * noise[at + i] is set; None when noise has fewer than len(name) bytes at `at`. */
static PyObject *mix_case(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "mix_case(name: bytes, noise: bytes, at: int)");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[2]);
    if (at == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (at < 0 || at > PyBytes_GET_SIZE(args[1]) - n)
        Py_RETURN_NONE;
    const uint8_t *name = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    const uint8_t *noise = (const uint8_t *)PyBytes_AS_STRING(args[1]) + at;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t c = name[i];
        o[i] = (c >= 'a' && c <= 'z') ? c ^ (noise[i] & 0x20) : c;
    }
    return out;
}

/* answers(data, query_id, qname, type_class, sent_name) -> bool:
 * True when upstream_query.UpstreamQuery.check accepts `data` as the answer
 * (it raises nothing); False otherwise, and the Python says why. */
static PyObject *answers(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[2])
            || !PyBytes_CheckExact(args[3]) || (args[4] != Py_None && !PyBytes_CheckExact(args[4]))) {
        PyErr_SetString(PyExc_TypeError, "answers(data, query_id, qname, type_class, sent_name | None)");
        return NULL;
    }
    long query_id = PyLong_AsLong(args[1]);
    if (query_id == -1 && PyErr_Occurred())
        return NULL;
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    const uint8_t *qname = (const uint8_t *)PyBytes_AS_STRING(args[2]);
    Py_ssize_t qlen = PyBytes_GET_SIZE(args[2]), name_end = 12 + qlen;
    if (size < 12 || (long)get16(d) != query_id || !(d[2] & 0x80) || (d[2] & 0x78) || get16(d + 4) != 1)
        Py_RETURN_FALSE;
    if (size < name_end + 4 || PyBytes_GET_SIZE(args[3]) != 4
            || memcmp(d + name_end, PyBytes_AS_STRING(args[3]), 4) != 0)
        Py_RETURN_FALSE;
    for (Py_ssize_t i = 0; i < qlen; i++) {
        uint8_t c = d[12 + i];
        if (((c >= 'A' && c <= 'Z') ? c + 32 : c) != qname[i])
            Py_RETURN_FALSE;
    }
    if (args[4] != Py_None && (PyBytes_GET_SIZE(args[4]) != qlen
            || memcmp(d + 12, PyBytes_AS_STRING(args[4]), qlen) != 0))
        Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

/* query_wire(query_id, head, name, type_class, opt) -> bytes: the upstream
 * query upstream_query.UpstreamQuery.wire builds in Python, in one
 * allocation: the ID (big-endian), head (header bytes 2..12), the name, type
 * and class, our OPT record. None for an ID outside 0..65535. */
static PyObject *query_wire(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyBytes_CheckExact(args[1]) || !PyBytes_CheckExact(args[2])
            || !PyBytes_CheckExact(args[3]) || !PyBytes_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "query_wire(query_id, head, name, type_class, opt: bytes)");
        return NULL;
    }
    long query_id = PyLong_AsLong(args[0]);
    if (query_id == -1 && PyErr_Occurred())
        return NULL;
    if (query_id < 0 || query_id > 0xFFFF)
        Py_RETURN_NONE;
    Py_ssize_t total = 2;
    for (int i = 1; i < 5; i++)
        total += PyBytes_GET_SIZE(args[i]);
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    put16(o, (unsigned)query_id);
    o += 2;
    for (int i = 1; i < 5; i++) {
        Py_ssize_t n = PyBytes_GET_SIZE(args[i]);
        memcpy(o, PyBytes_AS_STRING(args[i]), (size_t)n);
        o += n;
    }
    return out;
}

/* splice(data, body, qname_end) -> bytes | None: answer.Answerer's reply
 * splice in one allocation, data[:2] + body[2:12] + data[12:qname_end] +
 * body[qname_end:] (the client's ID and question in the cached answer); None
 * unless 12 <= qname_end <= len(data) and qname_end <= len(body). */
static PyObject *splice(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "splice(data: bytes, body: bytes, qname_end: int)");
        return NULL;
    }
    Py_ssize_t qname_end = PyLong_AsSsize_t(args[2]);
    if (qname_end == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t dlen = PyBytes_GET_SIZE(args[0]), blen = PyBytes_GET_SIZE(args[1]);
    if (qname_end < 12 || qname_end > dlen || qname_end > blen)
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, blen);
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    const char *d = PyBytes_AS_STRING(args[0]), *b = PyBytes_AS_STRING(args[1]);
    memcpy(o, d, 2);
    memcpy(o + 2, b + 2, 10);
    memcpy(o + 12, d + 12, (size_t)(qname_end - 12));
    memcpy(o + qname_end, b + qname_end, (size_t)(blen - qname_end));
    return out;
}

/* with_opt(plain, opt) -> bytes | None: cache.Entry.opt_form's reply with
 * our OPT record, in one allocation: plain with ARCOUNT + 1, opt appended.
 * None when plain is shorter than a header or its ARCOUNT is 65535. */
static PyObject *with_opt(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "with_opt(plain: bytes, opt: bytes)");
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t plen = PyBytes_GET_SIZE(args[0]), olen = PyBytes_GET_SIZE(args[1]);
    if (plen < 12 || get16(p + 10) == 0xFFFF)
        Py_RETURN_NONE;
    unsigned arcount = get16(p + 10) + 1;
    PyObject *out = PyBytes_FromStringAndSize(NULL, plen + olen);
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    memcpy(o, p, (size_t)plen);
    put16(o + 10, arcount);
    memcpy(o + plen, PyBytes_AS_STRING(args[1]), (size_t)olen);
    return out;
}

/* recvmmsg/sendmmsg(fd, vector address, count) with MSG_DONTWAIT: what the
 * call returned, or -errno. The vector is worker/mmsg.py's ctypes array of
 * struct mmsghdr (its address: the caller keeps it alive). The GIL is kept,
 * as ctypes.PyDLL kept it: the calls never block. */
static PyObject *batch_call(PyObject *const *args, Py_ssize_t nargs, int sending) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "expected (fd, address, count)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    void *vec = PyLong_AsVoidPtr(args[1]);
    long count = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT32_MAX || count < 0 || count > 1024 || vec == NULL) {
        PyErr_SetString(PyExc_ValueError, "fd or count out of range, or no vector");
        return NULL;
    }
    int n = sending ? sendmmsg((int)fd, (struct mmsghdr *)vec, (unsigned)count, MSG_DONTWAIT)
                    : recvmmsg((int)fd, (struct mmsghdr *)vec, (unsigned)count, MSG_DONTWAIT, NULL);
    return PyLong_FromLong(n >= 0 ? n : -errno);
}

static PyObject *recv_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    return batch_call(args, nargs, 0);
}

static PyObject *send_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    return batch_call(args, nargs, 1);
}

/* untrack(obj): obj leaves the cyclic garbage collector's lists, so no
 * collection walks it again. Only for objects that can never be part of a
 * reference cycle (worker/cache.py's Entry says why it cannot); a cycle
 * through one would never be freed. */
static PyObject *untrack(PyObject *module, PyObject *obj) {
    if (PyObject_IS_GC(obj))
        PyObject_GC_UnTrack(obj);
    Py_RETURN_NONE;
}

/* key_ok: worker/peer.py's valid_key (the reference, same verdict on every
 * input): a name wire of 1-63 byte labels, 255 bytes at most, ending in the
 * root, then qtype, qclass and flags 0-3. */
static int key_ok(const uint8_t *k, Py_ssize_t size) {
    Py_ssize_t name_len = size - 5, i = 0;
    if (size < 6 || name_len > MAX_NAME || k[size - 1] > 3)
        return 0;
    while (i < name_len) {
        unsigned length = k[i];
        if (length == 0)
            return i == name_len - 1;
        if (length > MAX_LABEL)
            return 0;
        i += length + 1;
    }
    return 0;
}

/* valid_key(key) -> bool. Every frame from the peer is checked: the loop
 * over labels cost more in Python than the rest of taking a told answer
 * but the Entry itself. */
static PyObject *valid_key(PyObject *module, PyObject *arg) {
    if (!PyBytes_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "valid_key(key: bytes)");
        return NULL;
    }
    return PyBool_FromLong(key_ok((const uint8_t *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg)));
}

/* A cache-stream record's fixed part (worker/handoff.py _FIXED, "!HHHBBHdd"):
 * key length, template length, qname end, rcode, flags, TTL count, stored_at,
 * expires. Exported as RECORD_FIXED: handoff.py uses record() and
 * told_frames() only when it equals its own. */
#define RECORD_FIXED 26

/* told_frames(datagram) -> [(key, body), ...] | None: worker/peer.py's
 * frame loop for a datagram of told answers only, what the link carries
 * most: frames b"!" + 4-byte length + body, each body a cache-stream record
 * whose key (length in its first 2 bytes, after the fixed part) is a valid
 * cache key. None for anything else (a
 * frame of another kind, one running past the end, a bad key, no frame):
 * the Python loop then takes the datagram and says what is wrong. */
static PyObject *told_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "told_frames(datagram: bytes)");
        return NULL;
    }
    const Py_ssize_t fixed = RECORD_FIXED;
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), at = 0, count = 0;
    while (at < size) {         /* check every frame before making anything */
        if (size - at < 5 || d[at] != '!')
            Py_RETURN_NONE;
        Py_ssize_t body = at + 5, len = (Py_ssize_t)get32(d + at + 1);
        if (len > size - body || len < fixed)
            Py_RETURN_NONE;
        Py_ssize_t key_len = get16(d + body);
        if (key_len > len - fixed || !key_ok(d + body + fixed, key_len))
            Py_RETURN_NONE;
        count++;
        at = body + len;
    }
    if (count == 0)
        Py_RETURN_NONE;
    PyObject *frames = PyList_New(count);
    if (frames == NULL)
        return NULL;
    at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t body = at + 5, len = (Py_ssize_t)get32(d + at + 1);
        PyObject *key = PyBytes_FromStringAndSize((const char *)d + body + fixed, get16(d + body));
        PyObject *record = key ? PyBytes_FromStringAndSize((const char *)d + body, len) : NULL;
        PyObject *pair = record ? PyTuple_Pack(2, key, record) : NULL;
        Py_XDECREF(key);
        Py_XDECREF(record);
        if (pair == NULL) {
            Py_DECREF(frames);
            return NULL;
        }
        PyList_SET_ITEM(frames, i, pair);
        at = body + len;
    }
    return frames;
}

/* record(prefix, key, template, qname_end, rcode, flags, stored_at, expires,
 * ttl_offsets, ttls) -> bytes | None: worker/handoff.py's encode_entry (the
 * reference) after `prefix` (a frame's type byte, or b""), in one
 * allocation: every answer the pair learns is encoded once. None for a field
 * out of the format's range: encode_entry then raises struct.error. */
static PyObject *record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])
            || !PyBytes_CheckExact(args[2]) || !PyTuple_CheckExact(args[8]) || !PyTuple_CheckExact(args[9])) {
        PyErr_SetString(PyExc_TypeError, "record(prefix, key, template, qname_end, rcode, flags, stored_at, "
                                         "expires, ttl_offsets: tuple, ttls: tuple)");
        return NULL;
    }
    long fields[3];
    double times[2];
    for (int i = 0; i < 5; i++) {      /* each checked before the next conversion */
        if (i < 3)
            fields[i] = PyLong_AsLong(args[3 + i]);
        else
            times[i - 3] = PyFloat_AsDouble(args[3 + i]);
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                return NULL;
            PyErr_Clear();      /* out of range: encode_entry says so */
            Py_RETURN_NONE;
        }
    }
    long qname_end = fields[0], rcode = fields[1], flags = fields[2];
    double stored_at = times[0], expires = times[1];
    Py_ssize_t plen = PyBytes_GET_SIZE(args[0]), klen = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t tlen = PyBytes_GET_SIZE(args[2]), nttl = PyTuple_GET_SIZE(args[9]);
    if (PyTuple_GET_SIZE(args[8]) != nttl || klen > 0xFFFF || tlen > 0xFFFF || nttl > 0xFFFF
            || qname_end < 0 || qname_end > 0xFFFF || rcode < 0 || rcode > 0xFF || flags < 0 || flags > 0xFF)
        Py_RETURN_NONE;
    Py_ssize_t body_len = RECORD_FIXED + klen + tlen + nttl * 6;
    PyObject *out = PyBytes_FromStringAndSize(NULL, plen + 4 + body_len);
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    memcpy(o, PyBytes_AS_STRING(args[0]), plen);
    o += plen;
    put32(o, (uint32_t)body_len);
    put16(o + 4, (unsigned)klen);
    put16(o + 6, (unsigned)tlen);
    put16(o + 8, (unsigned)qname_end);
    o[10] = (uint8_t)rcode;
    o[11] = (uint8_t)flags;
    put16(o + 12, (unsigned)nttl);
    if (PyFloat_Pack8(stored_at, (char *)o + 14, 0) < 0 || PyFloat_Pack8(expires, (char *)o + 22, 0) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    o += 30;
    memcpy(o, PyBytes_AS_STRING(args[1]), klen);
    o += klen;
    memcpy(o, PyBytes_AS_STRING(args[2]), tlen);
    o += tlen;
    for (Py_ssize_t i = 0; i < nttl; i++, o += 6) {
        PyObject *off = PyTuple_GET_ITEM(args[8], i), *ttl = PyTuple_GET_ITEM(args[9], i);
        long offset = PyLong_Check(off) ? PyLong_AsLong(off) : -1;
        long long value = -1;
        if (!PyErr_Occurred() && PyLong_Check(ttl))     /* one conversion at a time */
            value = PyLong_AsLongLong(ttl);
        if (offset < 0 || offset > 0xFFFF || value < 0 || value > 0xFFFFFFFFLL) {
            PyErr_Clear();      /* an overflow: out of range like any other */
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        put16(o, (unsigned)offset);
        put32(o + 2, (uint32_t)value);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"valid_key", (PyCFunction)valid_key, METH_O,
     "valid_key(key) -> bool: a cache key as wire.make_key builds it (worker/peer.py, the reference)"},
    {"told_frames", (PyCFunction)(void (*)(void))told_frames, METH_FASTCALL,
     "told_frames(datagram) -> [(key, record body), ...] | None (None: let worker/peer.py's loop say why)"},
    {"record", (PyCFunction)(void (*)(void))record, METH_FASTCALL,
     "record(prefix, key, template, qname_end, rcode, flags, stored_at, expires, ttl_offsets, ttls)"
     " -> prefix + a cache-stream record | None (None: let handoff.encode_entry raise)"},
    {"untrack", (PyCFunction)untrack, METH_O,
     "untrack(obj) -> None: obj leaves the cyclic collector's lists (it must never be in a cycle)"},
    {"recv_batch", (PyCFunction)(void (*)(void))recv_batch, METH_FASTCALL,
     "recv_batch(fd, mmsghdr_vector_address, count) -> datagrams read, or -errno"},
    {"send_batch", (PyCFunction)(void (*)(void))send_batch, METH_FASTCALL,
     "send_batch(fd, mmsghdr_vector_address, count) -> datagrams sent, or -errno"},
    {"parse_query", (PyCFunction)(void (*)(void))parse_query, METH_FASTCALL,
     "parse_query(Question, data) -> Question | None (None: let wire.parse_query raise)"},
    {"entry_parts", (PyCFunction)(void (*)(void))entry_parts, METH_FASTCALL,
     "entry_parts(data, min_ttl, max_ttl, negative_max_ttl, servfail_ttl, b2_set, b2_clear, b3_set, b3_clear)"
     " -> (template, name_end, ttl_offsets, ttls, lifetime, rcode) | None"},
    {"mix_case", (PyCFunction)(void (*)(void))mix_case, METH_FASTCALL,
     "mix_case(name, noise, at) -> bytes | None: 0x20 case flips from noise[at:]"},
    {"query_wire", (PyCFunction)(void (*)(void))query_wire, METH_FASTCALL,
     "query_wire(query_id, head, name, type_class, opt) -> bytes | None: an upstream query"},
    {"splice", (PyCFunction)(void (*)(void))splice, METH_FASTCALL,
     "splice(data, body, qname_end) -> bytes | None: the client's ID and question in a reply"},
    {"with_opt", (PyCFunction)(void (*)(void))with_opt, METH_FASTCALL,
     "with_opt(plain, opt) -> bytes | None: a reply with our OPT record appended"},
    {"answers", (PyCFunction)(void (*)(void))answers, METH_FASTCALL,
     "answers(data, query_id, qname, type_class, sent_name | None) -> bool (False: let check() say why)"},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module);

static struct PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "worker._fastwire",
    "The miss path's wire work in C (see worker/wire.py, the reference).", 0, methods, slots,
    NULL, NULL, NULL,
};

#ifndef SOURCE_SHA256
#define SOURCE_SHA256 ""
#endif

static int exec_module(PyObject *module) {
    /* worker/accel.py compares it with the source beside it: a stale build is not used. */
    if (PyModule_AddIntConstant(module, "RECORD_FIXED", RECORD_FIXED) < 0)
        return -1;
    return PyModule_AddStringConstant(module, "SOURCE_SHA256", SOURCE_SHA256);
}

PyMODINIT_FUNC PyInit__fastwire(void) { return PyModuleDef_Init(&module_def); }
