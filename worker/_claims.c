/* The pair's misses in flight, in memory both workers map (worker/claims.py
 * says why): an array of 64-bit slots, each taken with one compare-and-swap,
 * so the two workers agree on which of them asks upstream for a key without
 * a message between them.
 *
 * A slot word is the key's tag (the high 32 bits of its hash, never 0) << 32
 * | the claimant (0 or 1) << 31 | the claim's deadline (CLOCK_MONOTONIC in
 * milliseconds, mod 2^31). A word of 0 is a free slot, and so is one whose
 * deadline has passed: a claim nobody settles (a bug, a worker stopped
 * mid-miss) frees itself. A deadline is never set more than MAX_AHEAD_MS
 * ahead, so one that looks farther away than that has wrapped: it passed
 * long ago. A key's slots are the PROBES that follow its hash's low bits.
 *
 * Races, both benign: two workers that miss one key at once both find it
 * unclaimed, and both compare-and-swap its first free slot; one wins, the
 * other sees the winner's claim when it looks again. Only if a slot before
 * that one frees itself (its deadline passes) between the two looks can
 * both claim (in different slots): one upstream query too many.
 *
 * Tested from two processes at once in tests/unit/test_claims.py; the
 * Python side is worker/claims.py. No state outside the caller's buffer.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

#define PROBES 8
#define DEADLINE_MASK 0x7fffffffu
#define MAX_AHEAD_MS (1u << 22)     /* ~70 minutes */
#define CLAIMANT_BIT (1ull << 31)

enum { MINE = 0, PEER = 1, FULL = 2 };

static uint64_t key_hash(const uint8_t *k, Py_ssize_t n) {
    uint64_t h = 0xcbf29ce484222325ull;             /* FNV-1a, then a finalizer for the low bits */
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= k[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static uint32_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)(((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u) & DEADLINE_MASK);
}

static inline int live(uint64_t word, uint32_t now) {
    uint32_t ahead = ((uint32_t)word - now) & DEADLINE_MASK;
    return word != 0 && ahead != 0 && ahead <= MAX_AHEAD_MS;
}

static inline uint64_t claim_word(uint64_t tag, int me, uint32_t now, uint32_t ahead_ms) {
    return tag << 32 | (me ? CLAIMANT_BIT : 0) | ((now + ahead_ms) & DEADLINE_MASK);
}

/* The arguments every call takes: (table, key, me, ahead_ms). */
struct call {
    Py_buffer view;
    uint64_t *slots;
    uint64_t mask, hash, tag;
    int me;
    uint32_t ahead;
};

static int begin(struct call *c, PyObject *const *args, Py_ssize_t nargs, const char *name) {
    if (nargs != 4 || !PyBytes_CheckExact(args[1])) {
        PyErr_Format(PyExc_TypeError, "%s(table, key: bytes, me: 0 | 1, ahead_ms: int)", name);
        return -1;
    }
    long me = PyLong_AsLong(args[2]);
    long ahead = PyLong_AsLong(args[3]);
    if ((me == -1 || ahead == -1) && PyErr_Occurred())
        return -1;
    if ((me != 0 && me != 1) || ahead < 0 || ahead > (long)MAX_AHEAD_MS) {
        PyErr_Format(PyExc_ValueError, "%s: me must be 0 or 1, ahead_ms 0..%u", name, MAX_AHEAD_MS);
        return -1;
    }
    if (PyObject_GetBuffer(args[0], &c->view, PyBUF_WRITABLE) < 0)
        return -1;
    Py_ssize_t n = c->view.len / 8;
    if (n < PROBES || (n & (n - 1)) || ((uintptr_t)c->view.buf & 7)) {
        PyBuffer_Release(&c->view);
        PyErr_Format(PyExc_ValueError, "%s: the table must be 8-byte aligned, 2^k >= %d slots of 8 bytes",
                     name, PROBES);
        return -1;
    }
    c->slots = (uint64_t *)c->view.buf;
    c->mask = (uint64_t)n - 1;
    c->hash = key_hash((const uint8_t *)PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]));
    c->tag = c->hash >> 32 ? c->hash >> 32 : 1;
    c->me = (int)me;
    c->ahead = (uint32_t)ahead;
    return 0;
}

