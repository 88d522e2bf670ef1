/*
 * dotsd._speedups._record: DTLS 1.2 AEAD record protection in one C call per record.
 *
 * The C twin of dotsd.dtls.records.RecordProtection (which stays the reference and the
 * fallback): seal a record, open one, and open "the usual datagram" (one application_data
 * record of the current epoch) with its replay check. Same inputs, same outputs, same
 * replay window; tests/test_record_speedups.py compares the two byte for byte.
 *
 * Suites: AES-GCM (RFC 5288 §3: 4-byte salt + 8-byte explicit nonce, AES-128 or AES-256 by
 * key length) and ChaCha20-Poly1305 (RFC 7905 §2: 12-byte IV xor the padded sequence
 * number, no explicit nonce). Both have a 16-byte tag. CCM stays in Python.
 *
 * Each direction has one EVP_CIPHER_CTX, keyed once; each record only sets a new nonce
 * (EVP_CipherInit_ex with no cipher and no key).
 *
 * Every byte read from a datagram is attacker-controlled: every length is checked before
 * anything is read, and a record that does not authenticate gives None, never an error.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#define HEADER_LEN 13            /* RFC 6347 §4.1: type, version, epoch, seq(6), length */
#define TAG_LEN 16               /* GCM (RFC 5288 §3) and Poly1305 (RFC 7905 §2) */
#define NONCE_LEN 12
#define EXPLICIT_GCM 8           /* RFC 5288 §3: nonce_explicit in each record */
#define SALT_GCM 4               /* RFC 5288 §3: salt, the implicit part of the nonce */
#define MAX_SEQ ((UINT64_C(1) << 48) - 1) /* RFC 6347 §4.1: 48-bit sequence numbers */
#define WINDOW_SIZE 64           /* RFC 6347 §4.1.2.6 */
#define CT_APPLICATION_DATA 23
#define DTLS_1_2_HI 0xFE
#define DTLS_1_2_LO 0xFD

/* ---------------------------------------------------------------- byte helpers */

static uint64_t get_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
}

/* ---------------------------------------------------------------- Window */

/* Anti-replay sliding window of 64 records (RFC 6347 §4.1.2.6, as RFC 4303 §3.4.3). */
typedef struct {
    PyObject_HEAD
    int64_t top;   /* highest sequence number accepted so far, -1 before the first */
    uint64_t bits; /* bit i set: record (top - i) was accepted */
} WindowObject;

/* True if seq must be dropped: a duplicate or too old for the window. */
static int window_seen(const WindowObject *w, int64_t seq)
{
    if (seq > w->top)
        return 0;
    uint64_t offset = (uint64_t)(w->top - seq);
    return offset >= WINDOW_SIZE || ((w->bits >> offset) & 1);
}

/* Record seq as received (only after the record was authenticated). */
static void window_mark(WindowObject *w, int64_t seq)
{
    if (seq > w->top) {
        uint64_t shift = (uint64_t)(seq - w->top);
        w->bits = shift < WINDOW_SIZE ? (w->bits << shift) | 1 : 1;
        w->top = seq;
    } else {
        uint64_t offset = (uint64_t)(w->top - seq);
        if (offset < WINDOW_SIZE)
            w->bits |= UINT64_C(1) << offset;
    }
}

/* A sequence number from Python: 0 .. 2^48-1 (RFC 6347 §4.1), else -1 with an exception. */
static int64_t seq_arg(PyObject *arg)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (v > MAX_SEQ) {
        PyErr_SetString(PyExc_OverflowError, "sequence number above 2**48 - 1");
        return -1;
    }
    return (int64_t)v;
}

static PyObject *Window_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Window", kwlist))
        return NULL;
    WindowObject *self = (WindowObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->top = -1;
    self->bits = 0;
    return (PyObject *)self;
}

static PyObject *Window_seen(WindowObject *self, PyObject *arg)
{
    int64_t seq = seq_arg(arg);
    if (seq < 0)
        return NULL;
    return PyBool_FromLong(window_seen(self, seq));
}

static PyObject *Window_mark(WindowObject *self, PyObject *arg)
{
    int64_t seq = seq_arg(arg);
    if (seq < 0)
        return NULL;
    window_mark(self, seq);
    Py_RETURN_NONE;
}

