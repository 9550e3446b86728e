/* Bilinear sampling with a hand-written backward pass: the compiled kernel behind
 * helpers.engine (compiled.py). It computes what torch.nn.functional.grid_sample computes with
 * mode="bilinear", padding_mode="border", align_corners=True, on float32 images
 * [B, C, H, W] and coordinates [B, 2, N] (row, column in [0, 1]; N points per image).
 *
 * Two operations, each with its backward pass:
 *   sample: out[b, c, n] = values[b, c](p[b, n])
 *   chain:  p ← p + D_k(p) for k = 0 .. K-1, one displacement field D_k after another, in
 *           one pass over the points (the composition φ_K-1 ∘ … ∘ φ_0 of φ_k(x) = x + D_k(x),
 *           evaluated without materialising intermediate grids). The fields come
 *           channels-last, [B, H, W, 2] (helpers/engine/compiled.py makes that copy once per field).
 *
 * Images in the batch are independent, so the batch loop is shared between threads and
 * the backward passes accumulate into per-image gradients without atomics.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Where a coordinate falls: the cell's top-left pixel, the weights of its lower row and
 * right column, and d(pixel position)/d(coordinate), which is 0 where the point was clamped
 * to the border (grid_sample counts the border itself as clamped). The cell index stops at
 * size - 2, so a point on the last row or column is its cell's far corner with weight 1:
 * the same value and value gradient as grid_sample, whose position gradient is 0 there. */
typedef struct {
    int32_t row, col;
    float wrow, wcol;
    float drow, dcol;
} Cell;

/* One axis: coordinate c in [0, 1] -> pixel position in [0, size - 1], as grid_sample
 * unnormalises a [-1, 1] grid value g = 2c - 1 with align_corners=True and clamps it. */
static inline void locate_axis(float c, int32_t size, int32_t *index, float *weight, float *slope) {
    float limit = (float)(size - 1);
    float x = ((c * 2.0f - 1.0f) + 1.0f) * (limit * 0.5f);
    *slope = (x > 0.0f && x < limit) ? limit : 0.0f;
    x = x > 0.0f ? x : 0.0f; /* NaN becomes 0 here; sample_forward still returns NaN for it */
    x = x < limit ? x : limit;
    int32_t i = (int32_t)x; /* truncation is floor here: x >= 0 */
    i = i < size - 2 ? i : size - 2;
    *index = i;
    *weight = x - (float)i;
}

static inline Cell locate(float row, float col, int32_t H, int32_t W) {
    Cell cell;
    locate_axis(row, H, &cell.row, &cell.wrow, &cell.drow);
    locate_axis(col, W, &cell.col, &cell.wcol, &cell.dcol);
    return cell;
}

/* The four corner values of one channel. */
typedef struct { float nw, ne, sw, se; } Corners;

static inline Corners corners(const float *image, const Cell *cell, int32_t W) {
    const float *p = image + (cell->row * W + cell->col);
    Corners v = {p[0], p[1], p[W], p[W + 1]};
    return v;
}

static inline float interpolate(const Corners *v, const Cell *cell) {
    float wr = cell->wrow, wc = cell->wcol;
    return (1.0f - wr) * ((1.0f - wc) * v->nw + wc * v->ne) + wr * ((1.0f - wc) * v->sw + wc * v->se);
}

/* d value / d row and d value / d column, in coordinate units. */
static inline void slopes(const Corners *v, const Cell *cell, float *d_row, float *d_col) {
    float wr = cell->wrow, wc = cell->wcol;
    *d_row = ((1.0f - wc) * (v->sw - v->nw) + wc * (v->se - v->ne)) * cell->drow;
    *d_col = ((1.0f - wr) * (v->ne - v->nw) + wr * (v->se - v->sw)) * cell->dcol;
}

/* Add g times the bilinear weights to the four corners of the cell in grad_image. */
static inline void scatter(float *grad_image, const Cell *cell, int64_t W, float g) {
    float wr = cell->wrow, wc = cell->wcol;
    float *p = grad_image + cell->row * W + cell->col;
    p[0] += g * (1.0f - wr) * (1.0f - wc);
    p[1] += g * (1.0f - wr) * wc;
    p[W] += g * wr * (1.0f - wc);
    p[W + 1] += g * wr * wc;
}

