// Many SSE subscribers on one edge, and a publisher at a steady rate, in one process.
//
//   sse_load HOST PORT CONNECTIONS RATE SECONDS TOPIC
//
// Opens CONNECTIONS event streams (GET /v1/topics/stream?match=TOPIC), waits until all are
// open, then POSTs RATE events/s to /v1/topics/TOPIC for SECONDS seconds, each carrying its
// send time ({"t": <µs since the epoch>}). Every subscriber's events are parsed as they arrive
// and the delivery latency (arrival - send time) goes into a histogram. Prints one line of
// key=value pairs: events expected and received, p50/p90/p99/max in ms, connections that
// failed or were cut off.
//
// SSE_LOAD_PAUSE_US (default 1000): after reading everything that was ready, the reader waits
// this long before it asks epoll again, so that it takes the streams' data in batches, as a
// client on another host costs the edge nothing to wake. Sleeping in epoll_wait instead (0)
// makes every write the edge sends over loopback wake this process inside the edge's own
// write call. A delivery's latency is taken when it is read, so the pause can only add to it.
//
// Build: cc -O2 -o sse_load sse_load.c -lpthread
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 4096
#define BUCKET_US 100              // histogram resolution
#define BUCKETS (20 * 1000 * 10)   // up to 20 s

typedef struct {
    int fd;
    int header_done;
    size_t used;
    char line[LINE_MAX_BYTES];
} conn_t;

static struct sockaddr_in addr;
static const char *topic;
static uint64_t histogram[BUCKETS];
static uint64_t received, late_beyond;
static int64_t max_latency;
static atomic_int publishing_done;
static atomic_ulong published;

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int open_stream(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        return -1;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET /v1/topics/stream?match=%s HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n", topic);
    if (write(fd, req, n) != n) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void record(const char *line) {
    const char *t = strstr(line, "\"t\":");
    if (!t) return;
    int64_t sent = strtoll(t + 4, NULL, 10);
    int64_t latency = now_us() - sent;
    if (latency < 0) latency = 0;
    if (latency > max_latency) max_latency = latency;
    size_t b = latency / BUCKET_US;
    if (b >= BUCKETS) {
        late_beyond++;
        b = BUCKETS - 1;
    }
    histogram[b]++;
    received++;
}

// Feeds bytes read from a connection; complete lines starting with "data:" are recorded.
static void feed(conn_t *c, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '\n') {
            c->line[c->used] = 0;
            if (!c->header_done) {
                if (c->used == 0 || (c->used == 1 && c->line[0] == '\r')) c->header_done = 1;
            } else if (strncmp(c->line, "data:", 5) == 0) {
                record(c->line);
            }
            c->used = 0;
        } else if (c->used < LINE_MAX_BYTES - 1) {
            c->line[c->used++] = ch;
        }
    }
}

static void *publisher(void *arg) {
    long *params = arg;
    long rate = params[0], seconds = params[1];
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("publisher connect");
        exit(1);
    }
    int64_t start = now_us();
    long total = rate * seconds;
    char req[512], resp[4096];
    for (long i = 0; i < total; i++) {
        int64_t due = start + i * 1000000 / rate;
        int64_t wait = due - now_us();
        if (wait > 0) usleep(wait);
        char body[64];
        int bn = snprintf(body, sizeof body, "{\"t\":%lld}", (long long)now_us());
        int n = snprintf(req, sizeof req,
                         "POST /v1/topics/%s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                         topic, bn, body);
        if (write(fd, req, n) != n) {
            perror("publisher write");
            exit(1);
        }
        // One response per request (keep-alive); small enough to arrive in one read.
        ssize_t r = read(fd, resp, sizeof resp - 1);
        if (r <= 0 || strncmp(resp, "HTTP/1.1 202", 12) != 0) {
            fprintf(stderr, "publish failed: %.*s\n", (int)(r > 0 ? r : 0), resp);
            exit(1);
        }
        atomic_fetch_add(&published, 1);
    }
    close(fd);
    atomic_store(&publishing_done, 1);
    return NULL;
}

static double percentile(double q) {
    uint64_t target = (uint64_t)(q * received), seen = 0;
    for (size_t b = 0; b < BUCKETS; b++) {
        seen += histogram[b];
        if (seen > target) return (b + 0.5) * BUCKET_US / 1000.0;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS RATE SECONDS TOPIC\n", argv[0]);
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    int connections = atoi(argv[3]);
    long params[2] = {atol(argv[4]), atol(argv[5])};
    topic = argv[6];

    int ep = epoll_create1(0);
    conn_t *conns = calloc(connections, sizeof *conns);
    int failed = 0, open_count = 0;
    // Connect in batches so the listen backlog never overflows.
    for (int i = 0; i < connections; i++) {
        conns[i].fd = open_stream();
        if (conns[i].fd < 0) {
            failed++;
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
        open_count++;
        if (i % 200 == 199) usleep(20000);
    }
    // Wait until every stream has its response head (the subscription is in place).
    struct epoll_event events[1024];
    char buf[65536];
    int headers = 0;
    int64_t deadline = now_us() + 60 * 1000000LL;
    while (headers < open_count && now_us() < deadline) {
        int n = epoll_wait(ep, events, 1024, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r <= 0) continue;
            int before = c->header_done;
            feed(c, buf, r);
            if (!before && c->header_done) headers++;
        }
    }
    fprintf(stderr, "%d streams open (%d failed to connect)\n", headers, failed);
    printf("streams_open=%d ", headers);
    fflush(stdout);
    // Tell the driver script the streams are open (it samples the edge's RSS now).
    fprintf(stderr, "READY\n");
    sleep(2);

    pthread_t pub;
    struct rusage usage0;
    getrusage(RUSAGE_SELF, &usage0);
    int64_t started = now_us();
    pthread_create(&pub, NULL, publisher, params);
    const char *pause_env = getenv("SSE_LOAD_PAUSE_US");
    long pause_us = pause_env ? atol(pause_env) : 1000;
    int closed = 0;
    int64_t drain_until = 0;
    for (;;) {
        if (atomic_load(&publishing_done) && drain_until == 0) drain_until = now_us() + 3000000;
        if (drain_until && now_us() > drain_until) break;
        int n = epoll_wait(ep, events, 1024, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            for (;;) {
                ssize_t r = read(c->fd, buf, sizeof buf);
                if (r > 0) {
                    feed(c, buf, r);
                    continue;
                }
                if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    closed++;
                }
                break;
            }
        }
        if (pause_us > 0 && n < 1024) usleep(pause_us);
    }
    pthread_join(pub, NULL);
    struct rusage usage1;
    getrusage(RUSAGE_SELF, &usage1);
    double cpu_s = (usage1.ru_utime.tv_sec - usage0.ru_utime.tv_sec) + (usage1.ru_stime.tv_sec - usage0.ru_stime.tv_sec)
        + ((usage1.ru_utime.tv_usec - usage0.ru_utime.tv_usec) + (usage1.ru_stime.tv_usec - usage0.ru_stime.tv_usec)) / 1e6;
    double wall_s = (now_us() - started) / 1e6;
    printf("client_cpu_pct=%.0f pause_us=%ld ", cpu_s / wall_s * 100, pause_us);
    unsigned long expected = atomic_load(&published) * (unsigned long)headers;
    printf("published=%lu expected=%lu received=%llu closed=%d p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f max_ms=%.1f over_20s=%llu\n",
           atomic_load(&published), expected, (unsigned long long)received, closed, percentile(0.50), percentile(0.90),
           percentile(0.99), max_latency / 1000.0, (unsigned long long)late_beyond);
    return 0;
}