static PyMethodDef Window_methods[] = {
    {"seen", (PyCFunction)Window_seen, METH_O,
     "True if seq must be dropped: a duplicate or too old for the window."},
    {"mark", (PyCFunction)Window_mark, METH_O,
     "Record seq as received; call only after the record was authenticated."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dotsd._speedups._record.Window",
    .tp_doc = "Anti-replay sliding window of 64 records (RFC 6347 §4.1.2.6).",
    .tp_basicsize = sizeof(WindowObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Window_new,
    .tp_methods = Window_methods,
};

/* ---------------------------------------------------------------- AEAD on EVP */

/* A context for one direction, keyed; each record then only sets its nonce. */
static EVP_CIPHER_CTX *aead_context(const EVP_CIPHER *cipher, const unsigned char *key,
                                    int enc)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return NULL;
    if (EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, enc) != 1
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, NONCE_LEN, NULL) != 1
        || EVP_CipherInit_ex(ctx, NULL, NULL, key, NULL, enc) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Encrypt n bytes of in into out and append the tag (out has n + TAG_LEN bytes).
 * 0 on success, -1 on an OpenSSL error. */
static int aead_seal(EVP_CIPHER_CTX *ctx, const unsigned char nonce[NONCE_LEN],
                     const unsigned char aad[HEADER_LEN], const unsigned char *in, int n,
                     unsigned char *out)
{
    unsigned char final_out[64]; /* GCM and ChaCha20-Poly1305 write nothing at Final */
    int len = 0, total = 0;

    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1) != 1
        || EVP_CipherUpdate(ctx, NULL, &len, aad, HEADER_LEN) != 1)
        return -1;
    if (n > 0) {
        if (EVP_CipherUpdate(ctx, out, &len, in, n) != 1)
            return -1;
        total = len;
    }
    if (EVP_CipherFinal_ex(ctx, final_out, &len) != 1 || len != 0 || total != n)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, out + n) != 1)
        return -1;
    return 0;
}

/* Decrypt n bytes of in into out (n bytes), checking tag. 1 if authentic, 0 if not (or on
 * any OpenSSL error: the record is dropped either way). */
static int aead_open(EVP_CIPHER_CTX *ctx, const unsigned char nonce[NONCE_LEN],
                     const unsigned char aad[HEADER_LEN], const unsigned char *in, int n,
                     const unsigned char *tag, unsigned char *out)
{
    unsigned char tag_copy[TAG_LEN]; /* the ctrl takes a non-const pointer */
    unsigned char final_out[64];
    int len = 0, total = 0;

    memcpy(tag_copy, tag, TAG_LEN);
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 0) != 1
        || EVP_CipherUpdate(ctx, NULL, &len, aad, HEADER_LEN) != 1)
        goto fail;
    if (n > 0) {
        if (EVP_CipherUpdate(ctx, out, &len, in, n) != 1)
            goto fail;
        total = len;
    }
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag_copy) != 1
        || EVP_CipherFinal_ex(ctx, final_out, &len) != 1 || len != 0 || total != n)
        goto fail;
    return 1;
fail:
    ERR_clear_error(); /* a forged tag is not our error: leave OpenSSL's queue clean */
    return 0;
}

/* ---------------------------------------------------------------- Protection */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *write_ctx;
    EVP_CIPHER_CTX *read_ctx;
    unsigned char write_iv[NONCE_LEN]; /* GCM: the 4-byte salt; ChaCha20: the 12-byte IV */
    unsigned char read_iv[NONCE_LEN];
    int explicit_len;                  /* 8 for GCM, 0 for ChaCha20-Poly1305 */
    unsigned int epoch;                /* 0 .. 65535 */
    uint64_t write_seq;                /* next sequence number to send; > MAX_SEQ: spent */
    WindowObject *window;              /* read side, shared with Python's .window */
    PyObject *suite;                   /* the Python AeadSuite, for information */
} ProtectionObject;

static PyObject *str_start, *str_end; /* interned attribute names of a Record */

/* The per-record nonce. GCM (RFC 5288 §3): salt + the 8-byte explicit nonce. ChaCha20
 * (RFC 7905 §2): the IV xor the 64-bit sequence number, left-padded to 12 bytes. */
static void make_nonce(const ProtectionObject *self, const unsigned char *iv,
                       const unsigned char part[8], unsigned char nonce[NONCE_LEN])
{
    if (self->explicit_len) {
        memcpy(nonce, iv, SALT_GCM);
        memcpy(nonce + SALT_GCM, part, 8);
    } else {
        memcpy(nonce, iv, NONCE_LEN);
        for (int i = 0; i < 8; i++)
            nonce[4 + i] ^= part[i];
    }
}

/* RFC 5246 §6.2.3.3 additional data: seq_num(8, epoch + sequence) type(1) version(2)
 * length(2, of the plaintext). head3 is the record's type and version bytes. */
