/*
 * sink: N MQTT 3.1.1 subscribers in one process, for bench/broker_cpu.py.
 *
 *   sink PORT TOPIC QOS N ID_PREFIX OUT_DIR END_PAYLOAD [ROOM]
 *
 * Opens N TCP connections to 127.0.0.1:PORT (client ids ID_PREFIX0 .. ID_PREFIX<N-1>, clean
 * session, no credentials), subscribes each to TOPIC at QOS (0 or 1) and prints "ready" on stdout
 * once every SUBACK granted it. Then one epoll loop reads each connection in 64 KiB chunks, stamps
 * the wall clock once per read, and keeps "SECONDS.NANOSECONDS PAYLOAD\n" for every PUBLISH in
 * the chunk, for OUT_DIR/sub-I.txt (the format of `mosquitto_sub -F '%U %p'`). At QoS 1 the
 * PUBACKs of one read leave in one write. Why one process: one mosquitto_sub per subscriber costs
 * several system calls and a file write per message, so at 100 subscribers the clients, not the
 * broker, ran out of CPU.
 *
 * Arrivals stay in memory (about 230 bytes each for the benchmark's samples) and the files are
 * written on SIGTERM/SIGINT, after which it exits 0: a file write while samples arrive would
 * hold up the reads behind it, and show as the broker's latency (writing 100 files every 100 ms
 * delayed every 20th sample at 200 samples/s by about a millisecond, for any broker). What the
 * script needs meanwhile comes on stdout, at most every 100 ms and only when it changed:
 * "arrived TOTAL ANY ENDED", the PUBLISHes received so far, the subscribers that received at
 * least one, and those that received END_PAYLOAD. The keep-alive is the longest MQTT allows, so
 * no PINGREQ falls inside a run. A connection the broker closes is reported on stderr and its
 * arrivals kept; the rest go on.
 *
 * ROOM (bytes, 0 by default) is what each subscriber's arrivals are expected to take: it is
 * allocated and touched before the first connection opens, so that no allocation, copy or page
 * fault falls inside the run. Without it every subscriber's buffer doubles at the same sample,
 * and copying 100 of them at once delays that sample (also for any broker).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define MAX_PACKET (1 << 20)
#define REPORT_NS 100000000LL
#define KEEPALIVE 65535 /* seconds: about 18 hours */
#define PING_NS (KEEPALIVE / 2 * 1000000000LL)
#define WINDOW 64 /* connections waiting for their CONNACK or SUBACK at once */

enum state { CONNECTING, SUBSCRIBING, READY, CLOSED };

struct buf {
    char *data;
    size_t len, cap;
};

struct sub {
    int fd, out, index;
    enum state state;
    struct buf rest;  /* an incomplete packet carried over to the next read */
    struct buf wout;  /* bytes for the broker that did not fit in the socket yet */
    struct buf file;  /* arrivals, written to the file when the sink stops */
    int want_out;     /* EPOLLOUT registered */
    int any, ended;   /* received a PUBLISH; received END_PAYLOAD */
};

static volatile sig_atomic_t stopping;
static int epfd;
static const char *topic, *end_payload;
static size_t topic_len, end_len;
static int qos, closed, any, ended;
static long long arrived;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("sink: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

static long long now_ns(clockid_t clock) {
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) die("clock_gettime: %s", strerror(errno));
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void reserve(struct buf *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data) die("out of memory");
    b->data = data;
    b->cap = cap;
}

static void append(struct buf *b, const void *data, size_t len) {
    reserve(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

/* Write a whole buffer to a file descriptor in blocking mode (the output files). */
static void write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("write to an output file: %s", strerror(errno));
        }
        data += n;
        len -= (size_t)n;
    }
}

static void flush_file(struct sub *s) {
    if (s->file.len) {
        write_all(s->out, s->file.data, s->file.len);
        s->file.len = 0;
    }
}

static void set_events(struct sub *s, int want_out) {
    if (s->want_out == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = s};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    s->want_out = want_out;
}

static void close_sub(struct sub *s, const char *why) {
    if (s->state == CLOSED) return;
    if (s->state != READY) die("subscriber %d, before its subscription held: %s", s->index, why);
    fprintf(stderr, "sink: subscriber %d closed: %s\n", s->index, why);
    if (epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL) != 0) die("epoll_ctl: %s", strerror(errno));
    close(s->fd);
    s->state = CLOSED;
    closed++;
}

/* Send what waits in s->wout without blocking; what the socket does not take waits for EPOLLOUT. */
static void send_pending(struct sub *s) {
    size_t done = 0;
    while (done < s->wout.len) {
        ssize_t n = send(s->fd, s->wout.data + done, s->wout.len - done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            close_sub(s, strerror(errno));
            return;
        }
        done += (size_t)n;
    }
    memmove(s->wout.data, s->wout.data + done, s->wout.len - done);
    s->wout.len -= done;
    set_events(s, s->wout.len > 0);
}

