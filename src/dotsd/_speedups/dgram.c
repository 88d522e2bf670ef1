/*
 * dotsd._speedups._dgram: batches of UDP datagrams in one system call.
 *
 * recv_batch() wraps recvmmsg(2) and send_batch() wraps sendmmsg(2) (Linux). They replace
 * one socket.recvfrom()/sendto() call per datagram in dotsd.transport.datagram, which the
 * DTLS benchmark showed as a share of every request's cost. Addresses are returned in
 * exactly the form socket.recvfrom() gives ((host, port) for IPv4, (host, port, flowinfo,
 * scope_id) for IPv6), since the transports key their sessions by them.
 *
 * Nothing here blocks: MSG_DONTWAIT on receive, and the sockets are non-blocking.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 64
/* The largest UDP payload is 65,507 bytes (IPv4) or 65,527 (IPv6 without jumbograms):
 * a slot this size never truncates a datagram. Only the pages a datagram touches become
 * resident, so the 4 MiB of slots cost about one page per datagram of a batch. */
#define SLOT_SIZE 65536

static unsigned char *slots; /* MAX_BATCH * SLOT_SIZE, allocated on first use */

/* (host, port) or (host, port, flowinfo, scope_id), as socket.recvfrom() returns it. */
static PyObject *
address_tuple(const struct sockaddr_storage *ss, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];

    if (len == 0)
        Py_RETURN_NONE; /* as socket.recvfrom(): no address given */
    if (ss->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        if (inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(sin->sin_port));
    }
    if (ss->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(sin6->sin6_port),
                             (unsigned int)ntohl(sin6->sin6_flowinfo),
                             (unsigned int)sin6->sin6_scope_id);
    }
    PyErr_SetString(PyExc_ValueError, "recv_batch: not an IPv4 or IPv6 socket");
    return NULL;
}

PyDoc_STRVAR(recv_batch_doc,
"recv_batch(fd, count) -> list[tuple[bytes, address]]\n\n"
"Up to count (at most 64) datagrams waiting on fd, read with one recvmmsg call; an empty\n"
"list when none waits. Other errors (an ICMP error queued on a connected socket) raise\n"
"OSError, as socket.recvfrom would.");

