/* Whole pulls, as clients make them: each connection runs the requests of
 * one pull (HEAD and GET of a manifest, then of the config and every
 * layer) in order on one kept-alive connection, again and again, for a
 * number of seconds.  wrk cannot do this: it waits for a body after a HEAD
 * answer's Content-Length.  bench/pulls.py compiles it (cc -O2 -pthread).
 *
 *   pull HOST PORT SECONDS CONNECTIONS SCRIPT
 *
 * SCRIPT: one request a line, `METHOD PATH [HEADER]` (one optional header,
 * e.g. `Accept: ...`).  Prints one line:
 *   pulls=N requests=N bytes=N errors=N seconds=F p50_ms=F p99_ms=F
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_REQUESTS 512
#define MAX_PULLS (1 << 20)

struct request { int head; char text[1024]; size_t len; };

static struct request script[MAX_REQUESTS];
static int nrequests;
static const char *host;
static int port;
static double until;

struct result {
    long pulls, requests, bytes, errors;
    double *times;  /* seconds each pull took */
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { close(fd); return -1; }
    return fd;
}

/* Read one answer; its body is read and dropped.  Returns the bytes of the
 * body, -1 on an error or a status other than 2xx, -2 when the server will
 * close the connection after it. */
static long answer(int fd, int head, char *buf, size_t cap, size_t *have) {
    char *end;
    for (;;) {
        buf[*have] = 0;
        if ((end = strstr(buf, "\r\n\r\n"))) break;
        if (*have == cap - 1) return -1;
        ssize_t n = read(fd, buf + *have, cap - 1 - *have);
        if (n <= 0) return -1;
        *have += n;
    }
    size_t hlen = end + 4 - buf;
    int status = atoi(buf + 9), closing = 0;
    long length = 0;
    for (char *line = strstr(buf, "\r\n") + 2; line < end; line = strstr(line, "\r\n") + 2) {
        if (!strncasecmp(line, "Content-Length:", 15)) length = atol(line + 15);
        else if (!strncasecmp(line, "Connection: close", 17)) closing = 1;
        else if (!strncasecmp(line, "Transfer-Encoding:", 18)) return -1;  /* not sent by either */
    }
    if (head) length = 0;
    size_t extra = *have - hlen;
    long body = length;
    if ((long)extra >= length) {
        memmove(buf, buf + hlen + length, extra - length);
        *have = extra - length;
    } else {
        long left = length - extra;
        *have = 0;
        while (left > 0) {
            ssize_t n = read(fd, buf, left < (long)cap - 1 ? left : (long)cap - 1);
            if (n <= 0) return -1;
            left -= n;
        }
    }
    if (status < 200 || status > 299) return -1;
    return closing ? -2 : body;
}

static void *client(void *arg) {
    struct result *r = arg;
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    int fd = dial();
    while (now() < until) {
        if (fd < 0 && (fd = dial()) < 0) { r->errors++; usleep(10000); continue; }
        double started = now();
        size_t have = 0;
        int ok = 1;
        for (int i = 0; i < nrequests && ok; i++) {
            if (write(fd, script[i].text, script[i].len) != (ssize_t)script[i].len) { ok = 0; break; }
            long got = answer(fd, script[i].head, buf, cap, &have);
            if (got == -1) { ok = 0; break; }
            r->requests++;
            if (got == -2) { close(fd); fd = dial(); have = 0; continue; }
            r->bytes += got;
        }
        if (!ok) { r->errors++; close(fd); fd = -1; continue; }
        if (r->pulls < MAX_PULLS) r->times[r->pulls] = now() - started;
        r->pulls++;
    }
    if (fd >= 0) close(fd);
    free(buf);
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: pull HOST PORT SECONDS CONNECTIONS SCRIPT\n"); return 2; }
    host = argv[1];
    port = atoi(argv[2]);
    double seconds = atof(argv[3]);
    int connections = atoi(argv[4]);
    FILE *f = fopen(argv[5], "r");
    if (!f) { perror(argv[5]); return 2; }
    char line[2048];
    while (fgets(line, sizeof line, f) && nrequests < MAX_REQUESTS) {
        char method[16], path[1024], header[1024] = "";
        line[strcspn(line, "\n")] = 0;
        if (sscanf(line, "%15s %1023s %1023[^\n]", method, path, header) < 2) continue;
        struct request *q = &script[nrequests++];
        q->head = !strcmp(method, "HEAD");
        q->len = snprintf(q->text, sizeof q->text, "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%s%s\r\n",
                          method, path, host, port, header, *header ? "\r\n" : "");
    }
    fclose(f);
    pthread_t threads[connections];
    struct result results[connections];
    double started = now();
    until = started + seconds;
    for (int i = 0; i < connections; i++) {
        memset(&results[i], 0, sizeof results[i]);
        results[i].times = malloc(sizeof(double) * MAX_PULLS);
        pthread_create(&threads[i], NULL, client, &results[i]);
    }
    struct result all = {0};
    long ntimes = 0;
    double *times = malloc(sizeof(double) * MAX_PULLS);
    for (int i = 0; i < connections; i++) {
        pthread_join(threads[i], NULL);
        all.pulls += results[i].pulls;
        all.requests += results[i].requests;
        all.bytes += results[i].bytes;
        all.errors += results[i].errors;
        for (long j = 0; j < results[i].pulls && j < MAX_PULLS && ntimes < MAX_PULLS; j++)
            times[ntimes++] = results[i].times[j];
    }
    double took = now() - started;
    qsort(times, ntimes, sizeof(double), cmp);
    printf("pulls=%ld requests=%ld bytes=%ld errors=%ld seconds=%.3f p50_ms=%.2f p99_ms=%.2f\n",
           all.pulls, all.requests, all.bytes, all.errors, took,
           ntimes ? times[ntimes / 2] * 1e3 : 0, ntimes ? times[(long)(ntimes * 0.99)] * 1e3 : 0);
    return 0;
}