static void put_string(struct buf *b, const char *str, size_t len) {
    unsigned char head[2] = {(unsigned char)(len >> 8), (unsigned char)len};
    append(b, head, 2);
    append(b, str, len);
}

static void put_remaining(struct buf *b, size_t len) {
    do {
        unsigned char byte = len % 128;
        len /= 128;
        if (len) byte |= 128;
        append(b, &byte, 1);
    } while (len);
}

static void queue_connect(struct sub *s, const char *prefix) {
    char id[128];
    int n = snprintf(id, sizeof id, "%s%d", prefix, s->index);
    if (n < 0 || (size_t)n >= sizeof id) die("client id too long");
    struct buf body = {0};
    put_string(&body, "MQTT", 4);
    unsigned char fixed[4] = {4, 0x02 /* clean session */, KEEPALIVE >> 8, KEEPALIVE & 0xFF};
    append(&body, fixed, 4);
    put_string(&body, id, (size_t)n);
    unsigned char type = 0x10;
    append(&s->wout, &type, 1);
    put_remaining(&s->wout, body.len);
    append(&s->wout, body.data, body.len);
    free(body.data);
}

static void queue_subscribe(struct sub *s) {
    struct buf body = {0};
    unsigned char id[2] = {0, 1};
    append(&body, id, 2);
    put_string(&body, topic, topic_len);
    unsigned char q = (unsigned char)qos;
    append(&body, &q, 1);
    unsigned char type = 0x82;
    append(&s->wout, &type, 1);
    put_remaining(&s->wout, body.len);
    append(&s->wout, body.data, body.len);
    free(body.data);
}

static int open_sub(struct sub *s, int port, const char *prefix, const char *dir) {
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/sub-%d.txt", dir, s->index);
    if (n < 0 || (size_t)n >= sizeof path) die("output path too long");
    s->out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (s->out < 0) die("open %s: %s", path, strerror(errno));
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    if (setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        die("setsockopt: %s", strerror(errno));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* A blocking connect: on loopback it waits only for the broker's accept queue. */
    while (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno != EINTR) die("connect to 127.0.0.1:%d: %s", port, strerror(errno));
    }
    int flags = fcntl(s->fd, F_GETFL);
    if (flags < 0 || fcntl(s->fd, F_SETFL, flags | O_NONBLOCK) != 0) die("fcntl: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    s->state = CONNECTING;
    queue_connect(s, prefix);
    send_pending(s);
    return 0;
}

/* One complete packet: type byte, body of len bytes. Returns 0, or -1 when the connection closed. */
static int handle(struct sub *s, unsigned char type, const unsigned char *body, size_t len,
                  const char *stamp, size_t stamp_len, struct buf *acks, int *ready) {
    switch (type >> 4) {
    case 3: { /* PUBLISH */
        int q = (type >> 1) & 3;
        if (s->state != READY || q > 1 || len < 2) {
            close_sub(s, q > 1 ? "QoS 2 PUBLISH (not supported)" : "unexpected PUBLISH");
            return -1;
        }
        size_t tlen = ((size_t)body[0] << 8) | body[1];
        size_t at = 2 + tlen + (q ? 2 : 0);
        if (at > len) {
            close_sub(s, "malformed PUBLISH");
            return -1;
        }
        if (q) {
            unsigned char ack[4] = {0x40, 2, body[2 + tlen], body[3 + tlen]};
            append(acks, ack, 4);
        }
        const unsigned char *payload = body + at;
        size_t plen = len - at;
        reserve(&s->file, stamp_len + plen + 1);
        memcpy(s->file.data + s->file.len, stamp, stamp_len);
        memcpy(s->file.data + s->file.len + stamp_len, payload, plen);
        s->file.len += stamp_len + plen;
        s->file.data[s->file.len++] = '\n';
        arrived++;
        if (!s->any) {
            s->any = 1;
            any++;
        }
        if (!s->ended && plen == end_len && memcmp(payload, end_payload, end_len) == 0) {
            s->ended = 1;
            ended++;
        }
        return 0;
    }
    case 2: /* CONNACK */
        if (s->state != CONNECTING || len != 2 || body[1] != 0) {
            close_sub(s, "CONNACK refused or unexpected");
            return -1;
        }
        s->state = SUBSCRIBING;
        queue_subscribe(s);
        return 0;
    case 9: /* SUBACK */
        if (s->state != SUBSCRIBING || len != 3 || body[2] != qos) {
            close_sub(s, "SUBACK refused or unexpected");
            return -1;
        }
        s->state = READY;
        ++*ready;
        return 0;
    case 13: /* PINGRESP */
        return 0;
    default:
        close_sub(s, "unexpected packet");
        return -1;
    }
}

static void on_readable(struct sub *s, struct buf *in, int *ready) {
    /* The carried-over part of a packet first, then one read after it. */
    in->len = 0;
    append(in, s->rest.data, s->rest.len);
    s->rest.len = 0;
    reserve(in, CHUNK);
    ssize_t n;
    do n = recv(s->fd, in->data + in->len, in->cap - in->len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        append(&s->rest, in->data, in->len);
        return;
    }
    if (n <= 0) {
        close_sub(s, n == 0 ? "the broker closed the connection" : strerror(errno));
        return;
    }
    in->len += (size_t)n;
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) die("clock_gettime: %s", strerror(errno));
    char stamp[40];
    int stamp_len = snprintf(stamp, sizeof stamp, "%lld.%09ld ", (long long)ts.tv_sec, ts.tv_nsec);
    struct buf acks = {0};
    const unsigned char *p = (const unsigned char *)in->data;
    size_t at = 0;
    while (at < in->len) {
        size_t len = 0, i = 1;
        int complete = 0;
        for (unsigned shift = 0; at + i < in->len && i <= 4; shift += 7, i++) {
            len |= (size_t)(p[at + i] & 127) << shift;
            if (!(p[at + i] & 128)) {
                complete = 1;
                break;
            }
        }
        if (!complete) {
            if (i > 4) {
                close_sub(s, "malformed remaining length");
                free(acks.data);
                return;
            }
            break; /* the length continues in the next read */
        }
        if (len > MAX_PACKET) {
            close_sub(s, "packet too large");
            free(acks.data);
            return;
        }
        size_t head = i + 1;
        if (at + head + len > in->len) break;
        if (handle(s, p[at], p + at + head, len, stamp, (size_t)stamp_len, &acks, ready) != 0) {
            free(acks.data);
            return;
        }
        at += head + len;
    }
    append(&s->rest, in->data + at, in->len - at);
    if (acks.len) append(&s->wout, acks.data, acks.len);
    free(acks.data);
    if (s->wout.len) send_pending(s);
}

