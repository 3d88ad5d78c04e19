/* y = x W^T (+ b) for CPU, float32, with per-row arithmetic that does not depend on the batch.
 *
 * Batch invariance by construction: every output element is one chain of fused multiply-adds
 * over k = 0 .. K-1 in index order, started from zero, with the bias added last. How many rows
 * the call has, how they are grouped into micro-tiles, which thread runs them and where the
 * K dimension is split into cache blocks (partial sums round-trip through float32 memory
 * exactly) change nothing. So a token's output is bit-identical alone, in a 512-row prefill
 * chunk or beside 63 decoding neighbours, without padding small batches to a "safe" row count
 * as the vendor BLAS needs (its 1-row path is a GEMV that sums in another order).
 *
 * Layout: W [N, K] is packed once at load into column panels of 64 outputs,
 *   wp [ceil(N/64), K, 64]: panel p holds W[64p + j, k] at wp[p][k][j],
 * so the micro-kernel streams one panel contiguously (batch 1 is then a pure memory stream)
 * and broadcasts one x value against four 16-wide vectors of outputs (no horizontal sums).
 * N is zero-padded to a multiple of 64 in the pack; the pad columns are never stored.
 *
 * Threads: OpenMP, which in a process that loaded PyTorch is PyTorch's own libgomp and pool,
 * so the engine has one compute pool. Work is split into (panel, row chunk) tasks.
 */
#include <stdint.h>
#include <string.h>

#define NR 64  /* outputs per panel: four 16-float vectors */
#define MR 6   /* rows per micro-tile: 6 x 4 accumulators + 4 panel vectors + 1 broadcast */
#define KC 128 /* k per cache block: a 128 x 64 panel slice (32 KiB) stays in L1 */
#define MC 96  /* rows per task: the chunk's x slice stays in L2 while a panel is reused */

#if defined(__AVX512F__)
#include <immintrin.h>

/* A micro-tile's accumulators: zero for the first k block, else the partial sums in out. */
static inline __attribute__((always_inline)) void tile_begin(const int mr, __m512 acc[][4],
                                                             const float *out, const int64_t ldo,
                                                             const int is_first,
                                                             const __mmask16 *masks) {
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < 4; j++)
            acc[r][j] = is_first ? _mm512_setzero_ps()
                                 : _mm512_maskz_loadu_ps(masks[j], out + r * ldo + 16 * j);
}

/* Store a micro-tile's sums, adding the bias after the last k block. */
static inline __attribute__((always_inline)) void tile_end(const int mr, __m512 acc[][4],
                                                           float *out, const int64_t ldo,
                                                           const float *bias,
                                                           const __mmask16 *masks) {
    for (int j = 0; j < 4; j++) {
        const __m512 b = bias ? _mm512_maskz_loadu_ps(masks[j], bias + 16 * j) : _mm512_setzero_ps();
        for (int r = 0; r < mr; r++) {
            const __m512 v = bias ? _mm512_add_ps(acc[r][j], b) : acc[r][j];
            _mm512_mask_storeu_ps(out + r * ldo + 16 * j, masks[j], v);
        }
    }
}

