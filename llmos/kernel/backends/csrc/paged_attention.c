/* Paged attention for CPU, float32, one query row at a time.
 *
 * Batch invariance by construction: the result for a query depends only on the query, its
 * sequence's keys/values and its context length. Every sum runs in one fixed order (a score
 * sums over head_dim in index order; softmax and the weighted sum run over keys in position
 * order), whatever the number of rows in the call, however keys were chunked, whichever thread
 * runs the row. K/V are read straight from the block pool through the block table.
 *
 * Layouts (slot = block * bs + offset):
 *   k_cache [num_blocks, Hkv, D, bs]   keys of a block side by side, so one query element
 *                                      multiplies bs keys in one vector op (no horizontal sums)
 *   v_cache [num_blocks, bs, Hkv, Dv]  one value vector per key and head
 * A query head reads its KV head's block from L1/L2 (GQA heads of one group follow each other).
 *
 * Threads: paged_attention_f32_mt splits (row, head) pairs over OpenMP threads (PyTorch's own
 * pool, see native.py), so a batch-1 decode uses every core too; a pair is computed the same
 * way whichever thread takes it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* e^x for x <= 0, ~1 ulp; plain arithmetic so the compiler vectorizes it, and the same code
 * for every row keeps results identical across batches */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#define MAX_HEADS 4 /* query heads computed together: each K/V row is loaded once for all */

/* scores of nh query heads (q + i * D) against one block of keys:
 * out[i * bs + l] = sum_d q_i[d] * kt[d][l], summed in the same order for every head */
static inline __attribute__((always_inline)) void block_dots(const int nh, const float *restrict q,
                                                             const float *restrict kt, int64_t D,
                                                             int64_t bs, float *restrict out) {
    if (bs == 16 && D % 4 == 0) {
        /* the default block size: four independent accumulator chains (d mod 4) per head hide
         * the FMA latency; they are combined in one fixed order, so results stay
         * batch-invariant */
        float a[MAX_HEADS][4][16] = {{{0}}};
        for (int64_t d = 0; d < D; d += 4) {
            const float *restrict kr = kt + d * 16;
            for (int i = 0; i < nh; i++) {
                const float *qi = q + i * D + d;
                for (int l = 0; l < 16; l++) a[i][0][l] += qi[0] * kr[l];
                for (int l = 0; l < 16; l++) a[i][1][l] += qi[1] * kr[16 + l];
                for (int l = 0; l < 16; l++) a[i][2][l] += qi[2] * kr[32 + l];
                for (int l = 0; l < 16; l++) a[i][3][l] += qi[3] * kr[48 + l];
            }
        }
        for (int i = 0; i < nh; i++)
            for (int l = 0; l < 16; l++)
                out[i * 16 + l] = (a[i][0][l] + a[i][1][l]) + (a[i][2][l] + a[i][3][l]);
        return;
    }
    for (int i = 0; i < nh; i++) {
        for (int64_t l = 0; l < bs; l++) out[i * bs + l] = 0;
        for (int64_t d = 0; d < D; d++) {
            const float qd = q[i * D + d];
            const float *restrict kr = kt + d * bs;
            for (int64_t l = 0; l < bs; l++) out[i * bs + l] += qd * kr[l];
        }
    }
}

/* nh consecutive query heads (all reading KV head g) of one row attend to keys
 * [start, ctx). scores: [nh][ctx - start], acc: [nh][Dv], dots: [nh][bs] scratch. Each head's
 * arithmetic is the same whatever nh is. */