/* ------------------------------------------------------------------ chains of fields
 *
 * A chain visits one field at a time, all N points of an image per field, so the points'
 * lookups are independent of each other. They are processed eight at a time with 8-wide
 * vectors (GCC/Clang vector extensions: AVX where the processor has it, two SSE or NEON
 * halves elsewhere), and the few left over one at a time. For the eight corner loads of a
 * point to be two 4-float loads, the fields are packed channels-last, [H, W, 2]: a cell's
 * top corners (nw, ne) of both channels are 4 adjacent floats, and so are its bottom
 * corners. Every value is computed with the same operations in the same order as the
 * scalar formulas above (locate, interpolate, slopes, scatter). Gradients are scattered
 * point by point, the even points of a group of eight first, then the odd ones (see
 * scatter8): the same additions as the scalar code's, in a slightly different order. */

typedef float v4 __attribute__((vector_size(16)));
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
#define LANES 8
typedef float v2 __attribute__((vector_size(8)));

static inline v2 load2(const float *p) { v2 v; memcpy(&v, p, sizeof v); return v; }
static inline v4 load4(const float *p) { v4 v; memcpy(&v, p, sizeof v); return v; }

/* Shuffles. SHUFFLE8(a, b, i0, …, i7) gives lane i_j of a:b (0-7 from a, 8-15 from b) as
 * lane j; join4 and join2 put two halves together; PAIR(v, e) is lanes e and e + 1 of v.
 * Clang and GCC 12 have __builtin_shufflevector, which does all of these in registers.
 * Older GCC (11 on Ubuntu 22.04 and Colab) has only __builtin_shuffle, and joins and splits
 * then go through memory: the same floats, more slowly. Compiling with
 * -DHELPERS_PORTABLE_SHUFFLES takes that path anywhere (tests/test_sampler.py does). */
#if (defined(__clang__) || __GNUC__ >= 12) && !defined(HELPERS_PORTABLE_SHUFFLES)
#define SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#define PAIR(v, e) __builtin_shufflevector(v, v, e, e + 1)
static inline v8 join4(v4 low, v4 high) { return __builtin_shufflevector(low, high, 0, 1, 2, 3, 4, 5, 6, 7); }
static inline v4 join2(v2 low, v2 high) { return __builtin_shufflevector(low, high, 0, 1, 2, 3); }
#else
#define SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#define PAIR(v, e) pair_at(v, e)
static inline v2 pair_at(v8 v, int e) {
    v2 x;
    memcpy(&x, (const float *)&v + e, sizeof x);
    return x;
}
static inline v8 join4(v4 low, v4 high) {
    v8 v;
    memcpy(&v, &low, sizeof low);
    memcpy((char *)&v + sizeof low, &high, sizeof high);
    return v;
}
static inline v4 join2(v2 low, v2 high) {
    v4 v;
    memcpy(&v, &low, sizeof low);
    memcpy((char *)&v + sizeof low, &high, sizeof high);
    return v;
}
#endif


static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline v8 choose(v8i mask, v8 yes, v8 no) { return (v8)(((v8i)yes & mask) | ((v8i)no & ~mask)); }

typedef struct {
    v8 limit, half; /* size - 1, and half of it */
    v8i last;       /* size - 2: the last cell */
} Axis;

static Axis axis_of(int64_t size) {
    float limit = (float)(size - 1);
    Axis a;
    for (int j = 0; j < LANES; j++) {
        a.limit[j] = limit;
        a.half[j] = limit * 0.5f;
        a.last[j] = (int32_t)size - 2;
    }
    return a;
}

/* locate_axis for eight coordinates. */
static inline v8i locate8(v8 c, const Axis *a, v8 *weight, v8 *slope) {
    const v8 zero = {0};
    v8 x = ((c * 2.0f - 1.0f) + 1.0f) * a->half;
    *slope = choose((x > 0.0f) & (x < a->limit), a->limit, zero);
    x = choose(x > 0.0f, x, zero); /* NaN becomes 0 here, as in locate_axis */
    x = choose(x < a->limit, x, a->limit);
    v8i i = __builtin_convertvector(x, v8i);
    i = (i & (i < a->last)) | (a->last & ~(i < a->last));
    *weight = x - __builtin_convertvector(i, v8);
    return i;
}

/* The eight corner values (nw0, nw1, ne0, ne1, sw0, sw1, se0, se1; channel 0 or 1) of
 * eight points in a packed field, each as an 8-lane vector (lane j: point j). */
