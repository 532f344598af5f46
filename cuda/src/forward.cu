// Stage 5, renderCUDA forward (mirrors reference/forward.py): one thread per pixel, one block
// per tile (four for the longest lists; or warps of requested pixels of one tile). Each warp
// walks its tile's list (see render_common.cuh); each thread composites the voxels of its own
// ray octant front to back and stops early; a warp whose pixels are all saturated stops walking.
#include "render_common.cuh"

namespace svr {
namespace {

// At most 64 registers (1024 resident threads per multiprocessor): enough warps to hide the
// latency of the record loads.
constexpr int FORWARD_MIN_BLOCKS = 1024 / BLOCK_THREADS;

template <int N, unsigned VARIANT>
__global__ void __launch_bounds__(BLOCK_THREADS, FORWARD_MIN_BLOCKS)
render_forward_kernel(Camera cam, PixelSet pixels, ForwardOptions opt, RenderBuffers in, ForwardOutputs out) {
    constexpr bool DEPTH = VARIANT & WITH_DEPTH, NORMAL = VARIANT & WITH_NORMAL;
    constexpr bool DISTORTION = VARIANT & WITH_DISTORTION, MAX_W = VARIANT & WITH_MAX_W;
    PixelTask task;
    if (!locate_pixel(cam, pixels, in.ranges, task)) return;
    const int px = task.px, py = task.py;
    const Ray ray = pixel_ray(cam, px, py);
    const int2 range = in.ranges[task.tile];

    float T = 1.f, color[3] = {0.f, 0.f, 0.f}, normal[3] = {0.f, 0.f, 0.f};
    float depth_sum = 0.f, wm_sum = 0.f;
    int last = range.x;
    // The median voxel: the last used one whose incoming T > 0.5 (evaluated after the loop).
    int median_voxel = -1;
    float median_a = 0.f, median_b = 0.f, median_T = 0.f;
    bool done = !task.active;

    // Each pair this pixel meets, front to back: composited unless the pixel is done.
    auto composite = [&](const PairStage& stage, const PairVisit& v) {
        float w = 0.f;
        const float alpha = v.result.alpha;
        if (!done && !(alpha < MIN_ALPHA)) {  // NaN is kept: it reaches the pixel
            w = T * alpha;
            const float3 rgb = staged_rgb(stage, v.slot);
            color[0] += w * rgb.x; color[1] += w * rgb.y; color[2] += w * rgb.z;
            if (DEPTH) {
                depth_sum += T * v.result.depth;
                if (T > 0.5f) {
                    median_voxel = int(v.entry & VOXEL_ID_MASK);
                    median_a = v.result.a; median_b = v.result.b; median_T = T;
                }
            }
            if (DISTORTION) wm_sum += w * 0.5f * (contract(v.result.a) + contract(v.result.b));
            if (NORMAL) {
                float geo[8];
                staged_geo(stage, v.slot, geo);
                const float3 g = corner_gradient(geo);
                const float inv = rsqrtf(g.x * g.x + g.y * g.y + g.z * g.z + NORMAL_EPS);
                normal[0] += w * g.x * inv; normal[1] += w * g.y * inv; normal[2] += w * g.z * inv;
            }
            T *= 1.f - alpha;
            done = T < EARLY_STOP_T;
            last = v.index + 1;
        }
        if (MAX_W && w > 0.f)  // the bits of non-negative floats order as the floats
            atomicMax(reinterpret_cast<unsigned int*>(out.max_w) + (v.entry & VOXEL_ID_MASK), __float_as_uint(w));
    };
    // A tile without entries shows the background: no walk (its staging and warp votes).
    if (range.x < range.y)
        walk_pairs<false, N, DEPTH, true>(in, range, task, pixels.sparse(), ray, done, 0, nullptr, composite,
                                          NoFinish{});
    if (!task.active) return;

    const int hw = task.stride, pix = task.index;
#pragma unroll
    for (int c = 0; c < 3; ++c) out.color[c * hw + pix] = color[c] + T * opt.bg;
    out.T[pix] = T;
    if (out.last) out.last[pix] = last;
    if (DEPTH) {
        out.depth[pix] = depth_sum / ray.cam_norm;
        out.depth[hw + pix] = DISTORTION ? wm_sum : 0.f;
        float median = 0.f;
        if (median_voxel >= 0) {
            VoxelGeometry rec;
            load_geometry(in, uint32_t(median_voxel), rec);
            const float step = (median_b - median_a) * (1.f / MEDIAN_SUBSTEPS);
            float running = median_T, t = median_a;
            for (int s = 0; s < MEDIAN_SUBSTEPS; ++s) {
                t = median_a + (s + 0.5f) * step;
                const float d = trilinear(rec.geo, local_coords(ray, t, rec.box_min, rec.inv_length));
                running *= expf(-STEP_SZ_SCALE * step * density_activation(d));
                if (running <= 0.5f) break;
            }
            median = t / ray.cam_norm;
        }
        out.depth[2 * hw + pix] = median;
    }
    if (NORMAL)
#pragma unroll
        for (int c = 0; c < 3; ++c) out.normal[c * hw + pix] = normal[c];
    if (DISTORTION) out.aux[pix] = wm_sum;
}

}  // namespace

void render_forward(const Camera& cam, const PixelSet& pixels, const ForwardOptions& opt, const RenderBuffers& in,
                    const ForwardOutputs& out, cudaStream_t stream) {
    if (nothing_to_render(pixels)) return;
    const unsigned variant = (opt.need_depth ? WITH_DEPTH : 0u) | (opt.need_normal ? WITH_NORMAL : 0u) |
                             (opt.need_distortion ? WITH_DISTORTION : 0u) | (opt.track_max_w ? WITH_MAX_W : 0u);
    dispatch_variant<4>(opt.n_samp, variant, [&](auto n, auto v) {
        render_forward_kernel<decltype(n)::value, decltype(v)::value>
            <<<render_grid(cam, pixels), BLOCK_THREADS, 0, stream>>>(cam, pixels, opt, in, out);
    });
}

}  // namespace svr