/* acc[r][j] (+)= sum over k < kc of x[r][k] * wp[k][16j..16j+15], for mr rows. */
static inline __attribute__((always_inline)) void micro_tile(
    const int mr, const int64_t kc, const float *restrict x, const int64_t ldx,
    const float *restrict wp, float *restrict out, const int64_t ldo, const int is_first,
    const float *restrict bias, const __mmask16 *masks) {
    __m512 acc[MR][4];
    tile_begin(mr, acc, out, ldo, is_first, masks);
    for (int64_t k = 0; k < kc; k++) {
        const float *restrict wk = wp + k * NR;
        const __m512 w0 = _mm512_loadu_ps(wk), w1 = _mm512_loadu_ps(wk + 16);
        const __m512 w2 = _mm512_loadu_ps(wk + 32), w3 = _mm512_loadu_ps(wk + 48);
        for (int r = 0; r < mr; r++) {
            const __m512 xb = _mm512_set1_ps(x[r * ldx + k]);
            acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(xb, w2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(xb, w3, acc[r][3]);
        }
    }
    tile_end(mr, acc, out, ldo, bias, masks);
}

/* rows [m0, m1) of out (+)= x[:, k0:k0+kc] times one panel slice ws [kc][64] */
static void tile_rows(int64_t m0, int64_t m1, int64_t kc, const float *x, int64_t K, int64_t k0,
                      const float *ws, float *out, int64_t ldo, int is_first, const float *bias,
                      const __mmask16 *masks) {
    for (int64_t m = m0; m < m1; m += MR) {
        const float *xs = x + m * K + k0;
        float *o = out + m * ldo;
        switch (m1 - m < MR ? m1 - m : MR) {
        case 1: micro_tile(1, kc, xs, K, ws, o, ldo, is_first, bias, masks); break;
        case 2: micro_tile(2, kc, xs, K, ws, o, ldo, is_first, bias, masks); break;
        case 3: micro_tile(3, kc, xs, K, ws, o, ldo, is_first, bias, masks); break;
        case 4: micro_tile(4, kc, xs, K, ws, o, ldo, is_first, bias, masks); break;
        case 5: micro_tile(5, kc, xs, K, ws, o, ldo, is_first, bias, masks); break;
        default: micro_tile(6, kc, xs, K, ws, o, ldo, is_first, bias, masks); break;
        }
    }
}

static void column_masks(int64_t ncols, __mmask16 *masks) {
    for (int j = 0; j < 4; j++) {
        const int64_t left = ncols - 16 * j;
        masks[j] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    }
}

/* Quantized panels (weights kept as GGUF stored them, 4-5x fewer bytes to stream than float32):
 * in groups of G = 32 along k, w[k][j] = (a[g][j] * q[k][j]) + c[g][j], rounded after the
 * product and after the sum exactly as gguf's dequantizer computes it, so the weights the
 * micro-kernel sees are bit-identical to the float32 tensor. Per panel: q [K][64] int8,
 * a and c [K/32][64] float32. A slice is expanded into an L1 scratch buffer once per task and
 * k-block and reused by every row of the task; the dot products are the float32 ones above. */
#define QG 32
static void dequant_slice(const int8_t *q, const float *a, const float *c, int64_t kc,
                          float *restrict ws) {
    for (int64_t k = 0; k < kc; k++) {
        const float *ag = a + (k / QG) * NR, *cg = c + (k / QG) * NR;
        for (int j = 0; j < 4; j++) {
            const __m128i b = _mm_loadu_si128((const __m128i *)(q + k * NR + 16 * j));
            const __m512 qf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
            /* the _round forms are never fused into an FMA by the compiler */
            const __m512 p = _mm512_mul_round_ps(_mm512_loadu_ps(ag + 16 * j), qf,
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm512_storeu_ps(ws + k * NR + 16 * j,
                             _mm512_add_round_ps(p, _mm512_loadu_ps(cg + 16 * j),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
    }
}

/* The same products for a task of at most 4 rows (decode): each k row of the panel is expanded
 * in registers and used at once, with no scratch round trip; the weights and every FMA are the
 * ones of the scratch path, so a row's bits do not depend on which path ran it. */
static inline __attribute__((always_inline)) void micro_tile_q(
    const int mr, const int64_t kc, const float *restrict x, const int64_t ldx,
    const int8_t *restrict q, const float *restrict a, const float *restrict c,
    float *restrict out, const int64_t ldo, const int is_first, const float *restrict bias,
    const __mmask16 *masks) {
    const int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512 acc[4][4];
    tile_begin(mr, acc, out, ldo, is_first, masks);
    for (int64_t g = 0; g < kc / QG; g++) {
        __m512 ag[4], cg[4];
        for (int j = 0; j < 4; j++) {
            ag[j] = _mm512_loadu_ps(a + g * NR + 16 * j);
            cg[j] = _mm512_loadu_ps(c + g * NR + 16 * j);
        }
        for (int64_t k = g * QG; k < (g + 1) * QG; k++) {
            const __m512i raw = _mm512_loadu_si512((const void *)(q + k * NR));
            __m512 w[4];
            w[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(raw)));
            w[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(raw, 1)));
            w[2] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(raw, 2)));
            w[3] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(raw, 3)));
            for (int j = 0; j < 4; j++)
                w[j] = _mm512_add_round_ps(_mm512_mul_round_ps(ag[j], w[j], rnd), cg[j], rnd);
            for (int r = 0; r < mr; r++) {
                const __m512 xb = _mm512_set1_ps(x[r * ldx + k]);
                for (int j = 0; j < 4; j++) acc[r][j] = _mm512_fmadd_ps(xb, w[j], acc[r][j]);
            }
        }
    }
    tile_end(mr, acc, out, ldo, bias, masks);
}

