/*
 * loadgen: the CoAP load generator of dotsd's benchmark (bench/README.md).
 *
 * Plain CoAP over UDP, or CoAP over DTLS 1.2 (OpenSSL) with mutual certificates, against one
 * server on the loopback interface. Three modes, each printing one JSON object per line on
 * stdout (progress and diagnostics go to stderr):
 *
 *   rps         S sessions, each keeping W confirmable GET requests outstanding; counts 2.xx
 *               responses over D seconds after a warm-up; latency percentiles.
 *   handshakes  C concurrent connections, each doing full mutual-certificate DTLS handshakes
 *               back to back (new socket, no resumption, close_notify after each).
 *   idle        S active sessions measure a baseline request rate, then N more sessions are
 *               opened (handshake plus one request each) and left idle; the request rate on
 *               the S active sessions is measured again. Between phases the program waits for
 *               a line "go" on stdin (at most --hold seconds) so the caller can read the
 *               server's memory.
 *   reflect     not a generator: a minimal plain-CoAP responder in C (recvmmsg/sendmmsg), to
 *               measure the generator's own ceiling against a server that costs next to nothing.
 *
 * Every loop is bounded in time (deadlines) or in count. Only loopback addresses are accepted.
 * Build: cc -O2 -o loadgen loadgen.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define MAX_WINDOW 256       /* the slot index lives in the token's low byte */
#define MAX_SESSIONS 4096    /* active (request-carrying) sessions */
#define MAX_IDLE 60000       /* source ports outside the ephemeral range, on one address */
#define MAX_CONCURRENCY 1024
#define READ_BURST 256       /* datagrams read per readiness event, per socket */
#define EPOLL_BATCH 256
#define SOCKBUF (1 << 20)

/* ------------------------------------------------------------------ options */

typedef struct {
    const char *mode;
    const char *host;
    int port;
    int dtls;
    const char *cert, *key, *ca;
    const char *path;
    int sessions;
    int window;
    int concurrency;
    int idle;
    double duration;
    double warmup;
    double timeout;   /* per request (rps) or per handshake */
    double hold;      /* idle mode: longest wait for "go" on stdin */
    const char *ciphers;
    int verbose;
} opts_t;

static opts_t O = {
    .mode = NULL, .host = "127.0.0.1", .port = 5683, .dtls = 0,
    .cert = NULL, .key = NULL, .ca = NULL, .path = "time",
    .sessions = 4, .window = 16, .concurrency = 16, .idle = 2000,
    .duration = 5.0, .warmup = 1.0, .timeout = 2.0, .hold = 120.0, .ciphers = NULL, .verbose = 0,
};

static struct sockaddr_storage PEER;
static socklen_t PEER_LEN;
static SSL_CTX *CTX;

/* ------------------------------------------------------------------ helpers */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void note(const char *fmt, ...) {
    if (!O.verbose) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static int first_errors_shown;

static void show_ssl_error(const char *what) {
    unsigned long e = ERR_peek_last_error();
    if (first_errors_shown < 5) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        fprintf(stderr, "loadgen: %s: %s (errno %d)\n", what, e ? buf : "no OpenSSL error", errno);
        first_errors_shown++;
    }
    ERR_clear_error();
}

/* ------------------------------------------------------------------ latency histogram */
/* Log-linear: exact below 1024 us, then 512 sub-buckets per power of two (0.2 % precision). */

#define HIST_BUCKETS (1024 + 54 * 512)

typedef struct {
    uint64_t n[HIST_BUCKETS];
    uint64_t count;
} hist_t;

static int hist_index(uint64_t v) {
    if (v < 1024) return (int)v;
    int e = 63 - __builtin_clzll(v);
    int i = 1024 + (e - 10) * 512 + (int)((v >> (e - 9)) - 512);
    return i < HIST_BUCKETS ? i : HIST_BUCKETS - 1;
}

static uint64_t hist_value(int i) {
    if (i < 1024) return (uint64_t)i;
    int e = (i - 1024) / 512 + 10;
    uint64_t m = (uint64_t)((i - 1024) % 512 + 512);
    return m << (e - 9);
}

static void hist_add(hist_t *h, uint64_t v) {
    h->n[hist_index(v)]++;
    h->count++;
}

static double hist_pct(const hist_t *h, double p) {
    if (h->count == 0) return 0.0;
    uint64_t want = (uint64_t)(p * (double)h->count);
    if (want >= h->count) want = h->count - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->n[i];
        if (seen > want) return (double)hist_value(i);
    }
    return (double)hist_value(HIST_BUCKETS - 1);
}

/* ------------------------------------------------------------------ CoAP (hand-encoded) */

static uint8_t REQ[512];
static int REQ_LEN;

/* CON GET, TKL 4, one Uri-Path option per '/'-separated segment of O.path. */
static void build_request(void) {
    uint8_t *p = REQ;
    *p++ = 0x40 | 4; /* ver 1, CON, TKL 4 */
    *p++ = 0x01;     /* GET */
    *p++ = 0;
    *p++ = 0;        /* MID, patched per request */
    for (int i = 0; i < 4; i++) *p++ = 0; /* token, patched */
    int last = 0;
    const char *s = O.path;
    int guard = 0;
    while (*s && guard++ < 64) {
        while (*s == '/') s++;
        if (!*s) break;
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        int delta = 11 - last;
        last = 11;
        if (len > 268 || (size_t)(p - REQ) + len + 3 > sizeof REQ) die("path too long");
        if (len < 13) {
            *p++ = (uint8_t)((delta << 4) | len);
        } else {
            *p++ = (uint8_t)((delta << 4) | 13);
            *p++ = (uint8_t)(len - 13);
        }
        memcpy(p, s, len);
        p += len;
        s += len;
    }
    REQ_LEN = (int)(p - REQ);
}

