/* A qemu-user TCG plugin: how many times each translated block ran, and its instruction bytes.
 *
 * Built by qfa_deploy/deploy/sim/blocks.py with the host C compiler. Debian's qemu-user supports
 * plugins but ships no qemu-plugin.h, so the few declarations of QEMU's stable plugin C API
 * (version 1, QEMU 7.x-8.x) that this file uses are written out here.
 *
 * Output (argument out=PATH), one line per translation at exit:
 *     <vaddr hex> <count> <insn bytes as hex, one group per instruction, '.'-separated>
 * Counters are bumped inline (no callback per block), so a run costs about 2x plain qemu. They are
 * per-process, not atomic: run the program with one thread.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
} qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

struct block {
    uint64_t count;  /* first: the inline add targets it */
    uint64_t vaddr;
    char *hex;
};

static struct block **blocks;
static size_t n_blocks, cap_blocks;
static char out_path[4096];

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb), len = 0;
    for (size_t i = 0; i < n; i++)
        len += 2 * qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, i)) + 1;
    struct block *b = calloc(1, sizeof *b);
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->hex = malloc(len + 1);
    char *p = b->hex;
    for (size_t i = 0; i < n; i++) {
        const struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const uint8_t *data = qemu_plugin_insn_data(insn);
        size_t size = qemu_plugin_insn_size(insn);
        if (i)
            *p++ = '.';
        for (size_t k = 0; k < size; k++)
            p += sprintf(p, "%02x", data[k]);
    }
    *p = 0;
    if (n_blocks == cap_blocks) {
        cap_blocks = cap_blocks ? 2 * cap_blocks : 4096;
        blocks = realloc(blocks, cap_blocks * sizeof *blocks);
    }
    blocks[n_blocks++] = b;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->count, 1);
}

static void write_counts(qemu_plugin_id_t id, void *userdata)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.partial", out_path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    for (size_t i = 0; i < n_blocks; i++)
        if (blocks[i]->count)
            fprintf(f, "%llx %llu %s\n", (unsigned long long)blocks[i]->vaddr,
                    (unsigned long long)blocks[i]->count, blocks[i]->hex);
    if (fclose(f) == 0)
        rename(tmp, out_path);  /* a reader never sees half a file */
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0)
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
    if (!out_path[0]) {
        fprintf(stderr, "bbcount: the out=PATH argument is required\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