static inline void corners8(const float *packed, const int32_t offset[LANES], int32_t row_stride,
                            v8 out[8]) {
    for (int half = 0; half < 2; half++) {
        const float *base = packed + half * row_stride;
        v8 a[4];
        for (int j = 0; j < 4; j++) /* points j and j + 4, one per 128-bit lane */
            a[j] = join4(load4(base + offset[j]), load4(base + offset[j + 4]));
        v8 u0 = SHUFFLE8(a[0], a[1], 0, 8, 1, 9, 4, 12, 5, 13);
        v8 u1 = SHUFFLE8(a[0], a[1], 2, 10, 3, 11, 6, 14, 7, 15);
        v8 u2 = SHUFFLE8(a[2], a[3], 0, 8, 1, 9, 4, 12, 5, 13);
        v8 u3 = SHUFFLE8(a[2], a[3], 2, 10, 3, 11, 6, 14, 7, 15);
        out[4 * half + 0] = SHUFFLE8(u0, u2, 0, 1, 8, 9, 4, 5, 12, 13);
        out[4 * half + 1] = SHUFFLE8(u0, u2, 2, 3, 10, 11, 6, 7, 14, 15);
        out[4 * half + 2] = SHUFFLE8(u1, u3, 0, 1, 8, 9, 4, 5, 12, 13);
        out[4 * half + 3] = SHUFFLE8(u1, u3, 2, 3, 10, 11, 6, 7, 14, 15);
    }
}

/* Where eight points fall: per-lane offsets of their cells in a packed field, weights and
 * slopes per axis. */
typedef struct {
    int32_t offset[LANES];
    v8 wrow, wcol, drow, dcol;
} Cells;

static inline Cells locate_points(v8 rows, v8 cols, const Axis *ax_row, const Axis *ax_col, int32_t W) {
    Cells c;
    v8i i = locate8(rows, ax_row, &c.wrow, &c.drow), j = locate8(cols, ax_col, &c.wcol, &c.dcol);
    v8i offset = (i * W + j) * 2;
    memcpy(c.offset, &offset, sizeof offset);
    return c;
}

/* Add x, the increments of a cell's two top (or bottom) corners of both channels, to the
 * packed gradient at q: 4 adjacent floats. */
static inline void add4(float *q, v4 x) {
    v4 v = load4(q) + x;
    memcpy(q, &v, sizeof v);
}

/* scatter() of eight points, both channels. add holds the increments (nw, ne, sw, se
 * corner; channel 0, 1) as add[2 * corner + channel]. Neighbouring points usually share
 * corners, so adding point j + 1 straight after point j would wait for j's stores to be
 * read back; the even points go first, then the odd ones, whose cells are usually two
 * columns apart from the previous point's. (With the 16-byte additions, the backward pass
 * of a chain of nine trained fields took about 20% less time here than point by point.) */