static int parse_int(const char *text, const char *what, int low, int high) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || end == text || value < low || value > high)
        die("%s must be an integer from %d to %d, not '%s'", what, low, high, text);
    return (int)value;
}

int main(int argc, char **argv) {
    if (argc != 8 && argc != 9) die("usage: sink PORT TOPIC QOS N ID_PREFIX OUT_DIR END_PAYLOAD [ROOM]");
    int port = parse_int(argv[1], "PORT", 1, 65535);
    topic = argv[2];
    topic_len = strlen(topic);
    qos = parse_int(argv[3], "QOS (QoS 2 is not supported)", 0, 1);
    int count = parse_int(argv[4], "N", 1, 1000000);
    const char *prefix = argv[5], *dir = argv[6];
    end_payload = argv[7];
    end_len = strlen(end_payload);
    if (topic_len == 0 || topic_len > 65535) die("TOPIC must be 1 to 65535 bytes");

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        die("sigaction: %s", strerror(errno));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1: %s", strerror(errno));
    struct sub *subs = calloc((size_t)count, sizeof *subs);
    if (!subs) die("out of memory");
    int room = argc == 9 ? parse_int(argv[8], "ROOM", 0, 1 << 30) : 0;
    for (int i = 0; i < count; i++) {
        subs[i].index = i;
        if (room) {
            struct buf *file = &subs[i].file;
            if (!(file->data = malloc((size_t)room))) die("out of memory");
            file->cap = (size_t)room;
            memset(file->data, '\n', file->cap); /* every page faulted in now, not in the run */
        }
    }

    struct buf in = {0};
    struct epoll_event events[256];
    int opened = 0, ready = 0, announced = 0;
    long long last_report = now_ns(CLOCK_MONOTONIC), last_ping = last_report, reported = 0;
    while (!stopping) {
        /* Open connections while fewer than WINDOW wait for their CONNACK or SUBACK. */
        while (opened < count && opened - ready < WINDOW) open_sub(&subs[opened++], port, prefix, dir);
        if (!announced && ready == count) {
            if (printf("ready\n") < 0 || fflush(stdout) != 0) die("stdout: %s", strerror(errno));
            announced = 1;
        }
        int n = epoll_wait(epfd, events, 256, 100);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            struct sub *s = events[i].data.ptr;
            if (s->state == CLOSED) continue;
            if (events[i].events & EPOLLOUT) send_pending(s);
            if (s->state != CLOSED && events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(s, &in, &ready);
        }
        long long now = now_ns(CLOCK_MONOTONIC);
        if (announced && arrived != reported && now - last_report >= REPORT_NS) {
            if (printf("arrived %lld %d %d\n", arrived, any, ended) < 0 || fflush(stdout) != 0)
                die("stdout: %s", strerror(errno));
            reported = arrived;
            last_report = now;
        }
        if (now - last_ping >= PING_NS) {
            static const unsigned char ping[2] = {0xC0, 0};
            for (int i = 0; i < opened; i++) {
                if (subs[i].state == CLOSED) continue;
                append(&subs[i].wout, ping, 2);
                send_pending(&subs[i]);
            }
            last_ping = now;
        }
        if (closed == count) die("the broker closed every connection");
    }
    for (int i = 0; i < opened; i++) {
        flush_file(&subs[i]);
        if (close(subs[i].out) != 0) die("close an output file: %s", strerror(errno));
    }
    return 0;
}
