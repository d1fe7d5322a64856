/* /init of the Linux baseline VM for `cargo xtask bench baseline`: loads the virtio-net modules,
 * configures eth0 with the address given on the kernel command line (ik.ip=A.B.C.D), and serves
 * UDP echo on port 7, like our udp-echo guests. Built static with gcc by xtask. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const char *modules[] = {
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
    "virtio_pci", "failover", "net_failover", "virtio_net",
};

static void load(const char *name) {
    char path[128];
    snprintf(path, sizeof path, "/lib/%s.ko", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0)
        fprintf(stderr, "echo-init: loading %s failed\n", name);
    if (fd >= 0)
        close(fd);
}

static int set_addr(int sock, unsigned long request, const char *ip) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "eth0", IFNAMSIZ - 1);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &sin->sin_addr);
    return ioctl(sock, request, &ifr);
}

static void ip_from_cmdline(char *ip, size_t len) {
    char line[1024] = {0};
    strncpy(ip, "10.0.2.15", len);
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0)
        return;
    ssize_t n = read(fd, line, sizeof line - 1);
    close(fd);
    char *at = n > 0 ? strstr(line, "ik.ip=") : NULL;
    if (at) {
        at += 6;
        size_t i = 0;
        while (at[i] && at[i] != ' ' && at[i] != '\n' && i + 1 < len) {
            ip[i] = at[i];
            i++;
        }
        ip[i] = 0;
    }
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
    for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++)
        load(modules[i]);
    char ip[32];
    ip_from_cmdline(ip, sizeof ip);
    int ctl = socket(AF_INET, SOCK_DGRAM, 0);
    for (int tries = 0; if_nametoindex("eth0") == 0 && tries < 500; tries++) {
        struct timespec ten_ms = {0, 10 * 1000 * 1000};
        nanosleep(&ten_ms, NULL);
    }
    if (set_addr(ctl, SIOCSIFADDR, ip) || set_addr(ctl, SIOCSIFNETMASK, "255.255.255.0")) {
        perror("echo-init: configuring eth0");
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "eth0", IFNAMSIZ - 1);
    ioctl(ctl, SIOCGIFFLAGS, &ifr);
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(ctl, SIOCSIFFLAGS, &ifr))
        perror("echo-init: bringing eth0 up");
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(7), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(sock, (struct sockaddr *)&addr, sizeof addr))
        perror("echo-init: bind");
    printf("linux-echo listening on %s:7\n", ip);
    fflush(stdout);
    char buf[65536];
    for (;;) {
        struct sockaddr_in from;
        socklen_t from_len = sizeof from;
        ssize_t n = recvfrom(sock, buf, sizeof buf, 0, (struct sockaddr *)&from, &from_len);
        if (n >= 0)
            sendto(sock, buf, (size_t)n, 0, (struct sockaddr *)&from, from_len);
    }
}