static inline void scatter8(float *grad_packed, const int32_t offset[LANES], int32_t row, const v8 add[8]) {
    v8 low[4], high[4]; /* per corner: the (channel 0, channel 1) pairs of points 0 1 | 4 5, 2 3 | 6 7 */
    for (int corner = 0; corner < 4; corner++) {
        low[corner] = SHUFFLE8(add[2 * corner], add[2 * corner + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        high[corner] = SHUFFLE8(add[2 * corner], add[2 * corner + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
#define POINT(j, half, e)                                                   \
    do {                                                                    \
        float *q = grad_packed + offset[j];                                 \
        add4(q, join2(PAIR(half[0], e), PAIR(half[1], e)));                 \
        add4(q + row, join2(PAIR(half[2], e), PAIR(half[3], e)));           \
    } while (0)
    POINT(0, low, 0);
    POINT(2, high, 0);
    POINT(4, low, 4);
    POINT(6, high, 4);
    POINT(1, low, 2);
    POINT(3, high, 2);
    POINT(5, low, 6);
    POINT(7, high, 6);
#undef POINT
}

/* One channel's corners in a packed field. */
static inline Corners packed_corners(const float *packed, const Cell *cell, int32_t W, int channel) {
    const float *p = packed + 2 * (cell->row * W + cell->col) + channel;
    Corners v = {p[0], p[2], p[2 * W], p[2 * W + 2]};
    return v;
}

/* p ← p + D(p) for the N points of one image, (rows, cols) -> (to_rows, to_cols). */
static void chain_step(const float *packed, int64_t H, int64_t W,
                       const Axis *ax_row, const Axis *ax_col, const float *rows,
                       const float *cols, float *to_rows, float *to_cols, int64_t N) {
    int64_t n = 0;
    for (; n + LANES <= N; n += LANES) {
        v8 r = load8(rows + n), c = load8(cols + n), v[8];
        Cells cell = locate_points(r, c, ax_row, ax_col, (int32_t)W);
        corners8(packed, cell.offset, 2 * (int32_t)W, v);
        v8 wr = cell.wrow, wc = cell.wcol;
        /* interpolate(), channel 0 (row displacement) and channel 1 (column displacement) */
        v8 d0 = (1.0f - wr) * ((1.0f - wc) * v[0] + wc * v[2]) + wr * ((1.0f - wc) * v[4] + wc * v[6]);
        v8 d1 = (1.0f - wr) * ((1.0f - wc) * v[1] + wc * v[3]) + wr * ((1.0f - wc) * v[5] + wc * v[7]);
        store8(to_rows + n, r + d0);
        store8(to_cols + n, c + d1);
    }
    for (; n < N; n++) {
        Cell cell = locate(rows[n], cols[n], (int32_t)H, (int32_t)W);
        Corners d_row = packed_corners(packed, &cell, (int32_t)W, 0), d_col = packed_corners(packed, &cell, (int32_t)W, 1);
        to_rows[n] = rows[n] + interpolate(&d_row, &cell);
        to_cols[n] = cols[n] + interpolate(&d_col, &cell);
    }
}

/* fields: K pointers to displacement fields packed channels-last, [B, H, W, 2], in the
 * order they are applied. visited [B, K, 2, N] receives where each field was evaluated,
 * for the backward pass (NULL: not needed). on_grid != 0 promises that the coordinates are
 * the pixel grid itself (N = H·W), where the first field needs no interpolation: D(x) is
 * D's value at that pixel. out [B, 2, N] receives the final positions. */
void chain_forward(const float *const *fields, int64_t K, int64_t B, int64_t H, int64_t W,
                   const float *coords, int64_t coords_batch_stride, int64_t N, int on_grid,
                   float *out, float *visited, int threads) {
    const Axis ax_row = axis_of(H), ax_col = axis_of(W);
    const int64_t HW = H * W;
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        /* Each field reads the points where the one before left them (in visited, when it
         * is kept) and writes where they go next: the next field's slot, or out. */
        float *const last = out + b * 2 * N;
        const float *from = coords + b * coords_batch_stride;
        if (visited) {
            memcpy(visited + b * K * 2 * N, from, 2 * N * sizeof(float));
            from = visited + b * K * 2 * N;
        }
        for (int64_t k = 0; k < K; k++) {
            const float *packed = fields[k] + b * 2 * HW;
            float *to = visited && k + 1 < K ? visited + (b * K + k + 1) * 2 * N : last;
            if (k == 0 && on_grid) {
                for (int64_t n = 0; n < N; n++) {
                    to[n] = from[n] + packed[2 * n];
                    to[N + n] = from[N + n] + packed[2 * n + 1];
                }
            } else {
                chain_step(packed, H, W, &ax_row, &ax_col, from, from + N, to, to + N, N);
            }
            from = to;
        }
    }
}

/* The backward pass of chain_step: for the N points of one image that were at (rows, cols),
 * add the field's share of the gradient (g_rows, g_cols) to grad_packed and turn
 * (g_rows, g_cols) into the gradient with respect to (rows, cols):
 * p_out = p + D(p) gives dL/dp = g + J_D(p)^T g. */
static void chain_step_backward(const float *packed, int64_t H, int64_t W, const Axis *ax_row,
                                const Axis *ax_col, const float *rows, const float *cols,
                                float *g_rows, float *g_cols, float *grad_packed, int64_t N) {
    const int32_t row = 2 * (int32_t)W; /* a packed field's row stride */
    int64_t n = 0;
    for (; n + LANES <= N; n += LANES) {
        v8 v[8];
        Cells cell = locate_points(load8(rows + n), load8(cols + n), ax_row, ax_col, (int32_t)W);
        corners8(packed, cell.offset, row, v);
        v8 wr = cell.wrow, wc = cell.wcol, g0 = load8(g_rows + n), g1 = load8(g_cols + n);
        /* scatter() of both channels (scatter8: even points, then odd ones) */
        v8 add[8] = {g0 * (1.0f - wr) * (1.0f - wc), g1 * (1.0f - wr) * (1.0f - wc),
                     g0 * (1.0f - wr) * wc,          g1 * (1.0f - wr) * wc,
                     g0 * wr * (1.0f - wc),          g1 * wr * (1.0f - wc),
                     g0 * wr * wc,                   g1 * wr * wc};
        scatter8(grad_packed, cell.offset, row, add);
        /* slopes() of both channels, then g + J^T g */
        v8 d0_drow = ((1.0f - wc) * (v[4] - v[0]) + wc * (v[6] - v[2])) * cell.drow;
        v8 d0_dcol = ((1.0f - wr) * (v[2] - v[0]) + wr * (v[6] - v[4])) * cell.dcol;
        v8 d1_drow = ((1.0f - wc) * (v[5] - v[1]) + wc * (v[7] - v[3])) * cell.drow;
        v8 d1_dcol = ((1.0f - wr) * (v[3] - v[1]) + wr * (v[7] - v[5])) * cell.dcol;
        store8(g_rows + n, g0 + g0 * d0_drow + g1 * d1_drow);
        store8(g_cols + n, g1 + g0 * d0_dcol + g1 * d1_dcol);
    }
    for (; n < N; n++) {
        Cell cell = locate(rows[n], cols[n], (int32_t)H, (int32_t)W);
        float g_row = g_rows[n], g_col = g_cols[n], wr = cell.wrow, wc = cell.wcol;
        float *q = grad_packed + 2 * (cell.row * W + cell.col);
        float add[8] = {g_row * (1.0f - wr) * (1.0f - wc), g_col * (1.0f - wr) * (1.0f - wc),
                        g_row * (1.0f - wr) * wc,          g_col * (1.0f - wr) * wc,
                        g_row * wr * (1.0f - wc),          g_col * wr * (1.0f - wc),
                        g_row * wr * wc,                   g_col * wr * wc};
        for (int corner = 0; corner < 4; corner++) {
            q[corner] += add[corner];
            q[row + corner] += add[4 + corner];
        }
        Corners d_row = packed_corners(packed, &cell, (int32_t)W, 0);
        Corners d_col = packed_corners(packed, &cell, (int32_t)W, 1);
        float drow_drow, drow_dcol, dcol_drow, dcol_dcol;
        slopes(&d_row, &cell, &drow_drow, &drow_dcol);
        slopes(&d_col, &cell, &dcol_drow, &dcol_dcol);
        g_rows[n] = g_row + g_row * drow_drow + g_col * dcol_drow;
        g_cols[n] = g_col + g_row * drow_dcol + g_col * dcol_dcol;
    }
}

/* grad_out [B, 2, N] is overwritten: it becomes the gradient with respect to the coordinates
 * (unless on_grid, where the coordinates are the fixed pixel grid and it is left unfinished).
 * grad_fields: K pointers to [B, H, W, 2] buffers (packed, like the fields) that receive the
 * fields' gradients: overwritten where accumulate[k] is 0, added to where it is 1 (the fused
 * training step adds every chain's share of a field's gradient into one buffer). */
void chain_backward(const float *const *fields, int64_t K, int64_t B, int64_t H, int64_t W,
                    const float *visited, int64_t N, int on_grid, float *grad_out,
                    float *const *grad_fields, const int32_t *accumulate, int threads) {
    const Axis ax_row = axis_of(H), ax_col = axis_of(W);
    const int64_t HW = H * W;
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        float *g_rows = grad_out + b * 2 * N, *g_cols = g_rows + N;
        /* Walk back through the fields, the last one applied first. */
        for (int64_t k = K - 1; k >= 0; k--) {
            const float *packed = fields[k] + b * 2 * HW;
            float *grad_packed = grad_fields[k] + b * 2 * HW;
            const float *rows = visited + (b * K + k) * 2 * N, *cols = rows + N;
            if (k == 0 && on_grid && accumulate[k]) {
                for (int64_t n = 0; n < N; n++) {
                    grad_packed[2 * n] += g_rows[n];
                    grad_packed[2 * n + 1] += g_cols[n];
                }
            } else if (k == 0 && on_grid) { /* 0 + g: a -0 gradient becomes +0, as grid_sample's does */
                for (int64_t n = 0; n < N; n++) {
                    grad_packed[2 * n] = 0.0f + g_rows[n];
                    grad_packed[2 * n + 1] = 0.0f + g_cols[n];
                }
            } else {
                if (!accumulate[k]) memset(grad_packed, 0, 2 * HW * sizeof(float));
                chain_step_backward(packed, H, W, &ax_row, &ax_col, rows, cols, g_rows, g_cols, grad_packed, N);
            }
        }
    }
}

/* Fields between the layouts: planar [B, 2, HW] (what a network returns) and packed,
 * channels-last [B, HW, 2] (what the chains read). Copies only: no arithmetic. */
void pack_fields(const float *planar, int64_t B, int64_t HW, float *packed, int threads) {
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        const float *rows = planar + b * 2 * HW, *cols = rows + HW;
        float *out = packed + b * 2 * HW;
        for (int64_t i = 0; i < HW; i++) {
            out[2 * i] = rows[i];
            out[2 * i + 1] = cols[i];
        }
    }
}

void unpack_fields(const float *packed, int64_t B, int64_t HW, float *planar, int threads) {
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        const float *in = packed + b * 2 * HW;
        float *rows = planar + b * 2 * HW, *cols = rows + HW;
        for (int64_t i = 0; i < HW; i++) {
            rows[i] = in[2 * i];
            cols[i] = in[2 * i + 1];
        }
    }
}

/* ------------------------------------------------------------------ sampling an image */

/* (image[o_j], image[o_j + 1]) for eight offsets, as two 8-lane vectors (lane j: point j). */
static inline void pairs8(const float *image, const int32_t o[LANES], v8 *left, v8 *right) {
    v8 low = join4(join2(load2(image + o[0]), load2(image + o[1])), join2(load2(image + o[2]), load2(image + o[3])));
    v8 high = join4(join2(load2(image + o[4]), load2(image + o[5])), join2(load2(image + o[6]), load2(image + o[7])));
    *left = SHUFFLE8(low, high, 0, 2, 4, 6, 8, 10, 12, 14);
    *right = SHUFFLE8(low, high, 1, 3, 5, 7, 9, 11, 13, 15);
}

/* Cells of eight points in a planar image: offsets i·W + j, weights and slopes. */
static inline Cells locate_pixels(v8 rows, v8 cols, const Axis *ax_row, const Axis *ax_col, int32_t W) {
    Cells c;
    v8i i = locate8(rows, ax_row, &c.wrow, &c.drow), j = locate8(cols, ax_col, &c.wcol, &c.dcol);
    v8i offset = i * W + j;
    memcpy(c.offset, &offset, sizeof offset);
    return c;
}

/* coordinates: [B or 1, 2, N] (coords_batch_stride 0 shares one set among the batch). */
void sample_forward(const float *values, int64_t B, int64_t C, int64_t H, int64_t W,
                    const float *coords, int64_t coords_batch_stride, int64_t N,
                    float *out, int threads) {
    const Axis ax_row = axis_of(H), ax_col = axis_of(W);
    const v8 nan = {NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN};
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        const float *rows = coords + b * coords_batch_stride, *cols = rows + N;
        int64_t n = 0;
        for (; n + LANES <= N; n += LANES) {
            v8 r = load8(rows + n), c = load8(cols + n);
            Cells cell = locate_pixels(r, c, &ax_row, &ax_col, (int32_t)W);
            v8i lost = (r != r) | (c != c); /* NaN in, NaN out, as for any arithmetic */
            v8 wr = cell.wrow, wc = cell.wcol;
            for (int64_t ch = 0; ch < C; ch++) {
                const float *image = values + (b * C + ch) * H * W;
                v8 nw, ne, sw, se;
                pairs8(image, cell.offset, &nw, &ne);
                pairs8(image + W, cell.offset, &sw, &se);
                v8 value = (1.0f - wr) * ((1.0f - wc) * nw + wc * ne) + wr * ((1.0f - wc) * sw + wc * se);
                store8(out + (b * C + ch) * N + n, choose(lost, nan, value));
            }
        }
        for (; n < N; n++) {
            Cell cell = locate(rows[n], cols[n], (int32_t)H, (int32_t)W);
            int lost = isnan(rows[n]) || isnan(cols[n]);
            for (int64_t ch = 0; ch < C; ch++) {
                Corners v = corners(values + (b * C + ch) * H * W, &cell, (int32_t)W);
                out[(b * C + ch) * N + n] = lost ? NAN : interpolate(&v, &cell);
            }
        }
    }
}

