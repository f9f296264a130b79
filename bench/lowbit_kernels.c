/* The inner loops a packed low-bit 1x1 conv could use on an AVX-512 x86 CPU, against the 8-bit
 * container kernel the artifact runs (bench/lowbit_kernels.py builds, checks and times them).
 *
 * Each kernel computes one 1x1 conv as a GEMM, exactly: C[p][o] = sum_k A[p][k] * W[o][k] in int32,
 * A the activation codes (unsigned, below 2^a), W the weights (signed, b bits of two's complement).
 *
 *   vnni        8-bit containers: vpdpbusd, a pixel's 4 codes broadcast against 16 outputs x 4 weights
 *               (the layout of targets/cpu, 6 pixels x 32 outputs a register tile).
 *   vnni_w4pack the same with the weights stored 2 a byte (offset binary w + 8), unpacked in registers:
 *               what packed weight storage costs inside the kernel.
 *   vnni_w2pack weights 4 a byte (w + 2).
 *   bitserial   the codes and weights as bit planes (64 channels a qword), per bit pair (i, j):
 *               vpandq + vpopcntq + vpaddq over 512 channels, C = sum_ij s_j 2^(i+j) count_ij.
 *   pack_planes the codes of one layer into bit planes (vptestmb), which bitserial needs first.
 *
 * Built with -O3 -march=native; needs AVX512-VNNI, AVX512-VPOPCNTDQ and AVX512-BW.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define PIX_TILE 6 /* vnni: pixels x 2 zmm of outputs, 12 accumulators */

/* One k4 step of a tile: each of its pixels' 4 codes at step k4, broadcast, against two zmm of
 * 16 outputs x 4 weights. */
static inline __attribute__((always_inline)) void tile_step(__m512i acc[PIX_TILE][2], const uint8_t *A, int p,
                                                            int K, int k4, __m512i b0, __m512i b1) {
    for (int t = 0; t < PIX_TILE; t++) {
        int32_t four;
        memcpy(&four, A + (size_t)(p + t) * K + 4 * k4, 4);
        __m512i a = _mm512_set1_epi32(four);
        acc[t][0] = _mm512_dpbusd_epi32(acc[t][0], a, b0);
        acc[t][1] = _mm512_dpbusd_epi32(acc[t][1], a, b1);
    }
}

/* A tile's sums into C [P][O], less offset * S[pixel] (S NULL: nothing taken off). */
static inline __attribute__((always_inline)) void tile_store(int32_t *C, __m512i acc[PIX_TILE][2], int p, int O,
                                                             int ob, const int32_t *S, int32_t offset) {
    for (int t = 0; t < PIX_TILE; t++) {
        __m512i correction = _mm512_set1_epi32(S ? offset * S[p + t] : 0);
        _mm512_storeu_si512(C + (size_t)(p + t) * O + ob * 16, _mm512_sub_epi32(acc[t][0], correction));
        _mm512_storeu_si512(C + (size_t)(p + t) * O + ob * 16 + 16, _mm512_sub_epi32(acc[t][1], correction));
    }
}

/* A [P][K] u8 (K % 4 == 0), W [O/16][K/4][16][4] s8, C [P][O]; P % 6 == 0, O % 32 == 0. */
void vnni(const uint8_t *A, const int8_t *W, int32_t *C, int P, int K, int O) {
    const int k4s = K / 4;
    for (int ob = 0; ob < O / 16; ob += 2) {
        const int8_t *w0 = W + (size_t)ob * k4s * 64, *w1 = w0 + (size_t)k4s * 64;
        for (int p = 0; p < P; p += PIX_TILE) {
            __m512i acc[PIX_TILE][2];
            for (int t = 0; t < PIX_TILE; t++) acc[t][0] = acc[t][1] = _mm512_setzero_si512();
            for (int k4 = 0; k4 < k4s; k4++) {
                tile_step(acc, A, p, K, k4, _mm512_loadu_si512(w0 + k4 * 64), _mm512_loadu_si512(w1 + k4 * 64));
            }
            tile_store(C, acc, p, O, ob, NULL, 0);
        }
    }
}