/* ------------------------------------------------------------------ connections */

enum { ST_FREE, ST_HS, ST_UP, ST_REQ, ST_DEAD };

typedef struct {
    uint64_t sent_us;
    uint32_t token;
    uint16_t mid;
    uint8_t busy;
} slot_t;

typedef struct conn {
    int fd;
    SSL *ssl;
    int state;
    double started;   /* handshake start */
    double deadline;  /* handshake (or idle-setup request) deadline */
    uint16_t mid;
    uint32_t gen;
    int outstanding;
    slot_t slots[MAX_WINDOW];
} conn_t;

static int EP = -1;

static int parse_peer(void) {
    struct addrinfo hints, *res = NULL;
    char port[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = SOCK_DGRAM;
    snprintf(port, sizeof port, "%d", O.port);
    if (getaddrinfo(O.host, port, &hints, &res) != 0 || !res) return -1;
    memcpy(&PEER, res->ai_addr, res->ai_addrlen);
    PEER_LEN = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    if (PEER.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&PEER;
        if ((ntohl(a->sin_addr.s_addr) >> 24) != 127) return -1;
    } else if (PEER.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&PEER;
        if (!IN6_IS_ADDR_LOOPBACK(&a->sin6_addr)) return -1;
    } else {
        return -1;
    }
    return 0;
}

/* A connected UDP socket; with src_port > 0 bound to that port on the peer's (loopback)
   address first. -1 with errno set on failure. */
static int open_socket(int bufsize, int src_port) {
    int fd = socket(PEER.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (bufsize > 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
    }
    if (src_port > 0) {
        struct sockaddr_storage local;
        memcpy(&local, &PEER, sizeof local);
        if (local.ss_family == AF_INET) ((struct sockaddr_in *)&local)->sin_port = htons((uint16_t)src_port);
        else ((struct sockaddr_in6 *)&local)->sin6_port = htons((uint16_t)src_port);
        if (bind(fd, (struct sockaddr *)&local, PEER_LEN) < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
    }
    if (connect(fd, (struct sockaddr *)&PEER, PEER_LEN) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Source ports for idle sessions: outside the kernel's ephemeral range, each used once, so
   that no later socket (ours or the kernel's choice) ever reuses the address of a session
   the server still holds. The idle sessions' sockets may then be closed (see mode_idle). */
static int PORT_LO = 32768, PORT_HI = 60999, next_port_up, next_port_down;

static void idle_ports_init(void) {
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        int lo, hi;
        if (fscanf(f, "%d %d", &lo, &hi) == 2 && lo > 1024 && hi >= lo && hi <= 65535) {
            PORT_LO = lo;
            PORT_HI = hi;
        }
        fclose(f);
    }
    next_port_up = PORT_HI + 1;  /* first above the range, */
    next_port_down = PORT_LO - 1; /* then below it, down to 1024 */
}

static int idle_port_next(void) {
    if (next_port_up <= 65535) return next_port_up++;
    if (next_port_down >= 1024) return next_port_down--;
    return -1;
}

/* A socket on a fresh source port (ports in use by anyone are skipped). */
static int open_idle_socket(void) {
    for (int guard = 0; guard < 65536; guard++) {
        int port = idle_port_next();
        if (port < 0) {
            errno = EADDRNOTAVAIL;
            return -1;
        }
        if (port == O.port) continue;
        int fd = open_socket(0, port);
        if (fd >= 0) return fd;
        if (errno != EADDRINUSE && errno != EACCES) return -1;
    }
    errno = EADDRNOTAVAIL;
    return -1;
}

static void ep_add(conn_t *c) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(EP, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
}

static void ep_del(conn_t *c) { epoll_ctl(EP, EPOLL_CTL_DEL, c->fd, NULL); }

/* Drop the connection: close_notify first when `graceful`, then free everything. */
static void conn_close(conn_t *c, int graceful) {
    if (c->fd >= 0) ep_del(c);
    if (c->ssl) {
        if (graceful) SSL_shutdown(c->ssl); /* one call: sends close_notify, no wait */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = ST_FREE;
    ERR_clear_error();
}

/* Start a connection: socket, and for DTLS the first handshake flight. 0 ok, -1 failed. */
static int conn_open(conn_t *c, int bufsize, int idle_port) {
    memset(c, 0, sizeof *c);
    c->fd = idle_port ? open_idle_socket() : open_socket(bufsize, 0);
    c->mid = (uint16_t)(rand() & 0xffff);
    if (c->fd < 0) {
        if (first_errors_shown++ < 5) fprintf(stderr, "loadgen: socket: %s\n", strerror(errno));
        c->state = ST_FREE;
        return -1;
    }
    c->started = now_s();
    c->deadline = c->started + O.timeout;
    if (!O.dtls) {
        c->state = ST_UP;
        ep_add(c);
        return 0;
    }
    c->ssl = SSL_new(CTX);
    BIO *bio = BIO_new_dgram(c->fd, BIO_NOCLOSE);
    if (!c->ssl || !bio) die("out of memory");
    BIO_ctrl(bio, BIO_CTRL_DGRAM_SET_CONNECTED, 0, &PEER);
    SSL_set_bio(c->ssl, bio, bio);
    SSL_set_connect_state(c->ssl);
    c->state = ST_HS;
    ep_add(c);
    return 0;
}

/* Advance a handshake: 1 done, 0 in progress, -1 failed. */
static int hs_step(conn_t *c) {
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->state = ST_UP;
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    show_ssl_error("handshake");
    return -1;
}

/* DTLS retransmission timer and the handshake deadline: 0 fine, -1 failed. */
static int hs_timer(conn_t *c, double t) {
    if (t > c->deadline) {
        if (first_errors_shown++ < 5) fprintf(stderr, "loadgen: handshake timed out\n");
        return -1;
    }
    struct timeval tv;
    if (c->ssl && DTLSv1_get_timeout(c->ssl, &tv) && tv.tv_sec == 0 && tv.tv_usec == 0) {
        if (DTLSv1_handle_timeout(c->ssl) < 0) {
            show_ssl_error("handshake retransmission limit");
            return -1;
        }
    }
    return 0;
}

/* Milliseconds until the handshake needs attention (timer or deadline). */
static int hs_wait_ms(conn_t *c, double t) {
    double w = c->deadline - t;
    struct timeval tv;
    if (c->ssl && DTLSv1_get_timeout(c->ssl, &tv)) {
        double d = (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
        if (d < w) w = d;
    }
    int ms = (int)(w * 1000.0) + 1;
    return ms < 0 ? 0 : ms;
}

static int conn_send(conn_t *c, const uint8_t *buf, int len) {
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_write(c->ssl, buf, len);
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return 0;
            show_ssl_error("write");
            return -1;
        }
        return 0;
    }
    ssize_t r = send(c->fd, buf, (size_t)len, 0);
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS) return -1;
    return 0;
}

/* Read one datagram: >0 length, 0 nothing more for now, -1 connection failed/closed. */
static int conn_recv(conn_t *c, uint8_t *buf, int cap) {
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, buf, cap);
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
        if (e == SSL_ERROR_ZERO_RETURN) {
            if (first_errors_shown++ < 5) fprintf(stderr, "loadgen: peer sent close_notify\n");
            return -1;
        }
        show_ssl_error("read");
        return -1;
    }
    ssize_t r = recv(c->fd, buf, (size_t)cap, MSG_DONTWAIT);
    if (r > 0) return (int)r;
    if (r == 0) return 0; /* empty datagram: ignore */
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    if (errno == ECONNREFUSED) return -2; /* ICMP port unreachable: the server is not there */
    return -1;
}

/* ------------------------------------------------------------------ request engine (rps) */

typedef struct {
    uint64_t sent, ok, bad_code, timeouts, resets, io_errors, lost_sessions, refused;
    hist_t hist;
} stats_t;

typedef struct {
    conn_t *conns;
    int n;
    int window;
    int counting;   /* within the measured interval */
    int sending;    /* refill slots as responses come in */
    stats_t *st;
} engine_t;

static void send_req(engine_t *g, conn_t *c, int s, uint64_t t) {
    slot_t *sl = &c->slots[s];
    uint8_t buf[sizeof REQ];
    c->mid++;
    c->gen = (c->gen + 1) & 0xffffff;
    sl->mid = c->mid;
    sl->token = (c->gen << 8) | (uint32_t)s;
    memcpy(buf, REQ, (size_t)REQ_LEN);
    buf[2] = (uint8_t)(sl->mid >> 8);
    buf[3] = (uint8_t)sl->mid;
    buf[4] = (uint8_t)(sl->token >> 24);
    buf[5] = (uint8_t)(sl->token >> 16);
    buf[6] = (uint8_t)(sl->token >> 8);
    buf[7] = (uint8_t)sl->token;
    if (!sl->busy) c->outstanding++;
    sl->busy = 1;
    sl->sent_us = t;
    if (g->counting) g->st->sent++;
    if (conn_send(c, buf, REQ_LEN) < 0) {
        if (g->counting) g->st->io_errors++;
    }
}

static void slot_done(engine_t *g, conn_t *c, int s, uint64_t t, int ok) {
    slot_t *sl = &c->slots[s];
    sl->busy = 0;
    c->outstanding--;
    if (g->counting) {
        if (ok) {
            g->st->ok++;
            hist_add(&g->st->hist, t - sl->sent_us);
        } else {
            g->st->bad_code++;
        }
    }
    if (g->sending && c->state == ST_UP) send_req(g, c, s, t);
}

static void on_datagram(engine_t *g, conn_t *c, const uint8_t *p, int n, uint64_t t) {
    if (n < 4 || (p[0] >> 6) != 1) return;
    int type = (p[0] >> 4) & 3;
    int tkl = p[0] & 0x0f;
    uint8_t code = p[1];
    uint16_t mid = (uint16_t)((p[2] << 8) | p[3]);
    if (type == 0) { /* CON (a separate response): acknowledge it */
        uint8_t ack[4] = {0x60, 0, p[2], p[3]};
        conn_send(c, ack, 4);
    }
    if (code == 0) {
        if (type == 3) { /* RST: the request it rejects is found by MID */
            for (int s = 0; s < g->window; s++) {
                if (c->slots[s].busy && c->slots[s].mid == mid) {
                    if (g->counting) g->st->resets++;
                    c->slots[s].busy = 0;
                    c->outstanding--;
                    if (g->sending) send_req(g, c, s, t);
                    break;
                }
            }
        }
        return; /* empty ACK: the response comes separately */
    }
    if (tkl != 4 || n < 8) return;
    uint32_t tok = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
    int s = (int)(tok & 0xff);
    if (s >= g->window || !c->slots[s].busy || c->slots[s].token != tok) return; /* stale */
    slot_done(g, c, s, t, (code >> 5) == 2);
}

static void engine_read(engine_t *g, conn_t *c) {
    uint8_t buf[2048];
    for (int i = 0; i < READ_BURST; i++) {
        int n = conn_recv(c, buf, sizeof buf);
        if (n == 0) return;
        if (n < 0) {
            if (n == -2) {
                if (g->counting) g->st->refused++;
                return;
            }
            if (c->state == ST_UP) {
                g->st->lost_sessions++;
                c->state = ST_DEAD;
                ep_del(c);
            }
            return;
        }
        on_datagram(g, c, buf, n, now_us());
    }
}

static void engine_timeouts(engine_t *g, uint64_t t) {
    uint64_t limit = (uint64_t)(O.timeout * 1e6);
    for (int i = 0; i < g->n; i++) {
        conn_t *c = &g->conns[i];
        if (c->state != ST_UP) continue;
        for (int s = 0; s < g->window; s++) {
            slot_t *sl = &c->slots[s];
            if (sl->busy && t - sl->sent_us > limit) {
                if (g->counting) g->st->timeouts++;
                sl->busy = 0;
                c->outstanding--;
                if (g->sending) send_req(g, c, s, t);
            }
        }
    }
}

/* Run one measured interval on the engine's established sessions; prints a JSON line. */
static void run_rps(conn_t *conns, int n, const char *phase, int idle_sessions) {
    stats_t *st = calloc(1, sizeof *st);
    if (!st) die("out of memory");
    engine_t g = {.conns = conns, .n = n, .window = O.window, .counting = 0, .sending = 1,
                  .st = st};
    uint64_t t = now_us();
    int live = 0;
    for (int i = 0; i < n; i++) {
        if (conns[i].state != ST_UP) continue;
        live++;
        for (int s = 0; s < O.window; s++) send_req(&g, &conns[i], s, t);
    }
    double t0 = now_s();
    double t_meas = t0 + O.warmup, t_end = t_meas + O.duration;
    double cpu0 = 0, wall0 = 0;
    double next_check = t0;
    struct epoll_event evs[EPOLL_BATCH];
    for (long iter = 0; iter < 2000000000L; iter++) {
        double now = now_s();
        if (!g.counting && now >= t_meas) {
            g.counting = 1;
            cpu0 = cpu_s();
            wall0 = now;
        }
        if (now >= t_end) break;
        if (now >= next_check) {
            engine_timeouts(&g, now_us());
            next_check = now + 0.01;
        }
        int k = epoll_wait(EP, evs, EPOLL_BATCH, 10);
        for (int i = 0; i < k; i++) engine_read(&g, (conn_t *)evs[i].data.ptr);
    }
    double wall = now_s() - wall0;
    double cpu = cpu_s() - cpu0;
    g.sending = 0;
    /* Let the answers to what is still outstanding arrive (not counted), so the next phase
       starts from quiet sessions. Bounded by the request timeout. */
    g.counting = 0;
    double drain_end = now_s() + (O.timeout < 1.0 ? O.timeout : 1.0);
    for (int guard = 0; guard < 100000 && now_s() < drain_end; guard++) {
        int out = 0;
        for (int i = 0; i < n; i++)
            if (conns[i].state == ST_UP) out += conns[i].outstanding;
        if (out == 0) break;
        int k = epoll_wait(EP, evs, EPOLL_BATCH, 10);
        for (int i = 0; i < k; i++) engine_read(&g, (conn_t *)evs[i].data.ptr);
    }
    for (int i = 0; i < n; i++) { /* forget what never came back */
        for (int s = 0; s < O.window; s++) conns[i].slots[s].busy = 0;
        conns[i].outstanding = 0;
    }
    uint64_t errors = st->bad_code + st->timeouts + st->resets + st->io_errors +
                      st->lost_sessions + st->refused;
    printf("{\"mode\":\"rps\",\"phase\":\"%s\",\"transport\":\"%s\",\"sessions\":%d,"
           "\"window\":%d,\"idle_sessions\":%d,\"duration\":%.3f,\"sent\":%llu,\"ok\":%llu,"
           "\"rps\":%.1f,\"errors\":%llu,\"bad_code\":%llu,\"timeouts\":%llu,\"resets\":%llu,"
           "\"io_errors\":%llu,\"refused\":%llu,\"lost_sessions\":%llu,\"p50_us\":%.0f,"
           "\"p99_us\":%.0f,\"gen_cpu\":%.3f}\n",
           phase, O.dtls ? "dtls" : "udp", live, O.window, idle_sessions, wall,
           (unsigned long long)st->sent, (unsigned long long)st->ok,
           wall > 0 ? (double)st->ok / wall : 0.0, (unsigned long long)errors,
           (unsigned long long)st->bad_code, (unsigned long long)st->timeouts,
           (unsigned long long)st->resets, (unsigned long long)st->io_errors,
           (unsigned long long)st->refused, (unsigned long long)st->lost_sessions,
           hist_pct(&st->hist, 0.50), hist_pct(&st->hist, 0.99), wall > 0 ? cpu / wall : 0.0);
    fflush(stdout);
    free(st);
}

/* Open n sessions for requests (DTLS: all handshakes concurrently). Returns how many are up. */
static int open_sessions(conn_t *conns, int n) {
    int pending = 0, up = 0;
    for (int i = 0; i < n; i++) {
        if (conn_open(&conns[i], SOCKBUF, 0) < 0) continue;
        if (conns[i].state == ST_UP) {
            up++;
            continue;
        }
        int r = hs_step(&conns[i]);
        if (r == 1) up++;
        else if (r == 0) pending++;
        else conn_close(&conns[i], 0);
    }
    struct epoll_event evs[EPOLL_BATCH];
    double end = now_s() + O.timeout + 1.0;
    for (int guard = 0; pending > 0 && guard < 1000000 && now_s() < end; guard++) {
        int k = epoll_wait(EP, evs, EPOLL_BATCH, 5);
        for (int i = 0; i < k; i++) {
            conn_t *c = (conn_t *)evs[i].data.ptr;
            if (c->state != ST_HS) continue;
            int r = hs_step(c);
            if (r == 1) {
                up++;
                pending--;
            } else if (r < 0) {
                conn_close(c, 0);
                pending--;
            }
        }
        double t = now_s();
        for (int i = 0; i < n; i++) {
            if (conns[i].state == ST_HS && hs_timer(&conns[i], t) < 0) {
                conn_close(&conns[i], 0);
                pending--;
            }
        }
    }
    for (int i = 0; i < n; i++)
        if (conns[i].state == ST_HS) conn_close(&conns[i], 0);
    if (O.dtls && up > 0 && conns[0].ssl)
        note("sessions up: %d/%d, cipher %s", up, n, SSL_get_cipher_name(conns[0].ssl));
    return up;
}

static const char *cipher_of(conn_t *conns, int n) {
    for (int i = 0; i < n; i++)
        if (conns[i].state == ST_UP && conns[i].ssl) return SSL_get_cipher_name(conns[i].ssl);
    return "";
}

static int mode_rps(void) {
    conn_t *conns = calloc((size_t)O.sessions, sizeof *conns);
    if (!conns) die("out of memory");
    int up = open_sessions(conns, O.sessions);
    if (up == 0) {
        printf("{\"mode\":\"rps\",\"phase\":\"run\",\"transport\":\"%s\",\"error\":"
               "\"no session could be established\"}\n", O.dtls ? "dtls" : "udp");
        return 1;
    }
    if (O.dtls) note("cipher %s", cipher_of(conns, O.sessions));
    run_rps(conns, O.sessions, "run", 0);
    for (int i = 0; i < O.sessions; i++)
        if (conns[i].state != ST_FREE) conn_close(&conns[i], 1);
    free(conns);
    return 0;
}

/* ------------------------------------------------------------------ handshakes */

static int mode_handshakes(void) {
    if (!O.dtls) die("handshakes needs --dtls");
    int C = O.concurrency;
    conn_t *conns = calloc((size_t)C, sizeof *conns);
    if (!conns) die("out of memory");
    hist_t *h = calloc(1, sizeof *h);
    if (!h) die("out of memory");
    uint64_t ok = 0, failed = 0, started = 0;
    double t0 = now_s(), t_meas = t0 + O.warmup, t_end = t_meas + O.duration;
    double cpu0 = 0, wall0 = 0;
    int counting = 0;
    for (int i = 0; i < C; i++) {
        conns[i].state = ST_FREE;
        conns[i].fd = -1;
    }
    struct epoll_event evs[EPOLL_BATCH];
    char cipher[64] = "";
    for (long iter = 0; iter < 2000000000L; iter++) {
        double now = now_s();
        if (!counting && now >= t_meas) {
            counting = 1;
            cpu0 = cpu_s();
            wall0 = now;
        }
        if (now >= t_end) break;
        /* (Re)start free slots. */
        for (int i = 0; i < C; i++) {
            conn_t *c = &conns[i];
            if (c->state != ST_FREE) continue;
            if (conn_open(c, 0, 0) < 0) {
                if (counting) failed++;
                continue;
            }
            started++;
            if (hs_step(c) < 0) {
                if (counting) failed++;
                conn_close(c, 0);
            }
        }
        int wait = 10;
        for (int i = 0; i < C; i++)
            if (conns[i].state == ST_HS) {
                int w = hs_wait_ms(&conns[i], now);
                if (w < wait) wait = w;
            }
        int k = epoll_wait(EP, evs, EPOLL_BATCH, wait);
        for (int i = 0; i < k; i++) {
            conn_t *c = (conn_t *)evs[i].data.ptr;
            if (c->state != ST_HS) continue;
            int r = hs_step(c);
            if (r == 1) {
                if (counting) {
                    ok++;
                    hist_add(h, (uint64_t)((now_s() - c->started) * 1e6));
                }
                if (!cipher[0]) snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(c->ssl));
                conn_close(c, 1);
            } else if (r < 0) {
                if (counting) failed++;
                conn_close(c, 0);
            }
        }
        double t = now_s();
        for (int i = 0; i < C; i++) {
            if (conns[i].state == ST_HS && hs_timer(&conns[i], t) < 0) {
                if (counting) failed++;
                conn_close(&conns[i], 0);
            }
        }
    }
    double wall = now_s() - wall0, cpu = cpu_s() - cpu0;
    for (int i = 0; i < C; i++)
        if (conns[i].state != ST_FREE) conn_close(&conns[i], 0);
    printf("{\"mode\":\"handshakes\",\"transport\":\"dtls\",\"concurrency\":%d,\"duration\":%.3f,"
           "\"ok\":%llu,\"hps\":%.1f,\"failed\":%llu,\"started\":%llu,\"p50_ms\":%.2f,"
           "\"p99_ms\":%.2f,\"cipher\":\"%s\",\"gen_cpu\":%.3f}\n",
           C, wall, (unsigned long long)ok, wall > 0 ? (double)ok / wall : 0.0,
           (unsigned long long)failed, (unsigned long long)started,
           hist_pct(h, 0.50) / 1000.0, hist_pct(h, 0.99) / 1000.0, cipher,
           wall > 0 ? cpu / wall : 0.0);
    fflush(stdout);
    free(h);
    free(conns);
    return 0;
}

/* ------------------------------------------------------------------ idle */

/* Wait for a line on stdin: 1 for "go", 0 for anything else, EOF or --hold expiry. */
static int wait_go(void) {
    char line[64];
    size_t used = 0;
    double end = now_s() + O.hold;
    for (int guard = 0; guard < 100000; guard++) {
        double left = end - now_s();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = 0, .events = POLLIN};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            return 0;
        }
        ssize_t n = read(0, line + used, sizeof line - 1 - used);
        if (n <= 0) return 0;
        used += (size_t)n;
        line[used] = 0;
        char *nl = strchr(line, '\n');
        if (nl) {
            *nl = 0;
            return strcmp(line, "go") == 0;
        }
        if (used >= sizeof line - 1) return 0;
    }
    return 0;
}