static void make_aad(unsigned char aad[HEADER_LEN], const unsigned char seq_num[8],
                     const unsigned char head3[3], size_t plain_len)
{
    memcpy(aad, seq_num, 8);
    memcpy(aad + 8, head3, 3);
    put_be(aad + 11, plain_len, 2);
}

/* Open the record at data[start:end] (start + HEADER_LEN <= end <= size, checked by the
 * callers). A new bytes object, or Py_None (new reference) if it does not authenticate. */
static PyObject *open_record(ProtectionObject *self, const unsigned char *data,
                             Py_ssize_t start, Py_ssize_t end)
{
    const unsigned char *head = data + start;
    const unsigned char *body = head + HEADER_LEN;
    Py_ssize_t body_len = end - start - HEADER_LEN;
    unsigned char nonce[NONCE_LEN], aad[HEADER_LEN];

    if (self->explicit_len) {
        if (body_len < EXPLICIT_GCM + TAG_LEN)
            Py_RETURN_NONE;
        make_nonce(self, self->read_iv, body, nonce);
        body += EXPLICIT_GCM;
        body_len -= EXPLICIT_GCM;
    } else {
        if (body_len < TAG_LEN)
            Py_RETURN_NONE;
        make_nonce(self, self->read_iv, head + 3, nonce);
    }
    Py_ssize_t plain_len = body_len - TAG_LEN;
    if (plain_len > 0xFFFF) /* cannot come from a record header; the AAD has 16 bits */
        Py_RETURN_NONE;
    make_aad(aad, head + 3, head, (size_t)plain_len);

    PyObject *result = PyBytes_FromStringAndSize(NULL, plain_len);
    if (result == NULL)
        return NULL;
    if (!aead_open(self->read_ctx, nonce, aad, body, (int)plain_len, body + plain_len,
                   (unsigned char *)PyBytes_AS_STRING(result))) {
        Py_DECREF(result);
        Py_RETURN_NONE; /* RFC 6347 §4.1.2.7: dropped */
    }
    return result;
}

static PyObject *Protection_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"algorithm", "write_key", "write_iv", "read_key", "read_iv",
                             "epoch", "next_write_seq", "suite", NULL};
    const char *algorithm;
    Py_buffer wkey = {0}, wiv = {0}, rkey = {0}, riv = {0};
    int epoch = 1;
    PyObject *next_seq_obj = NULL, *suite = Py_None;
    ProtectionObject *self = NULL;
    const EVP_CIPHER *cipher = NULL;
    Py_ssize_t iv_len;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sy*y*y*y*|iOO:Protection", kwlist,
                                     &algorithm, &wkey, &wiv, &rkey, &riv, &epoch,
                                     &next_seq_obj, &suite))
        return NULL;

    if (strcmp(algorithm, "gcm") == 0) {
        iv_len = SALT_GCM;
        if (wkey.len == 16)
            cipher = EVP_aes_128_gcm();
        else if (wkey.len == 24)
            cipher = EVP_aes_192_gcm();
        else if (wkey.len == 32)
            cipher = EVP_aes_256_gcm();
    } else if (strcmp(algorithm, "chacha20") == 0) {
        iv_len = NONCE_LEN;
        if (wkey.len == 32)
            cipher = EVP_chacha20_poly1305();
    } else {
        PyErr_Format(PyExc_ValueError, "unsupported AEAD algorithm '%s'", algorithm);
        goto done;
    }
    if (cipher == NULL || rkey.len != wkey.len) {
        PyErr_SetString(PyExc_ValueError, "wrong key length for this algorithm");
        goto done;
    }
    if (wiv.len != iv_len || riv.len != iv_len) {
        PyErr_SetString(PyExc_ValueError, "wrong IV length for this algorithm");
        goto done;
    }
    if (epoch < 0 || epoch > 0xFFFF) { /* RFC 6347 §4.1: a 16-bit epoch */
        PyErr_SetString(PyExc_ValueError, "epoch must be in 0 .. 65535");
        goto done;
    }

    self = (ProtectionObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto done;
    self->write_seq = 0;
    if (next_seq_obj != NULL) {
        unsigned long long v = PyLong_AsUnsignedLongLong(next_seq_obj);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            goto fail;
        self->write_seq = v;
    }
    self->epoch = (unsigned int)epoch;
    self->explicit_len = iv_len == SALT_GCM ? EXPLICIT_GCM : 0;
    memcpy(self->write_iv, wiv.buf, (size_t)iv_len);
    memcpy(self->read_iv, riv.buf, (size_t)iv_len);
    self->write_ctx = aead_context(cipher, wkey.buf, 1);
    self->read_ctx = aead_context(cipher, rkey.buf, 0);
    if (self->write_ctx == NULL || self->read_ctx == NULL) {
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up the AEAD cipher");
        goto fail;
    }
    self->window = (WindowObject *)PyObject_CallNoArgs((PyObject *)&WindowType);
    if (self->window == NULL)
        goto fail;
    Py_INCREF(suite);
    self->suite = suite;
    goto done;
fail:
    Py_CLEAR(self);
done:
    PyBuffer_Release(&wkey);
    PyBuffer_Release(&wiv);
    PyBuffer_Release(&rkey);
    PyBuffer_Release(&riv);
    return (PyObject *)self;
}