/* Row sums of the codes, sum_k A[p][k]: the offset-binary weights' correction (once per layer). */
static void code_sums(const uint8_t *A, int32_t *S, int P, int K) {
    for (int p = 0; p < P; p++) {
        __m512i acc = _mm512_setzero_si512();
        for (int k = 0; k < K; k += 64) {
            __mmask64 valid = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
            acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(valid, A + (size_t)p * K + k),
                                                        _mm512_setzero_si512()));
        }
        S[p] = (int32_t)_mm512_reduce_add_epi64(acc);
    }
}

/* vnni with each zmm of weights unpacked from `per_byte` fields of `bits` bits (offset binary,
 * field f of byte t = weight t of k4 step f of a group): W [O/16][K/(4 per_byte)][64] u8.
 * S: scratch [P] int32. K % (4 per_byte) == 0. */
static inline void vnni_packed(const uint8_t *A, const uint8_t *W, int32_t *C, int32_t *S, int P, int K, int O,
                               const int bits) {
    const int per_byte = 8 / bits, groups = K / (4 * per_byte);
    const __m512i mask = _mm512_set1_epi8((char)((1 << bits) - 1));
    const int32_t offset = 1 << (bits - 1);
    code_sums(A, S, P, K);
    for (int ob = 0; ob < O / 16; ob += 2) {
        const uint8_t *w0 = W + (size_t)ob * groups * 64, *w1 = w0 + (size_t)groups * 64;
        for (int p = 0; p < P; p += PIX_TILE) {
            __m512i acc[PIX_TILE][2];
            for (int t = 0; t < PIX_TILE; t++) acc[t][0] = acc[t][1] = _mm512_setzero_si512();
            for (int g = 0; g < groups; g++) {
                __m512i packed0 = _mm512_loadu_si512(w0 + g * 64), packed1 = _mm512_loadu_si512(w1 + g * 64);
                for (int f = 0; f < per_byte; f++) {
                    __m512i b0 = _mm512_and_si512(_mm512_srli_epi16(packed0, f * bits), mask);
                    __m512i b1 = _mm512_and_si512(_mm512_srli_epi16(packed1, f * bits), mask);
                    tile_step(acc, A, p, K, g * per_byte + f, b0, b1);
                }
            }
            tile_store(C, acc, p, O, ob, S, offset);
        }
    }
}

void vnni_w4pack(const uint8_t *A, const uint8_t *W, int32_t *C, int32_t *S, int P, int K, int O) {
    vnni_packed(A, W, C, S, P, K, O, 4);
}

void vnni_w2pack(const uint8_t *A, const uint8_t *W, int32_t *C, int32_t *S, int P, int K, int O) {
    vnni_packed(A, W, C, S, P, K, O, 2);
}

/* The codes A [P][K] (below 2^a, K % 512 == 0) as bit planes Q [P][a][K/64] u64: bit c of qword
 * (p, i, q) is bit i of code A[p][64 q + c]. */
void pack_planes(const uint8_t *A, uint64_t *Q, int P, int K, int a) {
    const int qs = K / 64;
    for (int p = 0; p < P; p++)
        for (int q = 0; q < qs; q++) {
            __m512i codes = _mm512_loadu_si512(A + (size_t)p * K + 64 * q);
            for (int i = 0; i < a; i++)
                Q[((size_t)p * a + i) * qs + q] = _mm512_test_epi8_mask(codes, _mm512_set1_epi8((char)(1 << i)));
        }
}

/* Q [P][a][K/64] code planes, V [O][b][K/64] weight planes (two's complement), C [P][O];
 * P % PIX == 0, O % OUT == 0, K % 512 == 0. One zmm of qword counts per (pixel, output, i, j), in
 * registers: the macro fixes a, b and the tile (PIX pixels x OUT outputs, at most ~16 counts and the
 * operand planes in the 32 zmm) so that the compiler unrolls every loop over them. */
