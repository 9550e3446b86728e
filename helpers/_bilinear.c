/* Bilinear sampling with a hand-written backward pass: the compiled kernel behind
 * helpers/sampler.py. It computes what torch.nn.functional.grid_sample computes with
 * mode="bilinear", padding_mode="border", align_corners=True, on float32 images
 * [B, C, H, W] and coordinates [B, 2, N] (row, column in [0, 1]; N points per image).
 *
 * Two operations, each with its backward pass:
 *   sample: out[b, c, n] = values[b, c](p[b, n])
 *   chain:  p ← p + D_k(p) for k = 0 .. K-1, one displacement field D_k [B, 2, H, W] after
 *           another, in one pass over the points (the composition φ_K-1 ∘ … ∘ φ_0 of
 *           φ_k(x) = x + D_k(x), evaluated without materialising intermediate grids).
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

/* coordinates: [B or 1, 2, N] (coords_batch_stride 0 shares one set among the batch). */
void sample_forward(const float *values, int64_t B, int64_t C, int64_t H, int64_t W,
                    const float *coords, int64_t coords_batch_stride, int64_t N,
                    float *out, int threads) {
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        const float *rows = coords + b * coords_batch_stride, *cols = rows + N;
        for (int64_t n = 0; n < N; n++) {
            Cell cell = locate(rows[n], cols[n], H, W);
            int lost = isnan(rows[n]) || isnan(cols[n]); /* NaN in, NaN out, as for any arithmetic */
            for (int64_t c = 0; c < C; c++) {
                Corners v = corners(values + (b * C + c) * H * W, &cell, W);
                out[(b * C + c) * N + n] = lost ? NAN : interpolate(&v, &cell);
            }
        }
    }
}

/* grad_values [B, C, H, W] (zeroed by the caller; NULL to skip) and grad_coords [B, 2, N]
 * (written, one per image even when the coordinates are shared; NULL to skip). */
void sample_backward(const float *values, int64_t B, int64_t C, int64_t H, int64_t W,
                     const float *coords, int64_t coords_batch_stride, int64_t N,
                     const float *grad_out, float *grad_values, float *grad_coords, int threads) {
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        const float *rows = coords + b * coords_batch_stride, *cols = rows + N;
        for (int64_t n = 0; n < N; n++) {
            Cell cell = locate(rows[n], cols[n], H, W);
            float g_row = 0.0f, g_col = 0.0f;
            for (int64_t c = 0; c < C; c++) {
                float g = grad_out[(b * C + c) * N + n];
                if (grad_values) scatter(grad_values + (b * C + c) * H * W, &cell, W, g);
                if (grad_coords) {
                    Corners v = corners(values + (b * C + c) * H * W, &cell, W);
                    float d_row, d_col;
                    slopes(&v, &cell, &d_row, &d_col);
                    g_row += g * d_row;
                    g_col += g * d_col;
                }
            }
            if (grad_coords) {
                grad_coords[(b * 2) * N + n] = g_row;
                grad_coords[(b * 2 + 1) * N + n] = g_col;
            }
        }
    }
}

/* One field evaluated at the N points of one image: p ← p + D(p) (rows, cols updated in
 * place). The points are independent, so the processor overlaps their memory accesses. */
static inline void step_points(const float *restrict field, int32_t H, int32_t W,
                               float *restrict rows, float *restrict cols, int64_t N) {
    for (int64_t n = 0; n < N; n++) {
        Cell cell = locate(rows[n], cols[n], H, W);
        Corners d_row = corners(field, &cell, W), d_col = corners(field + H * W, &cell, W);
        rows[n] += interpolate(&d_row, &cell);
        cols[n] += interpolate(&d_col, &cell);
    }
}

/* fields: K pointers to displacement fields [B, 2, H, W], in the order they are applied.
 * The points move through the fields one field at a time (all N points per field).
 * visited [B, K, 2, N] receives where each field was evaluated (for the backward pass).
 * on_grid != 0 promises that the coordinates are the pixel grid itself (N = H·W), where
 * the first field needs no interpolation: D(x) is D's value at that pixel. */
void chain_forward(const float *const *fields, int64_t K, int64_t B, int64_t H, int64_t W,
                   const float *coords, int64_t coords_batch_stride, int64_t N, int on_grid,
                   float *out, float *visited, int threads) {
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        float *rows = out + b * 2 * N, *cols = rows + N;
        memcpy(rows, coords + b * coords_batch_stride, 2 * N * sizeof(float));
        for (int64_t k = 0; k < K; k++) {
            const float *field = fields[k] + b * 2 * H * W;
            memcpy(visited + (b * K + k) * 2 * N, rows, 2 * N * sizeof(float));
            if (k == 0 && on_grid) {
                for (int64_t n = 0; n < 2 * N; n++) rows[n] += field[n];
            } else {
                step_points(field, H, W, rows, cols, N);
            }
        }
    }
}

/* grad_out [B, 2, N] is overwritten: it becomes the gradient with respect to the coordinates
 * (unless on_grid, where the coordinates are the fixed pixel grid and it is left unfinished).
 * grad_fields: K pointers to [B, 2, H, W] buffers, overwritten with the fields' gradients. */
void chain_backward(const float *const *fields, int64_t K, int64_t B, int64_t H, int64_t W,
                    const float *visited, int64_t N, int on_grid, float *grad_out,
                    float *const *grad_fields, int threads) {
    int64_t b;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (b = 0; b < B; b++) {
        float *g_rows = grad_out + b * 2 * N, *g_cols = g_rows + N;
        /* Walk back through the fields: p_out = p + D(p) gives dL/dp = g + J_D(p)^T g. */
        for (int64_t k = K - 1; k >= 0; k--) {
            const float *field = fields[k] + b * 2 * H * W;
            float *grad_field = grad_fields[k] + b * 2 * H * W;
            const float *rows = visited + (b * K + k) * 2 * N, *cols = rows + N;
            memset(grad_field, 0, 2 * H * W * sizeof(float));
            if (k == 0 && on_grid) {
                for (int64_t n = 0; n < 2 * N; n++) grad_field[n] += g_rows[n];
                continue;
            }
            for (int64_t n = 0; n < N; n++) {
                Cell cell = locate(rows[n], cols[n], H, W);
                float g_row = g_rows[n], g_col = g_cols[n];
                scatter(grad_field, &cell, W, g_row);
                scatter(grad_field + H * W, &cell, W, g_col);
                Corners d_row = corners(field, &cell, W), d_col = corners(field + H * W, &cell, W);
                float drow_drow, drow_dcol, dcol_drow, dcol_dcol;
                slopes(&d_row, &cell, &drow_drow, &drow_dcol);
                slopes(&d_col, &cell, &dcol_drow, &dcol_dcol);
                g_rows[n] = g_row + g_row * drow_drow + g_col * dcol_drow;
                g_cols[n] = g_col + g_row * drow_dcol + g_col * dcol_dcol;
            }
        }
    }
}
