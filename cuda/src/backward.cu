// Backward of renderCUDA (mirrors reference/backward.py). Each thread walks its pixel's list
// back to front, from the last entry the forward used, skipping exactly what the forward
// skipped. The transmittance in front of voxel i is recovered as T_i = T_{i+1} / (1 - a_i),
// and the parts of the outputs behind it are accumulated as sums of small terms (no
// cancellation), which gives
//   dL/dalpha_i = T_i (g . x_i) - g . (X behind i) / (1 - alpha_i)
// for X = colour (with the background), normal, mean depth, T and the distortion loss.
// As in the forward, each warp walks the tile's list on its own, back to front here (from the
// last entry any of its pixels used), by (voxel, pixel) pairs (walk_pairs): phase A evaluates
// the pairs one per lane; phase B, per pixel in order, recovers T and dL/dalpha; phase C, one
// pair per lane again, turns them into the voxel's gradients, summed over the lanes holding
// the same voxel before one atomic per value.
#include "render_common.cuh"

namespace svr {
namespace {

// 1024 resident threads per multiprocessor (at most 64 registers, a few spilled to L1):
// measured (16x16 tiles) faster than 768 without spills where the lists are long (R scenes:
// fwd+bwd -3%), up to 2% slower on O 6M.
constexpr int BACKWARD_MIN_BLOCKS = 1024 / BLOCK_THREADS;

// A voxel's eight corner gradients (32-byte aligned: geos is [N, 8] float32). Hopper adds a
// float4 with one atomic: two per voxel instead of eight.
__device__ __forceinline__ void add_geo_gradient(float* dst, const float d_geo[8]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    float4* dst4 = reinterpret_cast<float4*>(dst);
    atomicAdd(dst4, make_float4(d_geo[0], d_geo[1], d_geo[2], d_geo[3]));
    atomicAdd(dst4 + 1, make_float4(d_geo[4], d_geo[5], d_geo[6], d_geo[7]));
#else
#pragma unroll
    for (int c = 0; c < 8; ++c) atomicAdd(dst + c, d_geo[c]);
#endif
}

template <int N, unsigned VARIANT>
__global__ void __launch_bounds__(BLOCK_THREADS, BACKWARD_MIN_BLOCKS)
render_backward_kernel(Camera cam, PixelSet pixels, BackwardOptions opt, RenderBuffers in, BackwardInputs g,
                       BackwardOutputs out) {
    constexpr bool DEPTH = VARIANT & WITH_DEPTH, NORMAL = VARIANT & WITH_NORMAL, DISTORTION = VARIANT & WITH_DISTORTION;
    PixelTask task;
    if (!locate_pixel(cam, pixels, in.ranges, task)) return;
    const int2 range = in.ranges[task.tile];
    // A tile without entries takes no gradient: its warps leave before loading their pixels'
    // incoming gradients (an opaque scene's background tiles have none).
    if (range.y <= range.x) return;
    const int pix = task.index;
    const Ray ray = pixel_ray(cam, task.px, task.py);
    // The regularisers are normalised by the image's size, also for requested pixels.
    const float inv_hw = 1.f / (float(cam.width) * float(cam.height));
    const int last = task.active ? g.last[pix] : range.x;
    const int lane = int(threadIdx.x & 31);

    // Incoming gradients and what the backward needs of the forward's outputs.
    float g_color[3], g_normal[3] = {0.f, 0.f, 0.f}, gt[3] = {0.f, 0.f, 0.f};
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        g_color[c] = g.dL_dcolor.at(c, task.row, task.col);
        if (NORMAL) g_normal[c] = g.dL_dnormal.at(c, task.row, task.col);
        if (opt.lambda_R_concen > 0.f) gt[c] = g.gt_color.at(c, task.row, task.col);
    }
    const float T_final = g.T[pix];
    const float g_T = g.dL_dT.at(0, task.row, task.col);
    const float g_depth = DEPTH ? g.dL_ddepth.at(0, task.row, task.col) / ray.cam_norm : 0.f;  // the output is divided by |d_cam|
    const float dist_scale = opt.lambda_dist * inv_hw;
    const float wm_total = DISTORTION ? g.aux[pix] : 0.f;
    // Behind the current voxel: colour (the background included), normal, depth, distortion.
    float behind_color[3] = {T_final * opt.bg, T_final * opt.bg, T_final * opt.bg};
    float behind_normal[3] = {0.f, 0.f, 0.f};
    float behind_depth = 0.f, behind_wm = 0.f, behind_gw = 0.f;
    float T_after = T_final;
    const bool unused = false;
    // Phase B's hand-off to phase C, per pair slot: the transmittance in front of the voxel and
    // dL/dalpha; T < 0 when the voxel does not contribute (faint, or the ray misses it).
    __shared__ float2 pair_grads[BLOCK_THREADS];
    // One point: each pair's raw density and integral from phase A, which phase C resumes.
    __shared__ float2 kept[N == 1 ? BLOCK_THREADS : 1];

