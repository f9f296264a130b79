/* A qemu-user TCG plugin: how many times each translated block ran, and its instruction bytes.
 *
 * Built by qfa_deploy/deploy/sim/blocks.py with the host C compiler. Debian's qemu-user supports
 * plugins but ships no qemu-plugin.h, so the few declarations of QEMU's stable plugin C API
 * (version 1, QEMU 7.x-8.x) that this file uses are written out here.
 *
 * Phases: the program marks a phase boundary with write(MARK_FD, "", 0) (it fails with EBADF and
 * has no other effect). Output (argument out=PATH), written at exit:
 *     # phase <k>                      one header per phase: 0 before the first mark, then 1, 2, ...
 *     <vaddr hex> <count> <insn bytes as hex, one group per instruction, '.'-separated>
 * where count is the block's executions within that phase (blocks that did not run are left out).
 * Counters are bumped inline (no callback per block). They are not atomic: run one thread.
 *
 * With cache=L1BYTES:L1WAYS:L2BYTES:L2WAYS[:L3BYTES:L3WAYS] every data access also goes through a
 * model of the data caches (64-byte lines, LRU, inclusive, no prefetcher): each phase header then
 * reads "# phase <k> <accesses> <L1 misses> <L2 misses> <L3 misses>" (0 for an absent level), and
 * each block line gains the misses of that block's own accesses before its bytes:
 *     <vaddr hex> <count> <L1 misses>,<L2 misses>,<L3 misses> <insn bytes ...>
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
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
typedef uint32_t qemu_plugin_meminfo_t;
typedef void (*mem_cb_t)(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *userdata);
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                             uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb_t cb, void *userdata);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, syscall_cb_t cb);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, mem_cb_t cb, enum qemu_plugin_cb_flags flags,
                                      enum qemu_plugin_mem_rw rw, void *userdata);
unsigned int qemu_plugin_mem_size_shift(qemu_plugin_meminfo_t info);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define MARK_FD 0x5157

struct block {
    uint64_t count;  /* first: the inline add targets it */
    uint64_t seen;   /* count at the last phase boundary */
    uint64_t vaddr;
    char *hex;
    uint64_t misses[3], misses_seen[3];  /* this block's accesses that missed each level */
};

static struct block **blocks;
static size_t n_blocks, cap_blocks;
static char out_path[4096];
static FILE *out;
static int phase, write_syscall;

/* Set-associative LRU caches of 64-byte lines: per set, the tags in recency order (most recent first). */
struct cache {
    uint64_t sets, ways, *tags, misses;
};

static struct cache levels[3];
static int n_levels;
static uint64_t accesses, phase_accesses, phase_misses[3];

static int cache_init(struct cache *c, uint64_t bytes, uint64_t ways)
{
    if (!bytes || !ways || bytes % (64 * ways))
        return -1;
    c->ways = ways;
    c->sets = bytes / 64 / ways;
    c->tags = calloc(c->sets * ways, sizeof *c->tags);  /* tag 0: empty (line numbers start above 0) */
    return c->tags ? 0 : -1;
}

static int cache_hit(struct cache *c, uint64_t line)  /* looks up and installs */
{
    uint64_t *set = c->tags + (line % c->sets) * c->ways, tag = line + 1;
    uint64_t w;
    for (w = 0; w < c->ways - 1 && set[w] != tag; w++)
        ;
    int hit = set[w] == tag;
    memmove(set + 1, set, w * sizeof *set);
    set[0] = tag;
    return hit;
}

static void touch(uint64_t line, struct block *b)
{
    for (int i = 0; i < n_levels; i++) {
        if (cache_hit(&levels[i], line))
            return;
        levels[i].misses++;
        b->misses[i]++;
    }
}

static void on_access(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *userdata)
{
    uint64_t size = 1ull << qemu_plugin_mem_size_shift(info);
    accesses++;
    touch(vaddr >> 6, userdata);
    if ((vaddr >> 6) != ((vaddr + size - 1) >> 6))
        touch((vaddr + size - 1) >> 6, userdata);
}

static void end_phase(void)
{
    fprintf(out, "# phase %d %llu", phase++, (unsigned long long)(accesses - phase_accesses));
    phase_accesses = accesses;
    for (int i = 0; i < 3; i++) {
        uint64_t misses = i < n_levels ? levels[i].misses : 0;
        fprintf(out, " %llu", (unsigned long long)(misses - phase_misses[i]));
        phase_misses[i] = misses;
    }
    fprintf(out, "\n");
    for (size_t i = 0; i < n_blocks; i++) {
        struct block *b = blocks[i];
        if (b->count != b->seen) {
            fprintf(out, "%llx %llu ", (unsigned long long)b->vaddr, (unsigned long long)(b->count - b->seen));
            if (n_levels)
                fprintf(out, "%llu,%llu,%llu ", (unsigned long long)(b->misses[0] - b->misses_seen[0]),
                        (unsigned long long)(b->misses[1] - b->misses_seen[1]),
                        (unsigned long long)(b->misses[2] - b->misses_seen[2]));
            fprintf(out, "%s\n", b->hex);
        }
        b->seen = b->count;
        memcpy(b->misses_seen, b->misses, sizeof b->misses);
    }
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == write_syscall && a1 == MARK_FD)
        end_phase();
}

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
    if (n_levels)
        for (size_t i = 0; i < n; i++)
            qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), on_access, QEMU_PLUGIN_CB_NO_REGS,
                                             QEMU_PLUGIN_MEM_RW, b);
}

static void write_counts(qemu_plugin_id_t id, void *userdata)
{
    char tmp[4200];
    end_phase();
    if (fclose(out) == 0) {
        snprintf(tmp, sizeof tmp, "%s.partial", out_path);
        rename(tmp, out_path);  /* a reader never sees half a file */
    }
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0)
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        if (strncmp(argv[i], "cache=", 6) == 0) {
            unsigned long long v[6] = {0};
            int n = sscanf(argv[i] + 6, "%llu:%llu:%llu:%llu:%llu:%llu", v, v + 1, v + 2, v + 3, v + 4, v + 5);
            for (n_levels = 0; n_levels < n / 2; n_levels++)
                if (cache_init(&levels[n_levels], v[2 * n_levels], v[2 * n_levels + 1])) {
                    fprintf(stderr, "bbcount: bad cache level %d in %s\n", n_levels + 1, argv[i]);
                    return -1;
                }
        }
    }
    if (!out_path[0]) {
        fprintf(stderr, "bbcount: the out=PATH argument is required\n");
        return -1;
    }
    if (strcmp(info->target_name, "x86_64") == 0)
        write_syscall = 1;
    else if (strcmp(info->target_name, "aarch64") == 0)
        write_syscall = 64;
    else {
        fprintf(stderr, "bbcount: unsupported target %s\n", info->target_name);
        return -1;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.partial", out_path);
    out = fopen(tmp, "w");
    if (!out) {
        fprintf(stderr, "bbcount: cannot write %s\n", tmp);
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