static void few_rows_q(int64_t m0, int64_t m1, int64_t kc, const float *x, int64_t K, int64_t k0,
                       const int8_t *q, const float *a, const float *c, float *out, int64_t ldo,
                       int is_first, const float *bias, const __mmask16 *masks) {
    const float *xs = x + m0 * K + k0;
    float *o = out + m0 * ldo;
    switch (m1 - m0) {
    case 1: micro_tile_q(1, kc, xs, K, q, a, c, o, ldo, is_first, bias, masks); break;
    case 2: micro_tile_q(2, kc, xs, K, q, a, c, o, ldo, is_first, bias, masks); break;
    case 3: micro_tile_q(3, kc, xs, K, q, a, c, o, ldo, is_first, bias, masks); break;
    default: micro_tile_q(4, kc, xs, K, q, a, c, o, ldo, is_first, bias, masks); break;
    }
}

/* 4-bit panels (Q4_0/Q4_1 codes, about 0.6 bytes a weight): per panel and k, 32 bytes where
 * byte i holds the code of column i (low nibble) and of column i + 32 (high nibble), stored as
 * code + zero (zero = 8 for signed codes); a and c are float16 [K/32][64] (GGUF stores them so,
 * and float16 -> float32 is exact). Expanded to the same float32 weights as the int8 form. */
static inline __attribute__((always_inline)) void expand_nib_row(const uint8_t *restrict q,
                                                                 const __m512i zero,
                                                                 __m512i out[4]) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)q);
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(v, mask);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    out[0] = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(lo)), zero);
    out[1] = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(lo, 1)), zero);
    out[2] = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(hi)), zero);
    out[3] = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(hi, 1)), zero);
}

static inline __m512 load_half16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static void dequant_slice_nib(const uint8_t *q, const uint16_t *a, const uint16_t *c,
                              int64_t zero, int64_t kc, float *restrict ws) {
    const int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512i z = _mm512_set1_epi32((int)zero);
    for (int64_t g = 0; g < kc / QG; g++) {
        __m512 ag[4], cg[4];
        for (int j = 0; j < 4; j++) {
            ag[j] = load_half16(a + g * NR + 16 * j);
            cg[j] = load_half16(c + g * NR + 16 * j);
        }
        for (int64_t k = g * QG; k < (g + 1) * QG; k++) {
            __m512i codes[4];
            expand_nib_row(q + k * (NR / 2), z, codes);
            for (int j = 0; j < 4; j++)
                _mm512_storeu_ps(ws + k * NR + 16 * j,
                                 _mm512_add_round_ps(
                                     _mm512_mul_round_ps(ag[j], _mm512_cvtepi32_ps(codes[j]), rnd),
                                     cg[j], rnd));
        }
    }
}

static inline __attribute__((always_inline)) void micro_tile_nib(
    const int mr, const int64_t kc, const float *restrict x, const int64_t ldx,
    const uint8_t *restrict q, const uint16_t *restrict a, const uint16_t *restrict c,
    const __m512i zero, float *restrict out, const int64_t ldo, const int is_first,
    const float *restrict bias, const __mmask16 *masks) {
    const int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512 acc[4][4];
    tile_begin(mr, acc, out, ldo, is_first, masks);
    for (int64_t g = 0; g < kc / QG; g++) {
        __m512 ag[4], cg[4];
        for (int j = 0; j < 4; j++) {
            ag[j] = load_half16(a + g * NR + 16 * j);
            cg[j] = load_half16(c + g * NR + 16 * j);
        }
        for (int64_t k = g * QG; k < (g + 1) * QG; k++) {
            __m512i codes[4];
            __m512 w[4];
            expand_nib_row(q + k * (NR / 2), zero, codes);
            for (int j = 0; j < 4; j++)
                w[j] = _mm512_add_round_ps(
                    _mm512_mul_round_ps(ag[j], _mm512_cvtepi32_ps(codes[j]), rnd), cg[j], rnd);
            for (int r = 0; r < mr; r++) {
                const __m512 xb = _mm512_set1_ps(x[r * ldx + k]);
                for (int j = 0; j < 4; j++) acc[r][j] = _mm512_fmadd_ps(xb, w[j], acc[r][j]);
            }
        }
    }
    tile_end(mr, acc, out, ldo, bias, masks);
}