    // Phase B, per pixel back to front: the transmittance and dL/dalpha of each voxel it used.
    auto accumulate = [&](const PairStage& stage, const PairVisit& v) {
        const float alpha = v.result.alpha;
        if (alpha < MIN_ALPHA) {  // faint or missed, as the forward skipped it (NaN is kept)
            pair_grads[v.pair_slot] = make_float2(-1.f, 0.f);
            return;
        }
        const float inv_rest = 1.f / (1.f - alpha);
        const float T = T_after * inv_rest;
        const float w = T * alpha;
        float dL_dalpha = -g_T * T_final * inv_rest;
        const float3 rgb3 = staged_rgb(stage, v.slot);
        const float rgb[3] = {rgb3.x, rgb3.y, rgb3.z};
#pragma unroll
        for (int c = 0; c < 3; ++c) {
            dL_dalpha += g_color[c] * (T * rgb[c] - behind_color[c] * inv_rest);
            behind_color[c] += w * rgb[c];
        }
        if (NORMAL) {
            float geo[8];
            staged_geo(stage, v.slot, geo);
            const float3 grad_dir = corner_gradient(geo);
            const float inv_norm =
                rsqrtf(grad_dir.x * grad_dir.x + grad_dir.y * grad_dir.y + grad_dir.z * grad_dir.z + NORMAL_EPS);
            const float nv[3] = {grad_dir.x * inv_norm, grad_dir.y * inv_norm, grad_dir.z * inv_norm};
#pragma unroll
            for (int c = 0; c < 3; ++c) {
                dL_dalpha += g_normal[c] * (T * nv[c] - behind_normal[c] * inv_rest);
                behind_normal[c] += w * nv[c];
            }
        }
        if (DEPTH) {
            dL_dalpha -= g_depth * behind_depth * inv_rest;
            behind_depth += T * v.result.depth;
        }
        if (DISTORTION) {
            const float ca = contract(v.result.a), cb = contract(v.result.b), m = 0.5f * (ca + cb);
            // dL/dw_i = 2 sum_j w_j |m_i - m_j| + (2/3) w_i s_i; in front of i the weights sum
            // to 1 - T_i, behind it to T_{i+1} - T_final.
            const float w_front = 1.f - T, w_behind = T_after - T_final;
            const float wm_front = wm_total - behind_wm - w * m;
            const float g_w = dist_scale * (2.f * (m * w_front - wm_front + behind_wm - m * w_behind) +
                                            (2.f / 3.f) * w * (cb - ca));
            dL_dalpha += T * g_w - behind_gw * inv_rest;
            behind_gw += g_w * w;
            behind_wm += w * m;
        }
        T_after = T;
        pair_grads[v.pair_slot] = make_float2(T, dL_dalpha);
    };