static inline __attribute__((always_inline)) void attend_heads(
    const int nh, const float *restrict qh, const float *k_cache, const float *v_cache,
    const int64_t *table, int64_t g, int64_t start, int64_t ctx, int64_t Hkv, int64_t D,
    int64_t Dv, int64_t bs, float scale, float softcap, float *restrict scores,
    float *restrict acc, float *restrict dots, float *restrict out) {
    const int64_t n = ctx - start;
    float m[MAX_HEADS], total[MAX_HEADS];
    for (int i = 0; i < nh; i++) m[i] = -INFINITY;
    for (int64_t b = start / bs; b * bs < ctx; b++) {
        block_dots(nh, qh, k_cache + (table[b] * Hkv + g) * D * bs, D, bs, dots);
        const int64_t lo = b * bs < start ? start - b * bs : 0;
        const int64_t hi = (b + 1) * bs > ctx ? ctx - b * bs : bs;
        for (int i = 0; i < nh; i++) {
            for (int64_t l = lo; l < hi; l++) {
                float s = dots[i * bs + l] * scale;
                if (softcap > 0) s = tanhf(s / softcap) * softcap;
                scores[i * n + b * bs + l - start] = s;
                m[i] = s > m[i] ? s : m[i];
            }
        }
    }
    for (int i = 0; i < nh; i++) {
        float *si = scores + i * n;
        for (int64_t j = 0; j < n; j++) si[j] = exp_neg(si[j] - m[i]);
        total[i] = 0;
        for (int64_t j = 0; j < n; j++) total[i] += si[j];
        for (int64_t d = 0; d < Dv; d++) acc[i * Dv + d] = 0;
    }
    for (int64_t b = start / bs; b * bs < ctx; b++) {
        const int64_t lo = b * bs < start ? start - b * bs : 0;
        const int64_t hi = (b + 1) * bs > ctx ? ctx - b * bs : bs;
        const float *vb = v_cache + (table[b] * bs * Hkv + g) * Dv;
        for (int64_t l = lo; l < hi; l++) {
            const float *restrict vv = vb + l * Hkv * Dv;
            for (int i = 0; i < nh; i++) {
                const float p = scores[i * n + b * bs + l - start];
                float *restrict ai = acc + i * Dv;
                for (int64_t d = 0; d < Dv; d++) ai[d] += p * vv[d];
            }
        }
    }
    for (int i = 0; i < nh; i++) {
        const float inv = 1.0f / total[i];
        for (int64_t d = 0; d < Dv; d++) out[i * Dv + d] = acc[i * Dv + d] * inv;
    }
}

static void attend(const int nh, const float *qh, const float *k_cache, const float *v_cache,
                   const int64_t *table, int64_t g, int64_t start, int64_t ctx, int64_t Hkv,
                   int64_t D, int64_t Dv, int64_t bs, float scale, float softcap, float *scores,
                   float *acc, float *dots, float *out) {
#define ATTEND(k)                                                                               \
    attend_heads(k, qh, k_cache, v_cache, table, g, start, ctx, Hkv, D, Dv, bs, scale, softcap, \
                 scores, acc, dots, out)
    switch (nh) {
    case 1: ATTEND(1); break;
    case 2: ATTEND(2); break;
    case 3: ATTEND(3); break;
    default: ATTEND(4); break;
    }
#undef ATTEND
}

/* the largest divisor of the GQA group size that is at most MAX_HEADS */
static int64_t heads_per_task(int64_t G) {
    for (int64_t nh = MAX_HEADS; nh > 1; nh--)
        if (G % nh == 0) return nh;
    return 1;
}

/* q: [T, H, D]; tables: [num_seqs, max_blocks]; rows [0, num_rows) are computed, row r being
 * row r of q/out, of sequence row_seq[r], seeing row_ctx[r] keys (its position + 1), or only
 * the last `window` of them when window > 0. out: [T, H, Dv]. Up to num_threads OpenMP threads
 * share the (row, head) pairs. Returns 0, or -1 when scratch memory could not be allocated. */
int paged_attention_f32(const float *q, const float *k_cache, const float *v_cache,
                           const int64_t *tables, int64_t max_blocks, const int64_t *row_seq,
                           const int64_t *row_ctx, int64_t num_rows, int64_t max_ctx, int64_t H,
                           int64_t Hkv, int64_t D, int64_t Dv, int64_t bs, float scale,
                           int64_t window, float softcap, float *out, int64_t num_threads) {
    const int64_t G = H / Hkv, nh = heads_per_task(G), per_row = H / nh;
    const int64_t num_tasks = num_rows * per_row;
    /* a short context is not worth waking a pool thread for (see gemm.c) */
    const int nt = (num_threads > 1 && num_tasks > 1 && num_rows * max_ctx * H >= 8192)
                       ? (int)num_threads : 1;
    int failed = 0;
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : failed)
    {
        const size_t ctx_len = (size_t)(max_ctx > 0 ? max_ctx : 1);
        float *scores = malloc(sizeof(float) * ctx_len * (size_t)nh);
        float *acc = malloc(sizeof(float) * (size_t)(Dv * nh));
        float *dots = malloc(sizeof(float) * (size_t)(bs * nh));
        const int ok = scores && acc && dots;
        failed |= !ok;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < num_tasks; t++) {
            if (!ok) continue;
            const int64_t r = t / per_row, h = t % per_row * nh, ctx = row_ctx[r];
            const int64_t start = (window > 0 && ctx > window) ? ctx - window : 0;
            attend((int)nh, q + (r * H + h) * D, k_cache, v_cache,
                   tables + row_seq[r] * max_blocks, h / G, start, ctx, Hkv, D, Dv, bs, scale,
                   softcap, scores, acc, dots, out + (r * H + h) * Dv);
        }
        free(scores);
        free(acc);
        free(dots);
    }
    return failed ? -1 : 0;
}
