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
 * Threads: (row, head) pairs are split over OpenMP threads (PyTorch's own
 * pool, see native.py), so a long batch-1 decode uses every core too; a pair is computed the same
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

/* scores of one query head against one block of keys: out[l] = sum_d q[d] * kt[d][l] */
static inline void block_dots(const float *restrict q, const float *restrict kt, int64_t D,
                              int64_t bs, float *restrict out) {
    if (bs == 16 && D % 4 == 0) {
        /* the default block size: four independent accumulator chains (d mod 4) hide the FMA
         * latency; they are combined in one fixed order, so results stay batch-invariant */
        float a0[16] = {0}, a1[16] = {0}, a2[16] = {0}, a3[16] = {0};
        for (int64_t d = 0; d < D; d += 4) {
            const float *restrict kr = kt + d * 16;
            for (int l = 0; l < 16; l++) a0[l] += q[d] * kr[l];
            for (int l = 0; l < 16; l++) a1[l] += q[d + 1] * kr[16 + l];
            for (int l = 0; l < 16; l++) a2[l] += q[d + 2] * kr[32 + l];
            for (int l = 0; l < 16; l++) a3[l] += q[d + 3] * kr[48 + l];
        }
        for (int l = 0; l < 16; l++) out[l] = (a0[l] + a1[l]) + (a2[l] + a3[l]);
        return;
    }
    for (int64_t l = 0; l < bs; l++) out[l] = 0;
    for (int64_t d = 0; d < D; d++) {
        const float qd = q[d];
        const float *restrict kr = kt + d * bs;
        for (int64_t l = 0; l < bs; l++) out[l] += qd * kr[l];
    }
}

static void attend_head(const float *restrict qh, const float *k_cache,
                        const float *v_cache, const int64_t *table, int64_t g, int64_t start,
                        int64_t ctx, int64_t Hkv, int64_t D, int64_t Dv, int64_t bs,
                        float scale, float softcap, float *restrict scores,
                        float *restrict acc, float *restrict dots, float *restrict out) {
    const int64_t n = ctx - start;
    float m = -INFINITY;
    for (int64_t b = start / bs; b * bs < ctx; b++) {
        block_dots(qh, k_cache + (table[b] * Hkv + g) * D * bs, D, bs, dots);
        const int64_t lo = b * bs < start ? start - b * bs : 0;
        const int64_t hi = (b + 1) * bs > ctx ? ctx - b * bs : bs;
        for (int64_t l = lo; l < hi; l++) {
            float s = dots[l] * scale;
            if (softcap > 0) s = tanhf(s / softcap) * softcap;
            scores[b * bs + l - start] = s;
            m = s > m ? s : m;
        }
    }
    for (int64_t j = 0; j < n; j++) scores[j] = exp_neg(scores[j] - m);
    float total = 0;
    for (int64_t j = 0; j < n; j++) total += scores[j];
    for (int64_t d = 0; d < Dv; d++) acc[d] = 0;
    for (int64_t b = start / bs; b * bs < ctx; b++) {
        const int64_t lo = b * bs < start ? start - b * bs : 0;
        const int64_t hi = (b + 1) * bs > ctx ? ctx - b * bs : bs;
        const float *vb = v_cache + (table[b] * bs * Hkv + g) * Dv;
        for (int64_t l = lo; l < hi; l++) {
            const float p = scores[b * bs + l - start];
            const float *restrict vv = vb + l * Hkv * Dv;
            for (int64_t d = 0; d < Dv; d++) acc[d] += p * vv[d];
        }
    }
    const float inv = 1.0f / total;
    for (int64_t d = 0; d < Dv; d++) out[d] = acc[d] * inv;
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* e^x for x <= 0 on 16 lanes: exp_neg's steps, each lane computed the same way */
static inline __m512 exp_neg16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(
        _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x));
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i bits = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

/* attend_head for blocks of 16 keys and head dims that are multiples of 16, in vector
 * registers. Every order is fixed by the row's own keys: a score sums d in four interleaved
 * chains combined as (c0 + c1) + (c2 + c3); the softmax total sums 16 lanes of keys j = lane
 * mod 16 (j counted from the row's first key), then the lanes pairwise; the values sum over
 * keys in position order, even and odd keys in two chains added at the end. */