static int Protection_traverse(ProtectionObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->window);
    Py_VISIT(self->suite);
    return 0;
}

static int Protection_clear(ProtectionObject *self)
{
    Py_CLEAR(self->window);
    Py_CLEAR(self->suite);
    return 0;
}

static void Protection_dealloc(ProtectionObject *self)
{
    PyObject_GC_UnTrack(self);
    Protection_clear(self);
    /* EVP_CIPHER_CTX_free cleanses the key schedules; the IVs are ours to wipe. */
    EVP_CIPHER_CTX_free(self->write_ctx);
    EVP_CIPHER_CTX_free(self->read_ctx);
    self->write_ctx = self->read_ctx = NULL;
    OPENSSL_cleanse(self->write_iv, sizeof self->write_iv);
    OPENSSL_cleanse(self->read_iv, sizeof self->read_iv);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* seal(content_type, plaintext) -> bytes: one protected record (RFC 5246 §6.2.3.3). */
static PyObject *Protection_seal(ProtectionObject *self, PyObject *const *args,
                                 Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "seal() takes content_type and plaintext");
        return NULL;
    }
    uint64_t seq = self->write_seq;
    if (seq > MAX_SEQ) {
        /* RFC 6347 §4.1: a sequence number must not wrap; the session is spent. */
        PyErr_SetString(PyExc_OverflowError, "DTLS sequence numbers exhausted for this epoch");
        return NULL;
    }
    long content_type = PyLong_AsLong(args[0]);
    if (content_type == -1 && PyErr_Occurred())
        return NULL;
    if (content_type < 0 || content_type > 0xFF) {
        PyErr_SetString(PyExc_ValueError, "content type must be in 0 .. 255");
        return NULL;
    }
    Py_buffer plain;
    if (PyObject_GetBuffer(args[1], &plain, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t fragment_len = self->explicit_len + plain.len + TAG_LEN;
    if (plain.len > 0xFFFF - self->explicit_len - TAG_LEN) { /* the 16-bit length field */
        PyBuffer_Release(&plain);
        PyErr_SetString(PyExc_ValueError, "plaintext too long for one DTLS record");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, HEADER_LEN + fragment_len);
    if (result == NULL) {
        PyBuffer_Release(&plain);
        return NULL;
    }
    self->write_seq = seq + 1; /* spent even if OpenSSL fails: a nonce is never reused */

    /* RFC 6347 §4.1 header: type, version, epoch + sequence number (64 bits), length. */
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    uint64_t seq_num = ((uint64_t)self->epoch << 48) | seq;
    unsigned char nonce[NONCE_LEN], aad[HEADER_LEN];
    out[0] = (unsigned char)content_type;
    out[1] = DTLS_1_2_HI;
    out[2] = DTLS_1_2_LO;
    put_be(out + 3, seq_num, 8);
    put_be(out + 11, (uint64_t)fragment_len, 2);
    if (self->explicit_len)
        put_be(out + HEADER_LEN, seq_num, 8); /* RFC 5288 §3: the sequence number serves */
    make_nonce(self, self->write_iv, out + 3, nonce);
    make_aad(aad, out + 3, out, (size_t)plain.len);

    int rc = aead_seal(self->write_ctx, nonce, aad, plain.buf, (int)plain.len,
                       out + HEADER_LEN + self->explicit_len);
    PyBuffer_Release(&plain);
    if (rc != 0) {
        Py_DECREF(result);
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal a record");
        return NULL;
    }
    return result;
}

/* An integer attribute of obj into *out: 0, or -1 with an exception set. */
static int ssize_attr(PyObject *obj, PyObject *name, Py_ssize_t *out)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    *out = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* open(data, record) -> bytes | None: the plaintext of a record of this epoch, or None.
 * The replay window is neither consulted nor updated (the caller decides). */
static PyObject *Protection_open(ProtectionObject *self, PyObject *const *args,
                                 Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "open() takes data and record");
        return NULL;
    }
    Py_ssize_t start, end;
    if (ssize_attr(args[1], str_start, &start) < 0 || ssize_attr(args[1], str_end, &end) < 0)
        return NULL;

    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result;
    /* A record from split_records always fits; anything else authenticates nothing. */
    if (start < 0 || end < 0 || end > data.len || end - start < HEADER_LEN) {
        result = Py_None;
        Py_INCREF(result);
    } else {
        result = open_record(self, data.buf, start, end);
    }
    PyBuffer_Release(&data);
    return result;
}