static void few_rows_nib(int64_t m0, int64_t m1, int64_t kc, const float *x, int64_t K,
                         int64_t k0, const uint8_t *q, const uint16_t *a, const uint16_t *c,
                         const __m512i zero, float *out, int64_t ldo, int is_first,
                         const float *bias, const __mmask16 *masks) {
    const float *xs = x + m0 * K + k0;
    float *o = out + m0 * ldo;
    switch (m1 - m0) {
    case 1: micro_tile_nib(1, kc, xs, K, q, a, c, zero, o, ldo, is_first, bias, masks); break;
    case 2: micro_tile_nib(2, kc, xs, K, q, a, c, zero, o, ldo, is_first, bias, masks); break;
    case 3: micro_tile_nib(3, kc, xs, K, q, a, c, zero, o, ldo, is_first, bias, masks); break;
    default: micro_tile_nib(4, kc, xs, K, q, a, c, zero, o, ldo, is_first, bias, masks); break;
    }
}

/* Waking a sleeping pool thread costs tens of microseconds on a busy or virtual machine (the
 * pool waits passively, see llmos/__init__.py), as much as a 0.5M-MAC product takes alone. */
#define MIN_PARALLEL_MACS (1 << 20)
static int pick_threads(int64_t num_threads, int64_t num_tasks, int64_t M, int64_t K, int64_t N) {
    return (num_threads > 1 && num_tasks > 1 && M * K * N >= MIN_PARALLEL_MACS) ? (int)num_threads
                                                                              : 1;
}

int linear_f32_available(void) { return 1; }

/* x [M, K] (rows contiguous), wp packed as above for N outputs, bias [N] or NULL,
 * out [M, N] (rows contiguous). num_threads <= 1 runs on the calling thread. */
void linear_f32(const float *x, int64_t M, int64_t K, const float *wp, int64_t N,
                const float *bias, float *out, int64_t num_threads) {
    const int64_t num_chunks = (M + MC - 1) / MC, num_panels = (N + NR - 1) / NR;
    const int64_t num_tasks = num_panels * num_chunks;
    const int nt = pick_threads(num_threads, num_tasks, M, K, N);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t t = 0; t < num_tasks; t++) {
        const int64_t p = t % num_panels, m0 = t / num_panels * MC;
        const int64_t m1 = m0 + MC < M ? m0 + MC : M;
        __mmask16 masks[4];
        column_masks(N - p * NR < NR ? N - p * NR : NR, masks);
        const float *panel = wp + p * K * NR;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            const float *b = k0 + kc == K && bias ? bias + p * NR : NULL;
            tile_rows(m0, m1, kc, x, K, k0, panel + k0 * NR, out + p * NR, N, k0 == 0, b, masks);
        }
    }
}