static void attend_head16(const float *restrict qh, const float *k_cache, const float *v_cache,
                          const int64_t *table, int64_t g, int64_t start, int64_t ctx,
                          int64_t Hkv, int64_t D, int64_t Dv, float scale, float softcap,
                          float *restrict scores, float *restrict acc, float *restrict out) {
    const int64_t n = ctx - start, bs = 16;
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t b = start / bs; b * bs < ctx; b++) {
        const float *kt = k_cache + (table[b] * Hkv + g) * D * bs;
        __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
        for (int64_t d = 0; d < D; d += 4) {
            c0 = _mm512_fmadd_ps(_mm512_set1_ps(qh[d]), _mm512_loadu_ps(kt + d * 16), c0);
            c1 = _mm512_fmadd_ps(_mm512_set1_ps(qh[d + 1]), _mm512_loadu_ps(kt + d * 16 + 16), c1);
            c2 = _mm512_fmadd_ps(_mm512_set1_ps(qh[d + 2]), _mm512_loadu_ps(kt + d * 16 + 32), c2);
            c3 = _mm512_fmadd_ps(_mm512_set1_ps(qh[d + 3]), _mm512_loadu_ps(kt + d * 16 + 48), c3);
        }
        __m512 sv = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                                  _mm512_set1_ps(scale));
        const int64_t lo = b * bs < start ? start - b * bs : 0;
        const int64_t hi = (b + 1) * bs > ctx ? ctx - b * bs : bs;
        const __mmask16 live = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
        if (softcap > 0) {
            float tmp[16];
            _mm512_storeu_ps(tmp, sv);
            for (int l = 0; l < 16; l++) tmp[l] = tanhf(tmp[l] / softcap) * softcap;
            sv = _mm512_loadu_ps(tmp);
        }
        /* scores[j] for j = b * 16 + l - start; a masked store keeps other blocks' scores */
        _mm512_mask_storeu_ps(scores + b * bs - start, live, sv);
        vmax = _mm512_mask_max_ps(vmax, live, vmax, sv);
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 k = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = exp_neg16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, scores + j), m));
        _mm512_mask_storeu_ps(scores + j, k, e);
        vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(k, e));
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, vsum);
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) lanes[l] += lanes[l + w];
    const float total = lanes[0];
    for (int64_t d = 0; d < 2 * Dv; d++) acc[d] = 0; /* even keys in acc, odd in acc + Dv */
    for (int64_t b = start / bs; b * bs < ctx; b++) {
        const int64_t lo = b * bs < start ? start - b * bs : 0;
        const int64_t hi = (b + 1) * bs > ctx ? ctx - b * bs : bs;
        const float *vb = v_cache + (table[b] * bs * Hkv + g) * Dv;
        for (int64_t d0 = 0; d0 < Dv; d0 += 64) {
            const int64_t nv = Dv - d0 >= 64 ? 4 : (Dv - d0) / 16;
            __m512 ae[4], ao[4];
            for (int i = 0; i < nv; i++) {
                ae[i] = _mm512_loadu_ps(acc + d0 + 16 * i);
                ao[i] = _mm512_loadu_ps(acc + Dv + d0 + 16 * i);
            }
            for (int64_t l = lo; l < hi; l++) {
                const int64_t j = b * bs + l - start;
                const __m512 p = _mm512_set1_ps(scores[j]);
                const float *vv = vb + l * Hkv * Dv + d0;
                if (j % 2 == 0)
                    for (int i = 0; i < nv; i++)
                        ae[i] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vv + 16 * i), ae[i]);
                else
                    for (int i = 0; i < nv; i++)
                        ao[i] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vv + 16 * i), ao[i]);
            }
            for (int i = 0; i < nv; i++) {
                _mm512_storeu_ps(acc + d0 + 16 * i, ae[i]);
                _mm512_storeu_ps(acc + Dv + d0 + 16 * i, ao[i]);
            }
        }
    }
    const float inv = 1.0f / total;
    for (int64_t d = 0; d < Dv; d++) out[d] = (acc[d] + acc[Dv + d]) * inv;
}
#define HAS_HEAD16 1
#define attend_vector attend_head16
#else
#define HAS_HEAD16 0
#define attend_vector(...) ((void)0)
#endif

/* q: [T, H, D]; tables: [num_seqs, max_blocks]; rows [0, num_rows) are computed, row r being
 * row r of q/out, of sequence row_seq[r], seeing row_ctx[r] keys (its position + 1), or only
 * the last `window` of them when window > 0. out: [T, H, Dv]. Up to num_threads OpenMP threads
 * share the (row, head) pairs. Returns 0, or -1 when scratch memory could not be allocated. */
int paged_attention_f32(const float *q, const float *k_cache, const float *v_cache,
                        const int64_t *tables, int64_t max_blocks, const int64_t *row_seq,
                        const int64_t *row_ctx, int64_t num_rows, int64_t max_ctx, int64_t H,
                        int64_t Hkv, int64_t D, int64_t Dv, int64_t bs, float scale,
                        int64_t window, float softcap, float *out, int64_t num_threads) {
    const int64_t G = H / Hkv, num_tasks = num_rows * H;
    /* the path depends on shapes only, so every row of a model takes the same one */
    const int is_vector = HAS_HEAD16 && bs == 16 && D % 16 == 0 && Dv % 16 == 0;
    /* a short context is not worth waking a pool thread for (see gemm.c) */
    const int nt = (num_threads > 1 && num_tasks > 1 && num_rows * max_ctx * H >= 8192)
                       ? (int)num_threads : 1;
    int failed = 0;
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : failed)
    {
        float *scores = malloc(sizeof(float) * (size_t)(max_ctx > 0 ? max_ctx : 1));
        float *acc = malloc(sizeof(float) * (size_t)(2 * Dv));
        float *dots = malloc(sizeof(float) * (size_t)bs);
        const int ok = scores && acc && dots;
        failed |= !ok;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < num_tasks; t++) {
            if (!ok) continue;
            const int64_t r = t / H, h = t % H, ctx = row_ctx[r];
            const int64_t start = (window > 0 && ctx > window) ? ctx - window : 0;
            const float *qh = q + (r * H + h) * D;
            const int64_t *table = tables + row_seq[r] * max_blocks;
            float *o = out + (r * H + h) * Dv;
            if (is_vector)
                attend_vector(qh, k_cache, v_cache, table, h / G, start, ctx, Hkv, D, Dv, scale,
                              softcap, scores, acc, o);
            else
                attend_head(qh, k_cache, v_cache, table, h / G, start, ctx, Hkv, D, Dv, bs, scale,
                            softcap, scores, acc, dots, o);
        }
        free(scores);
        free(acc);
        free(dots);
    }
    return failed ? -1 : 0;
}