/* open_lone(data) -> bytes | False | None. False: data is not one application_data record
 * of this epoch (RFC 9132 §7.3) filling the datagram. None: replayed, too old
 * (RFC 6347 §4.1.2.6) or not authentic (§4.1.2.7). Else the plaintext; the record entered
 * the window. */
static PyObject *Protection_open_lone(ProtectionObject *self, PyObject *arg)
{
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *d = data.buf;
    Py_ssize_t size = data.len;
    PyObject *result;

    if (size <= HEADER_LEN || d[0] != CT_APPLICATION_DATA || d[1] != DTLS_1_2_HI
        || d[2] != DTLS_1_2_LO || get_be(d + 3, 2) != self->epoch
        || (Py_ssize_t)get_be(d + 11, 2) != size - HEADER_LEN) {
        result = Py_False;
        Py_INCREF(result);
    } else {
        int64_t seq = (int64_t)get_be(d + 5, 6);
        if (window_seen(self->window, seq)) {
            result = Py_None;
            Py_INCREF(result);
        } else {
            result = open_record(self, d, 0, size);
            if (result != NULL && result != Py_None)
                window_mark(self->window, seq);
        }
    }
    PyBuffer_Release(&data);
    return result;
}

static PyObject *Protection_overhead(ProtectionObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(HEADER_LEN + self->explicit_len + TAG_LEN);
}

static PyObject *Protection_get_epoch(ProtectionObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->epoch);
}

static PyObject *Protection_get_write_seq(ProtectionObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->write_seq);
}

static int Protection_set_write_seq(ProtectionObject *self, PyObject *value,
                                    void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete write_seq");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    self->write_seq = v;
    return 0;
}

static PyMethodDef Protection_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))Protection_seal, METH_FASTCALL,
     "seal(content_type, plaintext) -> bytes: one protected record."},
    {"open", (PyCFunction)(void (*)(void))Protection_open, METH_FASTCALL,
     "open(data, record) -> bytes | None: the plaintext, or None if not authentic."},
    {"open_lone", (PyCFunction)Protection_open_lone, METH_O,
     "open_lone(data) -> bytes | False | None: one application_data record, replay-checked."},
    {"overhead", (PyCFunction)Protection_overhead, METH_NOARGS,
     "Bytes a record adds to its plaintext (header, explicit nonce, tag)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Protection_getset[] = {
    {"epoch", (getter)Protection_get_epoch, NULL, "The epoch of these keys.", NULL},
    {"write_seq", (getter)Protection_get_write_seq, (setter)Protection_set_write_seq,
     "The next sequence number to send.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Protection_members[] = {
    {"window", T_OBJECT_EX, offsetof(ProtectionObject, window), READONLY,
     "The read side's replay window (shared with open_lone)."},
    {"suite", T_OBJECT, offsetof(ProtectionObject, suite), READONLY,
     "The AeadSuite given to the constructor, or None."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ProtectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dotsd._speedups._record.Protection",
    .tp_doc = "Seal and open the AEAD records of one epoch of one DTLS 1.2 session.",
    .tp_basicsize = sizeof(ProtectionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Protection_new,
    .tp_dealloc = (destructor)Protection_dealloc,
    .tp_traverse = (traverseproc)Protection_traverse,
    .tp_clear = (inquiry)Protection_clear,
    .tp_methods = Protection_methods,
    .tp_getset = Protection_getset,
    .tp_members = Protection_members,
};

/* ---------------------------------------------------------------- module */

static struct PyModuleDef record_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dotsd._speedups._record",
    .m_doc = "DTLS 1.2 AEAD record protection on OpenSSL's EVP interface.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__record(void)
{
    if (PyType_Ready(&WindowType) < 0 || PyType_Ready(&ProtectionType) < 0)
        return NULL;
    str_start = PyUnicode_InternFromString("start");
    str_end = PyUnicode_InternFromString("end");
    if (str_start == NULL || str_end == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&record_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WindowType);
    if (PyModule_AddObject(m, "Window", (PyObject *)&WindowType) < 0) {
        Py_DECREF(&WindowType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ProtectionType);
    if (PyModule_AddObject(m, "Protection", (PyObject *)&ProtectionType) < 0) {
        Py_DECREF(&ProtectionType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
