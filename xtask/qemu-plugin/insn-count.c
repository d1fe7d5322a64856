/*
 * A TCG plugin for QEMU 7.2 (plugin API version 1) that counts every instruction the vCPU
 * executes, split by where it lies: the upper half of the address space (the isolation kernel,
 * or a Linux guest's kernel) and the lower half (our guests in ring 3, or Linux user space).
 * The kernel is mapped only in the upper half and guests only in the lower half, so the split is
 * the split between ring 0 and ring 3.
 *
 * The two counters live in a file (the plugin's argument `file=PATH`), mapped shared, so that
 * `cargo xtask bench dispatch` reads them at any moment while QEMU runs: the count before and
 * after a window of echoes, and over an idle window, with no help from the machine inside.
 * Layout of the file: u64 magic, u64 upper-half count, u64 lower-half count (little endian).
 *
 * Every instruction gets an inline add (not one per translation block), so an instruction that
 * faults or traps ends the count exactly where execution ended.
 *
 * Only the few declarations this plugin needs are written out here (QEMU's own header is not
 * packaged by Debian); their signatures are those of QEMU 7.2's include/qemu/qemu-plugin.h.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op, void *ptr,
                                                uint64_t imm);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* Must match xtask/src/icount.rs. */
#define MAGIC 0x746e756f636e7369ULL /* "insncount" */
#define UPPER 1
#define LOWER 2

static volatile uint64_t *counters;

static void translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        int upper = (qemu_plugin_insn_vaddr(insn) >> 63) != 0;
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                   (void *)&counters[upper ? UPPER : LOWER], 1);
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                                               char **argv) {
    (void)info;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "file=", 5) == 0) {
            path = argv[i] + 5;
        }
    }
    if (path == NULL) {
        qemu_plugin_outs("insn-count: give the counter file as file=PATH\n");
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, 4096) != 0) {
        qemu_plugin_outs("insn-count: cannot create the counter file\n");
        return -1;
    }
    void *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        qemu_plugin_outs("insn-count: cannot map the counter file\n");
        return -1;
    }
    counters = map;
    counters[0] = MAGIC;
    qemu_plugin_register_vcpu_tb_trans_cb(id, translated);
    return 0;
}
