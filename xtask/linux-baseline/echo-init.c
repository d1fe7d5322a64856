/* /init of the Linux baseline VM for `cargo xtask bench baseline` and `bench http`: loads the
 * virtio-net modules, configures eth0 with the address (ik.ip=A.B.C.D) and MTU (ik.mtu=N) given
 * on the kernel command line, and serves what our guests serve: UDP echo on port 7, TCP echo on
 * port 7 and HTTP/1.1 on port 80 (`GET /`, `GET /bytes/N`: N bytes, byte i = i % 251, streamed;
 * HEAD; keep-alive and pipelining; `Connection: close`; 400, 404, 405, 431). A reference, kept
 * simple: one thread per TCP connection, blocking sockets, so Linux's own TCP does the work.
 * Built static with gcc by xtask. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define ECHO_PORT 7
#define HTTP_PORT 80
/* A request head (request line and headers) longer than this gets 431. */
#define HEAD_LIMIT 8192
/* A connection that sends nothing (or takes nothing) for this long is closed. */
#define IDLE_TIMEOUT_S 30
#define PATTERN_MODULUS 251
/* Bytes of the /bytes/N body handed to send() at once. */
#define BODY_CHUNK 65536
#define ECHO_BUFFER 65536

static const char *modules[] = {
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
    "virtio_pci", "failover", "net_failover", "virtio_net",
};

/* pattern[i] = i % 251, one chunk plus one period long: the body from byte `sent` on starts at
 * pattern + sent % 251. */
static unsigned char pattern[BODY_CHUNK + PATTERN_MODULUS];
static char my_ip[32];

static void load(const char *name) {
    char path[128];
    snprintf(path, sizeof path, "/lib/%s.ko", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0)
        fprintf(stderr, "echo-init: loading %s failed\n", name);
    if (fd >= 0)
        close(fd);
}

static void eth0_request(struct ifreq *ifr) {
    memset(ifr, 0, sizeof *ifr);
    strncpy(ifr->ifr_name, "eth0", IFNAMSIZ - 1);
}

static int set_addr(int sock, unsigned long request, const char *ip) {
    struct ifreq ifr;
    eth0_request(&ifr);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &sin->sin_addr);
    return ioctl(sock, request, &ifr);
}

/* The value of `key` (e.g. "ik.ip=") on the kernel command line, or `fallback`. */
static void cmdline_value(const char *key, char *out, size_t len, const char *fallback) {
    char line[1024] = {0};
    strncpy(out, fallback, len - 1);
    out[len - 1] = 0;
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0)
        return;
    ssize_t n = read(fd, line, sizeof line - 1);
    close(fd);
    char *at = n > 0 ? strstr(line, key) : NULL;
    if (at) {
        at += strlen(key);
        size_t i = 0;
        while (at[i] && at[i] != ' ' && at[i] != '\n' && i + 1 < len) {
            out[i] = at[i];
            i++;
        }
        out[i] = 0;
    }
}