/* The same product with quantized panels q [P][K][64], a/c [P][K/32][64]; K % 32 == 0. */
void linear_q8_f32(const float *x, int64_t M, int64_t K, const int8_t *qp, const float *ap,
                   const float *cp, int64_t N, const float *bias, float *out,
                   int64_t num_threads) {
    const int64_t num_chunks = (M + MC - 1) / MC, num_panels = (N + NR - 1) / NR;
    const int64_t num_tasks = num_panels * num_chunks;
    const int nt = pick_threads(num_threads, num_tasks, M, K, N);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t t = 0; t < num_tasks; t++) {
        float ws[KC * NR] __attribute__((aligned(64)));
        const int64_t p = t % num_panels, m0 = t / num_panels * MC;
        const int64_t m1 = m0 + MC < M ? m0 + MC : M;
        __mmask16 masks[4];
        column_masks(N - p * NR < NR ? N - p * NR : NR, masks);
        const int8_t *q = qp + p * K * NR;
        const float *a = ap + p * (K / QG) * NR, *c = cp + p * (K / QG) * NR;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            const float *b = k0 + kc == K && bias ? bias + p * NR : NULL;
            const int8_t *qs = q + k0 * NR;
            const float *as = a + (k0 / QG) * NR, *cs = c + (k0 / QG) * NR;
            if (m1 - m0 <= 4) {
                few_rows_q(m0, m1, kc, x, K, k0, qs, as, cs, out + p * NR, N, k0 == 0, b, masks);
            } else {
                dequant_slice(qs, as, cs, kc, ws);
                tile_rows(m0, m1, kc, x, K, k0, ws, out + p * NR, N, k0 == 0, b, masks);
            }
        }
    }
}

/* The same product with 4-bit panels q [P][K][32 bytes], a/c float16 [P][K/32][64]. */
void linear_q4_f32(const float *x, int64_t M, int64_t K, const uint8_t *qp, const uint16_t *ap,
                   const uint16_t *cp, int64_t zero, int64_t N, const float *bias, float *out,
                   int64_t num_threads) {
    const int64_t num_chunks = (M + MC - 1) / MC, num_panels = (N + NR - 1) / NR;
    const int64_t num_tasks = num_panels * num_chunks;
    const int nt = pick_threads(num_threads, num_tasks, M, K, N);
    const __m512i z = _mm512_set1_epi32((int)zero);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t t = 0; t < num_tasks; t++) {
        float ws[KC * NR] __attribute__((aligned(64)));
        const int64_t p = t % num_panels, m0 = t / num_panels * MC;
        const int64_t m1 = m0 + MC < M ? m0 + MC : M;
        __mmask16 masks[4];
        column_masks(N - p * NR < NR ? N - p * NR : NR, masks);
        const uint8_t *q = qp + p * K * (NR / 2);
        const uint16_t *a = ap + p * (K / QG) * NR, *c = cp + p * (K / QG) * NR;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            const float *b = k0 + kc == K && bias ? bias + p * NR : NULL;
            const uint8_t *qs = q + k0 * (NR / 2);
            const uint16_t *as = a + (k0 / QG) * NR, *cs = c + (k0 / QG) * NR;
            if (m1 - m0 <= 4) {
                few_rows_nib(m0, m1, kc, x, K, k0, qs, as, cs, z, out + p * NR, N, k0 == 0, b,
                             masks);
            } else {
                dequant_slice_nib(qs, as, cs, zero, kc, ws);
                tile_rows(m0, m1, kc, x, K, k0, ws, out + p * NR, N, k0 == 0, b, masks);
            }
        }
    }
}

#else /* no AVX-512: the caller uses PyTorch's GEMM with row padding instead */

int linear_f32_available(void) { return 0; }

void linear_f32(const float *x, int64_t M, int64_t K, const float *wp, int64_t N,
                const float *bias, float *out, int64_t num_threads) {
    (void)x, (void)M, (void)K, (void)wp, (void)N, (void)bias, (void)out, (void)num_threads;
}

void linear_q8_f32(const float *x, int64_t M, int64_t K, const int8_t *qp, const float *ap,
                   const float *cp, int64_t N, const float *bias, float *out,
                   int64_t num_threads) {
    (void)x, (void)M, (void)K, (void)qp, (void)ap, (void)cp, (void)N, (void)bias, (void)out;
    (void)num_threads;
}

void linear_q4_f32(const float *x, int64_t M, int64_t K, const uint8_t *qp, const uint16_t *ap,
                   const uint16_t *cp, int64_t zero, int64_t N, const float *bias, float *out,
                   int64_t num_threads) {
    (void)x, (void)M, (void)K, (void)qp, (void)ap, (void)cp, (void)zero, (void)N, (void)bias;
    (void)out, (void)num_threads;
}

#endif