static int mode_idle(void) {
    if (!O.dtls) die("idle needs --dtls");
    int N = O.idle, C = O.concurrency;
    conn_t *active = calloc((size_t)O.sessions, sizeof *active);
    conn_t *work = calloc((size_t)C, sizeof *work);
    int *idle_fds = calloc((size_t)(N > 0 ? N : 1), sizeof *idle_fds);
    if (!active || !work || !idle_fds) die("out of memory");

    int up = open_sessions(active, O.sessions);
    if (up == 0) {
        printf("{\"mode\":\"idle\",\"phase\":\"baseline\",\"error\":"
               "\"no session could be established\"}\n");
        return 1;
    }
    run_rps(active, O.sessions, "baseline", 0);
    if (!wait_go()) return 0;

    /* Open N sessions, C at a time: handshake, one request, then drop our TLS state without
       close_notify (the server's session stays). Each uses a source port of its own that is
       never reused (idle_port_next), and its socket is kept open while descriptors allow
       (the hard RLIMIT_NOFILE may be out of reach) and closed otherwise: the server cannot
       tell, as nothing more is sent on an idle session. */
    struct rlimit rl;
    int fd_budget = 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > (rlim_t)(O.sessions + C + 128))
        fd_budget = (int)(rl.rlim_cur - (rlim_t)(O.sessions + C + 128));
    int kept = 0, closed_early = 0;
    idle_ports_init();
    engine_t g = {.conns = work, .n = C, .window = 1, .counting = 0, .sending = 0, .st = NULL};
    stats_t *st = calloc(1, sizeof *st);
    if (!st) die("out of memory");
    g.st = st;
    int opened = 0, failed = 0, started = 0, in_flight = 0;
    for (int i = 0; i < C; i++) {
        work[i].state = ST_FREE;
        work[i].fd = -1;
    }
    double t0 = now_s(), last_note = t0;
    /* Generous bound: every session may take its whole timeout, C at a time. */
    double end = t0 + 60.0 + ((double)N / (double)C + 1.0) * (O.timeout + 0.5);
    struct epoll_event evs[EPOLL_BATCH];
    for (long iter = 0; iter < 2000000000L; iter++) {
        double now = now_s();
        if (now >= end) break;
        if (started >= N && in_flight == 0) break;
        for (int i = 0; i < C && started < N; i++) {
            conn_t *c = &work[i];
            if (c->state != ST_FREE) continue;
            started++;
            if (conn_open(c, 0, 1) < 0) {
                failed++;
                continue;
            }
            in_flight++;
            if (hs_step(c) < 0) {
                failed++;
                in_flight--;
                conn_close(c, 0);
            }
        }
        int wait = 10;
        for (int i = 0; i < C; i++)
            if (work[i].state == ST_HS) {
                int w = hs_wait_ms(&work[i], now);
                if (w < wait) wait = w;
            }
        int k = epoll_wait(EP, evs, EPOLL_BATCH, wait);
        for (int i = 0; i < k; i++) {
            conn_t *c = (conn_t *)evs[i].data.ptr;
            if (c->state == ST_HS) {
                int r = hs_step(c);
                if (r == 1) {
                    c->state = ST_UP;
                    c->deadline = now_s() + O.timeout;
                    send_req(&g, c, 0, now_us());
                    c->state = ST_REQ;
                } else if (r < 0) {
                    failed++;
                    in_flight--;
                    conn_close(c, 0);
                }
            } else if (c->state == ST_REQ) {
                uint8_t buf[2048];
                for (int j = 0; j < 16; j++) {
                    int n = conn_recv(c, buf, sizeof buf);
                    if (n <= 0) {
                        if (n < 0) {
                            failed++;
                            in_flight--;
                            conn_close(c, 0);
                        }
                        break;
                    }
                    if (n >= 8 && (buf[0] >> 6) == 1 && (buf[0] & 0x0f) == 4 && buf[1] != 0) {
                        if ((buf[1] >> 5) == 2) {
                            ep_del(c);
                            SSL_free(c->ssl);
                            c->ssl = NULL;
                            if (kept < fd_budget) {
                                idle_fds[kept++] = c->fd;
                            } else {
                                close(c->fd);
                                closed_early++;
                            }
                            opened++;
                        } else {
                            failed++;
                            conn_close(c, 0);
                        }
                        c->fd = -1;
                        c->state = ST_FREE;
                        in_flight--;
                        break;
                    }
                }
            }
        }
        double t = now_s();
        for (int i = 0; i < C; i++) {
            conn_t *c = &work[i];
            if ((c->state == ST_HS && hs_timer(c, t) < 0) || (c->state == ST_REQ && t > c->deadline)) {
                if (c->state == ST_REQ && first_errors_shown++ < 5)
                    fprintf(stderr, "loadgen: no response on a new session\n");
                failed++;
                in_flight--;
                conn_close(c, 0);
            }
        }
        if (t - last_note >= 2.0) {
            fprintf(stderr, "loadgen: idle sessions %d/%d (failed %d, %.0f/s)\n", opened, N,
                    failed, (double)opened / (t - t0));
            last_note = t;
        }
    }
    for (int i = 0; i < C; i++)
        if (work[i].state != ST_FREE) {
            failed++;
            conn_close(&work[i], 0);
        }
    double took = now_s() - t0;
    printf("{\"mode\":\"idle\",\"phase\":\"established\",\"idle_sessions\":%d,\"failed\":%d,"
           "\"seconds\":%.2f,\"per_second\":%.1f,\"sockets_kept\":%d,\"sockets_closed\":%d}\n",
           opened, failed, took, took > 0 ? opened / took : 0.0, kept, closed_early);
    fflush(stdout);
    if (wait_go()) run_rps(active, O.sessions, "loaded", opened);
    for (int i = 0; i < kept; i++) close(idle_fds[i]);
    for (int i = 0; i < O.sessions; i++)
        if (active[i].state != ST_FREE) conn_close(&active[i], 1);
    free(st);
    free(idle_fds);
    free(work);
    free(active);
    return 0;
}