#define BITSERIAL(A_BITS, B_BITS, BS_PIX, BS_OUT)                                                        \
    void bitserial_w##B_BITS##a##A_BITS(const uint64_t *Q, const uint64_t *V, int32_t *C, int P, int K,    \
                                        int O) {                                                       \
        const int qs = K / 64;                                                                         \
        for (int o = 0; o < O; o += BS_OUT)                                                            \
            for (int p = 0; p < P; p += BS_PIX) {                                                      \
                __m512i acc[BS_PIX][BS_OUT][A_BITS][B_BITS];                                           \
                _Pragma("GCC unroll 64") for (int t = 0; t < BS_PIX * BS_OUT * A_BITS * B_BITS; t++)   \
                    (&acc[0][0][0][0])[t] = _mm512_setzero_si512();                                    \
                for (int q = 0; q < qs; q += 8) {                                                      \
                    __m512i x[BS_PIX][A_BITS], w[BS_OUT][B_BITS];                                      \
                    _Pragma("GCC unroll 8") for (int t = 0; t < BS_PIX; t++)                           \
                        _Pragma("GCC unroll 8") for (int i = 0; i < A_BITS; i++)                       \
                            x[t][i] = _mm512_loadu_si512(Q + ((size_t)(p + t) * A_BITS + i) * qs + q);  \
                    _Pragma("GCC unroll 8") for (int u = 0; u < BS_OUT; u++)                           \
                        _Pragma("GCC unroll 8") for (int j = 0; j < B_BITS; j++)                       \
                            w[u][j] = _mm512_loadu_si512(V + ((size_t)(o + u) * B_BITS + j) * qs + q);  \
                    _Pragma("GCC unroll 8") for (int t = 0; t < BS_PIX; t++)                           \
                        _Pragma("GCC unroll 8") for (int u = 0; u < BS_OUT; u++)                       \
                            _Pragma("GCC unroll 8") for (int i = 0; i < A_BITS; i++)                   \
                                _Pragma("GCC unroll 8") for (int j = 0; j < B_BITS; j++)               \
                                    acc[t][u][i][j] = _mm512_add_epi64(                                \
                                        acc[t][u][i][j], _mm512_popcnt_epi64(_mm512_and_si512(x[t][i], w[u][j]))); \
                }                                                                                      \
                for (int t = 0; t < BS_PIX; t++)                                                       \
                    for (int u = 0; u < BS_OUT; u++) {                                                 \
                        __m512i total = _mm512_setzero_si512();                                        \
                        for (int i = 0; i < A_BITS; i++)                                               \
                            for (int j = 0; j < B_BITS; j++) {                                         \
                                __m512i count = _mm512_sllv_epi64(acc[t][u][i][j], _mm512_set1_epi64(i + j)); \
                                /* the sign bit's plane counts negative */                             \
                                total = j == B_BITS - 1 ? _mm512_sub_epi64(total, count)               \
                                                        : _mm512_add_epi64(total, count);              \
                            }                                                                          \
                        C[(size_t)(p + t) * O + o + u] = (int32_t)_mm512_reduce_add_epi64(total);      \
                    }                                                                                  \
            }                                                                                          \
    }
BITSERIAL(1, 1, 4, 4)
BITSERIAL(2, 2, 2, 2)
BITSERIAL(2, 3, 2, 1) /* W3A2 */
BITSERIAL(3, 3, 1, 1)
BITSERIAL(4, 4, 1, 1)

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Nanoseconds for `reps` calls of kernel `which` (the driver's names, in this order), timed here so
 * that a call from Python costs nothing in the figure. `bits` is a for pack_planes. */
int64_t time_calls(int which, int reps, const void *A, const void *W, int32_t *C, void *S, int P, int K, int O,
                   int bits) {
    int64_t start = now_ns();
    for (int r = 0; r < reps; r++) switch (which) {
            case 0: vnni(A, W, C, P, K, O); break;
            case 1: vnni_w4pack(A, W, C, S, P, K, O); break;
            case 2: vnni_w2pack(A, W, C, S, P, K, O); break;
            case 3: pack_planes(A, S, P, K, bits); break;
            case 4: bitserial_w1a1(A, W, C, P, K, O); break;
            case 5: bitserial_w2a2(A, W, C, P, K, O); break;
            case 6: bitserial_w3a2(A, W, C, P, K, O); break;
            case 7: bitserial_w3a3(A, W, C, P, K, O); break;
            case 8: bitserial_w4a4(A, W, C, P, K, O); break;
            default: return -1;
        }
    return now_ns() - start;
}