static int send_all(int fd, const void *data, size_t len, int flags) {
    const char *at = data;
    while (len > 0) {
        ssize_t n = send(fd, at, len, flags | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        at += n;
        len -= (size_t)n;
    }
    return 0;
}

static void set_timeouts(int fd) {
    struct timeval idle = {IDLE_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &idle, sizeof idle);
}

/* Sends our FIN, then reads until the client's (or the idle timeout), so that unread request
 * bytes do not turn the close into a reset that could destroy the response in flight. */
static void close_gracefully(int fd) {
    char sink[4096];
    shutdown(fd, SHUT_WR);
    while (recv(fd, sink, sizeof sink, 0) > 0) {
    }
    close(fd);
}

/* ---- TCP echo ---- */

static void *echo_connection(void *arg) {
    int fd = (int)(intptr_t)arg;
    char *buf = malloc(ECHO_BUFFER);
    while (buf) {
        ssize_t n = recv(fd, buf, ECHO_BUFFER, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || send_all(fd, buf, (size_t)n, 0))
            break;
    }
    free(buf);
    shutdown(fd, SHUT_WR);
    close(fd);
    return NULL;
}

/* ---- HTTP ---- */

struct request {
    const char *method; /* points into the connection's buffer, NUL-terminated */
    const char *target;
    int keep_alive;
    uint64_t body_length;
};

/* The status a malformed request gets, or 0 if `head` (NUL-terminated, without the final
 * CRLF CRLF) is a request line and headers we understand. */
static int parse_head(char *head, struct request *req) {
    char *line_end = strstr(head, "\r\n");
    char *headers = line_end ? line_end + 2 : head + strlen(head);
    if (line_end)
        *line_end = 0;
    char *method = head, *target = strchr(method, ' ');
    if (!target)
        return 400;
    *target++ = 0;
    char *version = strchr(target, ' ');
    if (!version)
        return 400;
    *version++ = 0;
    if (!*method || *target != '/' || strchr(version, ' '))
        return 400;
    for (const char *c = method; *c; c++)
        if (!isupper((unsigned char)*c))
            return 400;
    if (strcmp(version, "HTTP/1.1") == 0)
        req->keep_alive = 1;
    else if (strcmp(version, "HTTP/1.0") == 0)
        req->keep_alive = 0;
    else
        return 400;
    req->method = method;
    req->target = target;
    req->body_length = 0;
    char *line = line_end ? headers : NULL;
    while (line && *line) {
        char *next = strstr(line, "\r\n");
        if (next) {
            *next = 0;
            next += 2;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line)
            return 400;
        *colon = 0;
        char *value = colon + 1;
        while (*value == ' ' || *value == '\t')
            value++;
        if (strcasecmp(line, "Connection") == 0) {
            if (strcasestr(value, "close"))
                req->keep_alive = 0;
            else if (strcasestr(value, "keep-alive"))
                req->keep_alive = 1;
        } else if (strcasecmp(line, "Content-Length") == 0) {
            char *end;
            errno = 0;
            unsigned long long length = strtoull(value, &end, 10);
            if (!isdigit((unsigned char)*value) || errno || (*end && *end != ' ' && *end != '\t'))
                return 400;
            req->body_length = length;
        } else if (strcasecmp(line, "Transfer-Encoding") == 0) {
            return 400; /* request bodies of unknown length are not accepted */
        }
        line = next;
    }
    return 0;
}

/* `/bytes/N`: N in `*length`, 1; another target: 0. */
static int bytes_target(const char *target, uint64_t *length) {
    const char *digits = target + strlen("/bytes/");
    if (strncmp(target, "/bytes/", strlen("/bytes/")) != 0 || !*digits || strlen(digits) > 19)
        return 0;
    uint64_t n = 0;
    for (const char *c = digits; *c; c++) {
        if (!isdigit((unsigned char)*c))
            return 0;
        n = n * 10 + (uint64_t)(*c - '0');
    }
    *length = n;
    return 1;
}

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    default: return "Request Header Fields Too Large";
    }
}

/* A response whose body is in memory; -1 if the client is gone. */
static int respond(int fd, int status, int keep_alive, int head_only, const char *type, const char *body) {
    char out[1024];
    size_t body_len = strlen(body);
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\nServer: linux-baseline\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n%s",
                     status, reason(status), type, body_len, status == 405 ? "Allow: GET, HEAD\r\n" : "",
                     keep_alive ? "" : "Connection: close\r\n", head_only ? "" : body);
    return send_all(fd, out, (size_t)n, 0);
}

/* `GET /bytes/N`: the header, then N bytes of the pattern, streamed; -1 if the client is gone. */
static int respond_bytes(int fd, uint64_t length, int keep_alive, int head_only) {
    char out[256];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 200 OK\r\nServer: linux-baseline\r\nContent-Type: application/octet-stream\r\n"
                     "Content-Length: %llu\r\n%s\r\n",
                     (unsigned long long)length, keep_alive ? "" : "Connection: close\r\n");
    if (send_all(fd, out, (size_t)n, head_only || length == 0 ? 0 : MSG_MORE))
        return -1;
    for (uint64_t sent = 0; !head_only && sent < length;) {
        size_t chunk = length - sent < BODY_CHUNK ? (size_t)(length - sent) : BODY_CHUNK;
        if (send_all(fd, pattern + sent % PATTERN_MODULUS, chunk, 0))
            return -1;
        sent += chunk;
    }
    return 0;
}