    // Phase C, one pair per lane: the voxel's gradients from this pixel, summed over the lanes
    // holding the same voxel, one atomic per value and voxel.
    auto scatter = [&](const PairStage& stage, const PairRound& round) {
        float d_geo[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, d_rgb[3] = {0.f, 0.f, 0.f}, priority = 0.f;
        // The pixel's incoming gradients, from the lane that holds it.
        float pix_color[3], pix_normal[3], pix_gt[3];
#pragma unroll
        for (int c = 0; c < 3; ++c) {
            pix_color[c] = __shfl_sync(FULL_MASK, g_color[c], round.ray_slot & 31);
            pix_normal[c] = NORMAL ? __shfl_sync(FULL_MASK, g_normal[c], round.ray_slot & 31) : 0.f;
            pix_gt[c] = opt.lambda_R_concen > 0.f ? __shfl_sync(FULL_MASK, gt[c], round.ray_slot & 31) : 0.f;
        }
        const float pix_depth = DEPTH ? __shfl_sync(FULL_MASK, g_depth, round.ray_slot & 31) : 0.f;
        const float2 handed = pair_grads[threadIdx.x];
        const bool contributes = round.valid && !(handed.x < 0.f);  // NaN reaches the gradients, as in the forward
        if (contributes) {
            // Phase A's quadrature again, on the segment this lane found there (the pair met the
            // voxel: its result is still staged); one point: resumed from what phase A kept.
            const Ray r = staged_ray(stage, ray.origin, round.ray_slot);
            const float3 box_min = staged_box_min(stage, round.slot);
            const float inv_len = staged_inv_length(stage, round.slot);
            float geo[8];
            staged_geo(stage, round.slot, geo);
            const float a = stage.result[threadIdx.x].a, b = stage.result[threadIdx.x].b;
            Quadrature<N> quad;
            if constexpr (N == 1) {
                const float2 k = kept[threadIdx.x];
                quad.resume(r, a, b, box_min, inv_len, k.x, k.y);
            } else {
                quad.evaluate(r, a, b, box_min, inv_len, geo);
            }
            const float alpha = quad.alpha, T = handed.x, w = T * alpha, dL_dalpha = handed.y;
            const float3 rgb3 = staged_rgb(stage, round.slot);
            const float rgb[3] = {rgb3.x, rgb3.y, rgb3.z};
#pragma unroll
            for (int c = 0; c < 3; ++c) {
                d_rgb[c] = pix_color[c] * w;
                if (opt.lambda_R_concen > 0.f)
                    d_rgb[c] += opt.lambda_R_concen * inv_hw * w * 2.f * (rgb[c] - pix_gt[c]);
            }
            priority = fabsf(dL_dalpha * alpha);

            // Into the densities: alpha is straight-through (dalpha/dI = exp(-I)); the voxel's
            // own depth value differentiates its clamped alphas (1 - alpha).
            const float dL_dI = dL_dalpha * expf(-quad.integral);
            float dL_dIk[N];
            if (N == 1) {
                dL_dIk[0] = dL_dI + (DEPTH ? pix_depth * T * (1.f - alpha) * 0.5f * (a + b) : 0.f);
            } else {
                float ak[N], trans[N], tail = 0.f, tr = 1.f;
#pragma unroll
                for (int k = 0; k < N; ++k) {
                    ak[k] = clamp_alpha(1.f - expf(-quad.integral_k[k]));
                    trans[k] = tr;
                    tr *= 1.f - ak[k];
                }
#pragma unroll
                for (int k = N - 1; k >= 0; --k) {
                    // d depth_value / d I_k = P_k t_k (1 - a_k) - sum_{m>k} P_m a_m t_m
                    const float own = trans[k] * quad.t[k] * (1.f - ak[k]) - tail;
                    tail += trans[k] * ak[k] * quad.t[k];
                    dL_dIk[k] = dL_dI + (DEPTH ? pix_depth * T * own : 0.f);
                }
            }
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float dL_dd = dL_dIk[k] * STEP_SZ_SCALE * quad.delta * density_activation_grad(quad.d[k]);
                float wk[8];
                trilinear_weights(quad.u[k], wk);
#pragma unroll
                for (int c = 0; c < 8; ++c) d_geo[c] += dL_dd * wk[c];
            }
            if (NORMAL) {
                // n = g / s, s = sqrt(|g|^2 + eps): dL/dg = v / s - g (g.v) / s^3, v = w * dL/dnormal.
                const float3 grad_dir = corner_gradient(geo);
                const float inv_norm =
                    rsqrtf(grad_dir.x * grad_dir.x + grad_dir.y * grad_dir.y + grad_dir.z * grad_dir.z + NORMAL_EPS);
                const float3 v = make_float3(w * pix_normal[0], w * pix_normal[1], w * pix_normal[2]);
                const float gv = grad_dir.x * v.x + grad_dir.y * v.y + grad_dir.z * v.z;
                const float inv3 = inv_norm * inv_norm * inv_norm;
                const float3 dg = make_float3(v.x * inv_norm - grad_dir.x * gv * inv3,
                                              v.y * inv_norm - grad_dir.y * gv * inv3,
                                              v.z * inv_norm - grad_dir.z * gv * inv3);
#pragma unroll
                for (int c = 0; c < 8; ++c)
                    d_geo[c] += ((c & 4) ? dg.x : -dg.x) + ((c & 2) ? dg.y : -dg.y) + ((c & 1) ? dg.z : -dg.z);
            }
            if (opt.lambda_ascending > 0.f) {
                const float3 ua = local_coords(r, a, box_min, inv_len);
                const float3 ub = local_coords(r, b, box_min, inv_len);
                if (trilinear(geo, ua) > trilinear(geo, ub)) {
                    float wa[8], wb[8];
                    trilinear_weights(ua, wa);
                    trilinear_weights(ub, wb);
                    const float s = opt.lambda_ascending * inv_hw * w;
#pragma unroll
                    for (int c = 0; c < 8; ++c) d_geo[c] += s * (wa[c] - wb[c]);
                }
            }
        }
        const uint32_t contributing = __ballot_sync(FULL_MASK, contributes);
        if (!contributing) return;
        // Lanes holding the same voxel are adjacent: a segmented sum towards the first of them.
        const int prev = __shfl_up_sync(FULL_MASK, round.candidate, 1);
        const bool head = lane == 0 || prev != round.candidate;
        float n_contributing = contributes ? 1.f : 0.f;
        // The sum needs as many steps as the longest run takes: a voxel meets few of the
        // warp's 32 pixels, so most rounds stop after one or two of the five.
        const uint32_t heads = __ballot_sync(FULL_MASK, head);
        const uint32_t heads_after = heads & ~((2u << lane) - 1u);
        const int run = head ? (heads_after ? __ffs(heads_after) - 1 : 32) - lane : 0;
        const int longest_run = __reduce_max_sync(FULL_MASK, unsigned(run));
        if (longest_run > 1) {
            for (int d = 1; d < longest_run; d <<= 1) {
                const bool same = __shfl_down_sync(FULL_MASK, round.candidate, d) == round.candidate && lane + d < 32;
#pragma unroll
                for (int c = 0; c < 8; ++c) {
                    const float o = __shfl_down_sync(FULL_MASK, d_geo[c], d);
                    if (same) d_geo[c] += o;
                }
#pragma unroll
                for (int c = 0; c < 3; ++c) {
                    const float o = __shfl_down_sync(FULL_MASK, d_rgb[c], d);
                    if (same) d_rgb[c] += o;
                }
                const float op = __shfl_down_sync(FULL_MASK, priority, d);
                const float on = __shfl_down_sync(FULL_MASK, n_contributing, d);
                if (same) {
                    priority += op;
                    n_contributing += on;
                }
            }
        }
        if (head && n_contributing > 0.f) {
            const uint32_t v = round.entry & VOXEL_ID_MASK;
            add_geo_gradient(out.dL_dgeos + 8 * size_t(v), d_geo);
#pragma unroll
            for (int c = 0; c < 3; ++c) atomicAdd(out.dL_drgbs + 3 * size_t(v) + c, d_rgb[c]);
            atomicAdd(out.priority + v, priority);
        }
    };
    walk_pairs<true, N, DEPTH, true>(in, range, task, pixels.sparse(), ray, unused, last, N == 1 ? kept : nullptr,
                                     accumulate, scatter);
}

}  // namespace

void render_backward(const Camera& cam, const PixelSet& pixels, const BackwardOptions& opt, const RenderBuffers& in,
                     const BackwardInputs& grads, const BackwardOutputs& out, cudaStream_t stream) {
    if (nothing_to_render(pixels)) return;
    const unsigned variant = (opt.need_depth ? WITH_DEPTH : 0u) | (opt.need_normal ? WITH_NORMAL : 0u) |
                             (opt.lambda_dist > 0.f ? WITH_DISTORTION : 0u);
    dispatch_variant<3>(opt.n_samp, variant, [&](auto n, auto v) {
        render_backward_kernel<decltype(n)::value, decltype(v)::value>
            <<<render_grid(cam, pixels), BLOCK_THREADS, 0, stream>>>(cam, pixels, opt, in, grads, out);
    });
}

}  // namespace svr