/* ------------------------------------------------------------------ reflect */
/* A minimal plain-CoAP responder (one socket, recvmmsg/sendmmsg) for measuring the
   generator's own ceiling: it answers every CON request with a piggybacked 2.05. */

#define REFLECT_BATCH 64

static int mode_reflect(void) {
    int fd = socket(PEER.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    int one = 1, buf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000}; /* bounds every wait */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (bind(fd, (struct sockaddr *)&PEER, PEER_LEN) < 0) die("bind: %s", strerror(errno));
    printf("{\"mode\":\"reflect\",\"phase\":\"ready\"}\n");
    fflush(stdout);
    static uint8_t ib[REFLECT_BATCH][1536], ob[REFLECT_BATCH][64];
    static struct sockaddr_storage addrs[REFLECT_BATCH];
    struct mmsghdr in[REFLECT_BATCH], out[REFLECT_BATCH];
    struct iovec iv[REFLECT_BATCH], ov[REFLECT_BATCH];
    uint64_t answered = 0;
    double end = now_s() + O.duration;
    for (long iter = 0; iter < 2000000000L && now_s() < end; iter++) {
        for (int i = 0; i < REFLECT_BATCH; i++) {
            iv[i].iov_base = ib[i];
            iv[i].iov_len = sizeof ib[i];
            memset(&in[i].msg_hdr, 0, sizeof in[i].msg_hdr);
            in[i].msg_hdr.msg_name = &addrs[i];
            in[i].msg_hdr.msg_namelen = sizeof addrs[i];
            in[i].msg_hdr.msg_iov = &iv[i];
            in[i].msg_hdr.msg_iovlen = 1;
        }
        int k = recvmmsg(fd, in, REFLECT_BATCH, MSG_WAITFORONE, NULL);
        if (k <= 0) continue;
        int m = 0;
        for (int i = 0; i < k; i++) {
            const uint8_t *p = ib[i];
            unsigned len = in[i].msg_len;
            if (len < 4 || (p[0] >> 6) != 1 || ((p[0] >> 4) & 3) != 0 || p[1] == 0 || p[1] > 31)
                continue; /* only CON requests */
            int tkl = p[0] & 0x0f;
            if (tkl > 8 || len < (unsigned)(4 + tkl)) continue;
            uint8_t *o = ob[m];
            o[0] = (uint8_t)(0x60 | tkl); /* ACK */
            o[1] = 0x45;                  /* 2.05 */
            o[2] = p[2];
            o[3] = p[3];
            memcpy(o + 4, p + 4, (size_t)tkl);
            o[4 + tkl] = 0xff;
            memcpy(o + 5 + tkl, "reflected", 9);
            ov[m].iov_base = o;
            ov[m].iov_len = (size_t)(14 + tkl);
            memset(&out[m].msg_hdr, 0, sizeof out[m].msg_hdr);
            out[m].msg_hdr.msg_name = &addrs[i];
            out[m].msg_hdr.msg_namelen = in[i].msg_hdr.msg_namelen;
            out[m].msg_hdr.msg_iov = &ov[m];
            out[m].msg_hdr.msg_iovlen = 1;
            m++;
        }
        if (m > 0 && sendmmsg(fd, out, (unsigned)m, 0) > 0) answered += (uint64_t)m;
    }
    close(fd);
    printf("{\"mode\":\"reflect\",\"phase\":\"done\",\"answered\":%llu}\n",
           (unsigned long long)answered);
    fflush(stdout);
    return 0;
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen rps|handshakes|idle|reflect [options]\n"
            "  (reflect: answer plain CoAP requests on --host/--port for --duration seconds)\n"
            "  --host ADDR        server address, loopback only (127.0.0.1)\n"
            "  --port P           server port (5683)\n"
            "  --dtls             DTLS 1.2 with --cert/--key/--ca (mutual certificates)\n"
            "  --cert F --key F --ca F\n"
            "  --path P           Uri-Path of the GET, '/'-separated (time)\n"
            "  --sessions S       request-carrying sessions (4)\n"
            "  --window W         outstanding requests per session, <= 256 (16)\n"
            "  --concurrency C    concurrent handshakes (16)\n"
            "  --idle N           idle sessions to open in idle mode (2000)\n"
            "  --duration D       measured seconds (5)\n"
            "  --warmup S         seconds before measuring (1)\n"
            "  --timeout S        per request / per handshake (2)\n"
            "  --hold S           idle mode: longest wait for 'go' on stdin (120)\n"
            "  --ciphers LIST     DTLS cipher list offered (OpenSSL's default)\n"
            "  --verbose\n");
    exit(2);
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'A'},     {"port", required_argument, 0, 'p'},
        {"dtls", no_argument, 0, 'd'},           {"cert", required_argument, 0, 'c'},
        {"key", required_argument, 0, 'k'},      {"ca", required_argument, 0, 'C'},
        {"path", required_argument, 0, 'u'},     {"sessions", required_argument, 0, 's'},
        {"window", required_argument, 0, 'w'},   {"concurrency", required_argument, 0, 'n'},
        {"idle", required_argument, 0, 'N'},     {"duration", required_argument, 0, 'D'},
        {"warmup", required_argument, 0, 'W'},   {"timeout", required_argument, 0, 't'},
        {"hold", required_argument, 0, 'H'},     {"verbose", no_argument, 0, 'v'},
        {"ciphers", required_argument, 0, 'x'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
    };
    if (argc < 2) usage();
    O.mode = argv[1];
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'A': O.host = optarg; break;
        case 'p': O.port = atoi(optarg); break;
        case 'd': O.dtls = 1; break;
        case 'c': O.cert = optarg; break;
        case 'k': O.key = optarg; break;
        case 'C': O.ca = optarg; break;
        case 'u': O.path = optarg; break;
        case 's': O.sessions = atoi(optarg); break;
        case 'w': O.window = atoi(optarg); break;
        case 'n': O.concurrency = atoi(optarg); break;
        case 'N': O.idle = atoi(optarg); break;
        case 'D': O.duration = atof(optarg); break;
        case 'W': O.warmup = atof(optarg); break;
        case 't': O.timeout = atof(optarg); break;
        case 'H': O.hold = atof(optarg); break;
        case 'v': O.verbose = 1; break;
        case 'x': O.ciphers = optarg; break;
        default: usage();
        }
    }
    if (O.port <= 0 || O.port > 65535) die("bad --port");
    if (O.sessions < 1 || O.sessions > MAX_SESSIONS) die("--sessions must be 1..%d", MAX_SESSIONS);
    if (O.window < 1 || O.window > MAX_WINDOW) die("--window must be 1..%d", MAX_WINDOW);
    if (O.concurrency < 1 || O.concurrency > MAX_CONCURRENCY)
        die("--concurrency must be 1..%d", MAX_CONCURRENCY);
    if (O.idle < 0 || O.idle > MAX_IDLE) die("--idle must be 0..%d", MAX_IDLE);
    if (!(O.duration > 0 && O.duration <= 3600)) die("--duration must be in (0, 3600]");
    if (!(O.warmup >= 0 && O.warmup <= 600)) die("--warmup must be in [0, 600]");
    if (!(O.timeout > 0 && O.timeout <= 60)) die("--timeout must be in (0, 60]");
    if (!(O.hold >= 0 && O.hold <= 3600)) die("--hold must be in [0, 3600]");
    if (parse_peer() < 0) die("--host must be a loopback address (127.0.0.0/8 or ::1)");
    build_request();
    srand((unsigned)(now_us() ^ (uint64_t)getpid()));

    /* Enough descriptors for every session (root may raise the hard limit too). */
    struct rlimit rl;
    rlim_t need = (rlim_t)O.idle + (rlim_t)O.sessions + (rlim_t)O.concurrency + 256;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
        rl.rlim_cur = need;
        if (rl.rlim_max < need) rl.rlim_max = need;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
            getrlimit(RLIMIT_NOFILE, &rl);
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }

    if (O.dtls) {
        if (!O.cert || !O.key || !O.ca) die("--dtls needs --cert, --key and --ca");
        CTX = SSL_CTX_new(DTLS_client_method());
        if (!CTX) die("SSL_CTX_new failed");
        SSL_CTX_set_min_proto_version(CTX, DTLS1_2_VERSION);
        SSL_CTX_set_max_proto_version(CTX, DTLS1_2_VERSION);
        if (SSL_CTX_use_certificate_chain_file(CTX, O.cert) != 1) die("cannot load %s", O.cert);
        if (SSL_CTX_use_PrivateKey_file(CTX, O.key, SSL_FILETYPE_PEM) != 1)
            die("cannot load %s", O.key);
        if (SSL_CTX_load_verify_locations(CTX, O.ca, NULL) != 1) die("cannot load %s", O.ca);
        SSL_CTX_set_verify(CTX, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_session_cache_mode(CTX, SSL_SESS_CACHE_OFF); /* full handshakes only */
        SSL_CTX_set_options(CTX, SSL_OP_NO_TICKET);
        SSL_CTX_set_read_ahead(CTX, 1);
        if (O.ciphers && SSL_CTX_set_cipher_list(CTX, O.ciphers) != 1)
            die("no usable cipher in --ciphers %s", O.ciphers);
    }
    EP = epoll_create1(EPOLL_CLOEXEC);
    if (EP < 0) die("epoll_create1: %s", strerror(errno));

    int rc;
    if (strcmp(O.mode, "rps") == 0) rc = mode_rps();
    else if (strcmp(O.mode, "handshakes") == 0) rc = mode_handshakes();
    else if (strcmp(O.mode, "idle") == 0) rc = mode_idle();
    else if (strcmp(O.mode, "reflect") == 0) rc = mode_reflect();
    else usage(), rc = 2;
    if (CTX) SSL_CTX_free(CTX);
    close(EP);
    return rc;
}