/* The points of image b for sample_backward, which passes want_values and want_coords as
 * constants: the compiler then makes a loop for each case, and the one that only needs
 * the coordinates' gradient (the post's world: the moving image is data) no longer
 * carries the scatter's code (1.6× faster here). */
static inline void sample_backward_image(const float *values, int64_t b, int64_t C, int64_t H, int64_t W,
                                         const float *rows, const float *cols, int64_t N,
                                         const Axis *ax_row, const Axis *ax_col, const float *grad_out,
                                         float *grad_values, float *grad_coords, const int want_values,
                                         const int want_coords) {
    int64_t n = 0;
    for (; n + LANES <= N; n += LANES) {
        Cells cell = locate_pixels(load8(rows + n), load8(cols + n), ax_row, ax_col, (int32_t)W);
        v8 wr = cell.wrow, wc = cell.wcol, g_row = {0}, g_col = {0};
        for (int64_t ch = 0; ch < C; ch++) {
            const float *image = values + (b * C + ch) * H * W;
            v8 g = load8(grad_out + (b * C + ch) * N + n);
            if (want_values) { /* scatter(), point by point in ascending order */
                v8 add[4] = {g * (1.0f - wr) * (1.0f - wc), g * (1.0f - wr) * wc,
                             g * wr * (1.0f - wc), g * wr * wc};
                float *target = grad_values + (b * C + ch) * H * W;
                for (int j = 0; j < LANES; j++) {
                    float *q = target + cell.offset[j];
                    q[0] += add[0][j];
                    q[1] += add[1][j];
                    q[W] += add[2][j];
                    q[W + 1] += add[3][j];
                }
            }
            if (want_coords) { /* slopes() */
                v8 nw, ne, sw, se;
                pairs8(image, cell.offset, &nw, &ne);
                pairs8(image + W, cell.offset, &sw, &se);
                v8 d_row = ((1.0f - wc) * (sw - nw) + wc * (se - ne)) * cell.drow;
                v8 d_col = ((1.0f - wr) * (ne - nw) + wr * (se - sw)) * cell.dcol;
                g_row += g * d_row;
                g_col += g * d_col;
            }
        }
        if (want_coords) {
            store8(grad_coords + (b * 2) * N + n, g_row);
            store8(grad_coords + (b * 2 + 1) * N + n, g_col);
        }
    }
    for (; n < N; n++) {
        Cell cell = locate(rows[n], cols[n], (int32_t)H, (int32_t)W);
        float g_row = 0.0f, g_col = 0.0f;
        for (int64_t ch = 0; ch < C; ch++) {
            float g = grad_out[(b * C + ch) * N + n];
            if (want_values) scatter(grad_values + (b * C + ch) * H * W, &cell, W, g);
            if (want_coords) {
                Corners v = corners(values + (b * C + ch) * H * W, &cell, (int32_t)W);
                float d_row, d_col;
                slopes(&v, &cell, &d_row, &d_col);
                g_row += g * d_row;
                g_col += g * d_col;
            }
        }
        if (want_coords) {
            grad_coords[(b * 2) * N + n] = g_row;
            grad_coords[(b * 2 + 1) * N + n] = g_col;
        }
    }
}

/* grad_values [B, C, H, W] (zeroed by the caller; NULL to skip) and grad_coords [B, 2, N]
 * (written, one per image even when the coordinates are shared; NULL to skip). */
void sample_backward(const float *values, int64_t B, int64_t C, int64_t H, int64_t W,
                     const float *coords, int64_t coords_batch_stride, int64_t N,
                     const float *grad_out, float *grad_values, float *grad_coords, int threads) {
    const Axis ax_row = axis_of(H), ax_col = axis_of(W);
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        const float *rows = coords + b * coords_batch_stride, *cols = rows + N;
        if (grad_values && grad_coords)
            sample_backward_image(values, b, C, H, W, rows, cols, N, &ax_row, &ax_col, grad_out, grad_values, grad_coords, 1, 1);
        else if (grad_values)
            sample_backward_image(values, b, C, H, W, rows, cols, N, &ax_row, &ax_col, grad_out, grad_values, NULL, 1, 0);
        else if (grad_coords)
            sample_backward_image(values, b, C, H, W, rows, cols, N, &ax_row, &ax_col, grad_out, NULL, grad_coords, 0, 1);
    }
}