static PyObject *
recv_batch(PyObject *module, PyObject *args)
{
    int fd, count, n;
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    struct sockaddr_storage addrs[MAX_BATCH];
    PyObject *result;

    (void)module;
    if (!PyArg_ParseTuple(args, "ii:recv_batch", &fd, &count))
        return NULL;
    if (count < 1 || count > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "recv_batch: count must be 1..%d", MAX_BATCH);
        return NULL;
    }
    if (slots == NULL) {
        slots = malloc((size_t)MAX_BATCH * SLOT_SIZE);
        if (slots == NULL)
            return PyErr_NoMemory();
    }
    memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)count);
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = slots + (size_t)i * SLOT_SIZE;
        iov[i].iov_len = SLOT_SIZE;
        msgs[i].msg_hdr.msg_name = &addrs[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    do {
        n = recvmmsg(fd, msgs, (unsigned int)count, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    result = PyList_New(n);
    if (result == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *data, *addr, *item;
        data = PyBytes_FromStringAndSize((const char *)iov[i].iov_base,
                                         (Py_ssize_t)msgs[i].msg_len);
        if (data == NULL)
            goto fail;
        addr = address_tuple(&addrs[i], msgs[i].msg_hdr.msg_namelen);
        if (addr == NULL) {
            Py_DECREF(data);
            goto fail;
        }
        item = PyTuple_New(2);
        if (item == NULL) {
            Py_DECREF(data);
            Py_DECREF(addr);
            goto fail;
        }
        PyTuple_SET_ITEM(item, 0, data);
        PyTuple_SET_ITEM(item, 1, addr);
        PyList_SET_ITEM(result, i, item);
    }
    return result;
fail:
    Py_DECREF(result); /* unset items are NULL, which list_dealloc skips */
    return NULL;
}

/* Item i of tuple t as an unsigned long: 1 and *out set, or 0 (not an int, or negative). */
static int
unsigned_item(PyObject *t, Py_ssize_t i, unsigned long *out)
{
    PyObject *item = PyTuple_GET_ITEM(t, i);
    if (!PyLong_Check(item))
        return 0;
    *out = PyLong_AsUnsignedLong(item);
    if (*out == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* Fill *ss from a (host, port[, flowinfo[, scope_id]]) tuple with a numeric host.
 * 1: done; 0: not in that form (the caller sends it the careful way); -1: error set. */
static int
parse_address(PyObject *addr, int family, struct sockaddr_storage *ss, socklen_t *len)
{
    Py_ssize_t size, host_len;
    const char *host;
    long port;
    unsigned long flowinfo = 0, scope_id = 0;

    if (!PyTuple_Check(addr))
        return 0;
    size = PyTuple_GET_SIZE(addr);
    if (size < 2 || size > (family == AF_INET6 ? 4 : 2))
        return 0;
    if (!PyUnicode_Check(PyTuple_GET_ITEM(addr, 0)) || !PyLong_Check(PyTuple_GET_ITEM(addr, 1)))
        return 0;
    host = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(addr, 0), &host_len);
    if (host == NULL)
        return -1;
    if (host_len >= INET6_ADDRSTRLEN || (Py_ssize_t)strlen(host) != host_len)
        return 0;
    port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (port < 0 || port > 65535)
        return 0;
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return 0; /* a name, not an address: socket.sendto resolves it */
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *len = sizeof *sin;
        return 1;
    }
    if ((size >= 3 && !unsigned_item(addr, 2, &flowinfo))
        || (size == 4 && !unsigned_item(addr, 3, &scope_id)))
        return 0;
    if (flowinfo > 0xfffff || scope_id > 0xffffffffUL)
        return 0; /* socket.sendto raises for these: let it */
    {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return 0; /* a name, or an address with a %scope: socket.sendto handles it */
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        sin6->sin6_flowinfo = htonl((uint32_t)flowinfo);
        sin6->sin6_scope_id = (uint32_t)scope_id;
        *len = sizeof *sin6;
    }
    return 1;
}

PyDoc_STRVAR(send_batch_doc,
"send_batch(fd, family, items, start) -> int\n\n"
"Send items[start:] (a list of (bytes, address or None) tuples; None on a connected\n"
"socket) with sendmmsg calls of up to 64 datagrams. Returns the index of the first item\n"
"not sent: len(items) when all went, otherwise the caller sends that one itself with\n"
"socket.sendto (which queues it on EAGAIN, or reports its error, or resolves a host\n"
"name) and may call again for the rest.");

static PyObject *
send_batch(PyObject *module, PyObject *args)
{
    int fd, family;
    Py_ssize_t start, total;
    PyObject *items;
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    struct sockaddr_storage addrs[MAX_BATCH];

    (void)module;
    if (!PyArg_ParseTuple(args, "iiO!n:send_batch", &fd, &family, &PyList_Type, &items, &start))
        return NULL;
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "send_batch: family must be AF_INET or AF_INET6");
        return NULL;
    }
    total = PyList_GET_SIZE(items);
    if (start < 0)
        start = 0;
    while (start < total) {
        int k = 0, sent;
        /* Prepare up to MAX_BATCH messages; stop at the first item not in a form we send.
         * The list is not changed while we hold the GIL, and the bytes stay referenced by
         * it, so the pointers into them are valid until sendmmsg returns. */
        while (k < MAX_BATCH && start + k < total) {
            PyObject *item = PyList_GET_ITEM(items, start + k);
            PyObject *data, *addr;
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2)
                break;
            data = PyTuple_GET_ITEM(item, 0);
            addr = PyTuple_GET_ITEM(item, 1);
            if (!PyBytes_Check(data))
                break;
            memset(&msgs[k], 0, sizeof msgs[k]);
            if (addr != Py_None) {
                socklen_t len = 0;
                int ok = parse_address(addr, family, &addrs[k], &len);
                if (ok < 0)
                    return NULL;
                if (ok == 0)
                    break;
                msgs[k].msg_hdr.msg_name = &addrs[k];
                msgs[k].msg_hdr.msg_namelen = len;
            }
            iov[k].iov_base = PyBytes_AS_STRING(data);
            iov[k].iov_len = (size_t)PyBytes_GET_SIZE(data);
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            k++;
        }
        if (k == 0)
            break; /* items[start] goes the careful way */
        do {
            sent = sendmmsg(fd, msgs, (unsigned int)k, MSG_DONTWAIT);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0)
            break; /* EAGAIN or an error: socket.sendto on this item says which */
        start += sent;
        if (sent < k)
            break; /* the next one failed; the careful way tells how */
    }
    return PyLong_FromSsize_t(start);
}

static PyMethodDef methods[] = {
    {"recv_batch", recv_batch, METH_VARARGS, recv_batch_doc},
    {"send_batch", send_batch, METH_VARARGS, send_batch_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "dotsd._speedups._dgram",
    "Batches of UDP datagrams in one system call (recvmmsg/sendmmsg).",
    -1,
    methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__dgram(void)
{
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