static void *http_connection(void *arg) {
    int fd = (int)(intptr_t)arg;
    char *buf = malloc(HEAD_LIMIT + 1);
    size_t have = 0;
    while (buf) {
        buf[have] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) {
            if (have == HEAD_LIMIT) {
                respond(fd, 431, 0, 0, "text/plain", "request head too large\n");
                break;
            }
            ssize_t n = recv(fd, buf + have, HEAD_LIMIT - have, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break; /* closed, reset or idle too long */
            if (memchr(buf + have, 0, (size_t)n)) {
                respond(fd, 400, 0, 0, "text/plain", "bad request\n");
                break;
            }
            have += (size_t)n;
            continue;
        }
        size_t head_len = (size_t)(end - buf) + 4;
        *end = 0;
        struct request req;
        int status = parse_head(buf, &req);
        if (status) {
            respond(fd, status, 0, 0, "text/plain", "bad request\n");
            break;
        }
        int head_only = strcmp(req.method, "HEAD") == 0;
        uint64_t length;
        int failed;
        if (!head_only && strcmp(req.method, "GET") != 0) {
            failed = respond(fd, 405, req.keep_alive, 0, "text/plain", "only GET and HEAD\n");
        } else if (strcmp(req.target, "/") == 0) {
            char page[256];
            snprintf(page, sizeof page,
                     "<!doctype html><title>linux-baseline</title><p>Linux baseline VM at %s</p>\n", my_ip);
            failed = respond(fd, 200, req.keep_alive, head_only, "text/html", page);
        } else if (bytes_target(req.target, &length)) {
            failed = respond_bytes(fd, length, req.keep_alive, head_only);
        } else {
            failed = respond(fd, 404, req.keep_alive, head_only, "text/plain", "not found\n");
        }
        if (failed || !req.keep_alive)
            break;
        /* Pipelining: keep what followed this request's head, minus its body (discarded). */
        memmove(buf, buf + head_len, have - head_len);
        have -= head_len;
        uint64_t skip = req.body_length < have ? req.body_length : have;
        memmove(buf, buf + skip, have - (size_t)skip);
        have -= (size_t)skip;
        for (uint64_t left = req.body_length - skip; left > 0;) {
            char sink[4096];
            ssize_t n = recv(fd, sink, left < sizeof sink ? (size_t)left : sizeof sink, 0);
            if (n <= 0)
                goto out;
            left -= (uint64_t)n;
        }
    }
out:
    free(buf);
    close_gracefully(fd);
    return NULL;
}

/* ---- listeners ---- */

struct listener {
    int port;
    void *(*serve)(void *);
};

static void *accept_loop(void *arg) {
    struct listener *l = arg;
    int sock = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(l->port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(sock, (struct sockaddr *)&addr, sizeof addr) || listen(sock, 256)) {
        perror("echo-init: tcp listen");
        return NULL;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (;;) {
        int fd = accept(sock, NULL, NULL);
        if (fd < 0)
            continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_timeouts(fd);
        pthread_t thread;
        if (pthread_create(&thread, &attr, l->serve, (void *)(intptr_t)fd))
            close(fd); /* out of threads: refused by closing */
    }
}

static void start_listener(struct listener *l) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, accept_loop, l))
        perror("echo-init: listener thread");
}

/* The datagram that asks for the counters (`bench baseline`'s open-loop search reads them
 * around a trial), and the answer: "linux-stats:" then " udp_NAME=VALUE" for each of UDP's
 * counters in /proc/net/snmp and " eth0_FIELD=VALUE" for eth0's in /proc/net/dev. */
#define STATS_REQUEST "ik-linux-stats"