static inline int same_key(uint64_t word, uint64_t tag) { return word >> 32 == tag; }
static inline int claimant(uint64_t word) { return (word & CLAIMANT_BIT) != 0; }

/* claim(table, key, me, ahead_ms) -> 0 (MINE: claimed now, or already ours;
 * ours for ahead_ms), 1 (PEER: the other worker's live claim) or 2 (FULL:
 * no free slot among the key's PROBES). */
static PyObject *claim(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    struct call c;
    if (begin(&c, args, nargs, "claim") < 0)
        return NULL;
    int outcome = FULL;
    for (int attempt = 0; attempt < PROBES && outcome == FULL; attempt++) {
        uint32_t now = now_ms();
        uint64_t *free_slot = NULL, free_word = 0, *ours = NULL, our_word = 0;
        int peer = 0;
        for (int i = 0; i < PROBES; i++) {
            uint64_t *slot = &c.slots[(c.hash + (uint64_t)i) & c.mask];
            uint64_t word = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
            if (!live(word, now)) {
                if (free_slot == NULL) {
                    free_slot = slot;
                    free_word = word;
                }
            } else if (same_key(word, c.tag)) {
                if (claimant(word) != c.me) {
                    peer = 1;
                    break;
                }
                ours = slot;
                our_word = word;
            }
        }
        if (peer) {
            outcome = PEER;
        } else if (ours != NULL) {          /* ours already: it lasts ahead_ms from now (best effort) */
            __atomic_compare_exchange_n(ours, &our_word, claim_word(c.tag, c.me, now, c.ahead), 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
            outcome = MINE;
        } else if (free_slot == NULL) {
            break;
        } else if (__atomic_compare_exchange_n(free_slot, &free_word, claim_word(c.tag, c.me, now, c.ahead), 0,
                                               __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            outcome = MINE;
        }                                   /* else the slot changed under us: look again */
    }
    PyBuffer_Release(&c.view);
    return PyLong_FromLong(outcome);
}

/* settle(table, key, me, ahead_ms) -> bool: our live claim of key now ends
 * ahead_ms from now (0: at once); False when we hold none. */
static PyObject *settle(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    struct call c;
    if (begin(&c, args, nargs, "settle") < 0)
        return NULL;
    uint32_t now = now_ms();
    int settled = 0;
    for (int i = 0; i < PROBES && !settled; i++) {
        uint64_t *slot = &c.slots[(c.hash + (uint64_t)i) & c.mask];
        uint64_t word = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (live(word, now) && same_key(word, c.tag) && claimant(word) == c.me) {
            uint64_t next = c.ahead ? claim_word(c.tag, c.me, now, c.ahead) : 0;
            /* Only we change our live claim, so this fails only if it expired meanwhile. */
            __atomic_compare_exchange_n(slot, &word, next, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
            settled = 1;
        }
    }
    PyBuffer_Release(&c.view);
    return PyBool_FromLong(settled);
}

static PyMethodDef methods[] = {
    {"claim", (PyCFunction)(void (*)(void))claim, METH_FASTCALL,
     "claim(table, key, me, ahead_ms) -> 0 (ours), 1 (the peer's) or 2 (no free slot)"},
    {"settle", (PyCFunction)(void (*)(void))settle, METH_FASTCALL,
     "settle(table, key, me, ahead_ms) -> bool: our claim of key ends ahead_ms from now"},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module);

static struct PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, exec_module},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "worker._claims",
    "The pair's misses in flight in shared memory (see worker/claims.py).", 0, methods, module_slots,
    NULL, NULL, NULL,
};

#ifndef SOURCE_SHA256
#define SOURCE_SHA256 ""
#endif

static int exec_module(PyObject *module) {
    if (PyModule_AddIntConstant(module, "PROBES", PROBES) < 0 ||
        PyModule_AddIntConstant(module, "MAX_AHEAD_MS", MAX_AHEAD_MS) < 0)
        return -1;
    return PyModule_AddStringConstant(module, "SOURCE_SHA256", SOURCE_SHA256);
}

PyMODINIT_FUNC PyInit__claims(void) { return PyModuleDef_Init(&module_def); }
