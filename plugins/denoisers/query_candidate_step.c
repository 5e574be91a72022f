/* One DDIM step of the query-candidate denoisers on a folded context, fused: the C twin
 * of query_candidate_sampling._cpu_step (same arithmetic; see its docstrings for the
 * algebra). Per query b, with w_b = softmax(logits + x_t) computed by the caller:
 *
 *   -u       = neg_u_c - sum_k w_bk mv_bk                     (Eq. 6 folded; [H], H = 2D)
 *   out_bk   = w2 . max(dec_bk, -u) + (b2 - w2 . (-u)) + w_bk  (decoder with its ReLU
 *                                                              folded into the maximum)
 *
 * Each of mv and dec is read once per step, and nothing the size of [K,H] is written:
 * with torch ops the same step is three passes and a scratch block. Queries are
 * independent: with OpenMP they are shared among `threads` threads, each with its own
 * row of `scratch` [threads, H]. Tensors are contiguous float32: mv, dec [B,K,H];
 * weight, out [B,K]; neg_u_c row b at neg_u_c + b * c_stride (0: one row for all). */
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static void one_query(int64_t b, int64_t K, int64_t H, const float *mv, const float *dec, const float *weight,
                      const float *neg_u_c, int64_t c_stride, const float *w2, float b2, float *neg_u,
                      float *out) {
    const float *wb = weight + b * K;
    const float *cb = neg_u_c + b * c_stride;
    for (int64_t j = 0; j < H; ++j) neg_u[j] = cb[j];
    for (int64_t k = 0; k < K; ++k) {
        const float wk = wb[k];
        const float *row = mv + (b * K + k) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) neg_u[j] -= wk * row[j];
    }
    float per_query = 0.0f; /* w2 . (-u) */
#pragma omp simd reduction(+ : per_query)
    for (int64_t j = 0; j < H; ++j) per_query += w2[j] * neg_u[j];
    per_query = b2 - per_query;
    for (int64_t k = 0; k < K; ++k) {
        const float *row = dec + (b * K + k) * H;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < H; ++j) {
            /* max(a, -u) as torch.maximum, NaN included at no cost: a NaN in dec fails
             * the comparison and is taken; a NaN in -u reaches the output through
             * per_query anyway */
            const float top = (neg_u[j] > row[j]) ? neg_u[j] : row[j];
            s += w2[j] * top;
        }
        out[b * K + k] = (s + per_query) + wb[k];
    }
}

void rerank_step(int64_t B, int64_t K, int64_t H, const float *mv, const float *dec, const float *weight,
                 const float *neg_u_c, int64_t c_stride, const float *w2, const float *b2, float *scratch,
                 float *out, int64_t threads) {
    const float bias = *b2;
#ifdef _OPENMP
#pragma omp parallel for num_threads((int)threads) schedule(static) if (threads > 1)
#endif
    for (int64_t b = 0; b < B; ++b) {
        int64_t row = 0;
#ifdef _OPENMP
        row = omp_get_thread_num();
#endif
        one_query(b, K, H, mv, dec, weight, neg_u_c, c_stride, w2, bias, scratch + row * H, out);
    }
}