static size_t read_file(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t len = 0;
    ssize_t n;
    while (len + 1 < cap && (n = read(fd, buf + len, cap - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    buf[len] = 0;
    return len;
}

static size_t linux_stats(char *out, size_t cap) {
    static char text[16384];
    size_t len = (size_t)snprintf(out, cap, "linux-stats:");
    read_file("/proc/net/snmp", text, sizeof text);
    char *names = strstr(text, "\nUdp: ");
    char *values = names ? strstr(names + 1, "\nUdp: ") : NULL;
    if (names && values) {
        names += 6;
        values += 6;
        char *name_end = strchr(names, '\n'), *value_end = strchr(values, '\n');
        if (name_end)
            *name_end = 0;
        if (value_end)
            *value_end = 0;
        char *name_save, *value_save;
        char *name = strtok_r(names, " ", &name_save), *value = strtok_r(values, " ", &value_save);
        while (name && value && len < cap) {
            len += (size_t)snprintf(out + len, cap - len, " udp_%s=%s", name, value);
            name = strtok_r(NULL, " ", &name_save);
            value = strtok_r(NULL, " ", &value_save);
        }
    }
    read_file("/proc/net/dev", text, sizeof text);
    char *eth0 = strstr(text, "eth0:");
    unsigned long long f[16] = {0};
    if (eth0 && len < cap &&
        sscanf(eth0 + 5, "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3],
               &f[4], &f[5], &f[6], &f[7], &f[8], &f[9], &f[10], &f[11]) == 12)
        len += (size_t)snprintf(out + len, cap - len,
                                " eth0_rx_packets=%llu eth0_rx_errs=%llu eth0_rx_drop=%llu eth0_rx_fifo=%llu"
                                " eth0_tx_packets=%llu eth0_tx_errs=%llu eth0_tx_drop=%llu",
                                f[1], f[2], f[3], f[4], f[9], f[10], f[11]);
    return len < cap ? len : cap - 1;
}

int main(void) {
    mkdir("/dev", 0755);
    mkdir("/proc", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("proc", "/proc", "proc", 0, NULL);
    int console = open("/dev/console", O_RDWR);
    if (console >= 0) {
        dup2(console, 1);
        dup2(console, 2);
    }
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (unsigned char)(i % PATTERN_MODULUS);
    for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++)
        load(modules[i]);
    char mtu[16]; /* asked for; the MTU eth0 got is printed */
    cmdline_value("ik.ip=", my_ip, sizeof my_ip, "10.0.2.15");
    cmdline_value("ik.mtu=", mtu, sizeof mtu, "1500");
    int ctl = socket(AF_INET, SOCK_DGRAM, 0);
    for (int tries = 0; if_nametoindex("eth0") == 0 && tries < 500; tries++) {
        struct timespec ten_ms = {0, 10 * 1000 * 1000};
        nanosleep(&ten_ms, NULL);
    }
    if (set_addr(ctl, SIOCSIFADDR, my_ip) || set_addr(ctl, SIOCSIFNETMASK, "255.255.255.0")) {
        perror("echo-init: configuring eth0");
    }
    struct ifreq ifr;
    eth0_request(&ifr);
    ifr.ifr_mtu = atoi(mtu);
    if (ioctl(ctl, SIOCSIFMTU, &ifr))
        perror("echo-init: setting the MTU");
    eth0_request(&ifr);
    ioctl(ctl, SIOCGIFMTU, &ifr);
    int mtu_set = ifr.ifr_mtu;
    eth0_request(&ifr);
    ioctl(ctl, SIOCGIFFLAGS, &ifr);
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(ctl, SIOCSIFFLAGS, &ifr))
        perror("echo-init: bringing eth0 up");
    static struct listener echo = {ECHO_PORT, echo_connection}, http = {HTTP_PORT, http_connection};
    start_listener(&echo);
    start_listener(&http);
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(ECHO_PORT), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(sock, (struct sockaddr *)&addr, sizeof addr))
        perror("echo-init: bind");
    printf("linux-echo listening on %s:7 (udp, tcp), http on port 80, mtu %d\n", my_ip, mtu_set);
    fflush(stdout);
    static char buf[65536];
    for (;;) {
        struct sockaddr_in from;
        socklen_t from_len = sizeof from;
        ssize_t n = recvfrom(sock, buf, sizeof buf, 0, (struct sockaddr *)&from, &from_len);
        if (n == (ssize_t)strlen(STATS_REQUEST) && memcmp(buf, STATS_REQUEST, (size_t)n) == 0)
            n = (ssize_t)linux_stats(buf, sizeof buf);
        if (n >= 0)
            sendto(sock, buf, (size_t)n, 0, (struct sockaddr *)&from, from_len);
    }
}
