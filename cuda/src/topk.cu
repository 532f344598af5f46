// Per-pixel top-K contributors (mirrors reference rasterize_topk): the forward's front-to-back
// pair walk, keeping the k used voxels of largest weight w = T * alpha. Each thread owns its
// pixel's column of the outputs ([k, ...], so that a warp's accesses are coalesced) and keeps
// it sorted by insertion: a voxel enters only with a weight strictly above the k-th, and lands
// behind equal weights, which belong to voxels in front of it.
#include "render_common.cuh"

namespace svr {
namespace {

template <int N>
__global__ void __launch_bounds__(BLOCK_THREADS)
render_topk_kernel(Camera cam, PixelSet pixels, int k, RenderBuffers in, int64_t* ids, float* weights) {
    PixelTask task;
    if (!locate_pixel(cam, pixels, in.ranges, task)) return;
    const int2 range = in.ranges[task.tile];
    if (range.y <= range.x) return;  // no entries: the padding the outputs hold already
    const Ray ray = pixel_ray(cam, task.px, task.py);
    int64_t* my_ids = ids + task.index;
    float* my_weights = weights + task.index;
    const int stride = task.stride;

    float T = 1.f;
    float kth = 0.f;  // the k-th largest weight kept so far (the padding's 0 until k are kept)
    bool done = !task.active;
    walk_pairs<false, N, false, false>(in, range, task, pixels.sparse(), ray, done, 0, nullptr,
                                       [&](const PairStage&, const PairVisit& v) {
        const float alpha = v.result.alpha;
        if (done || alpha < MIN_ALPHA) return;
        const float w = T * alpha;
        if (w > kth) {  // never true for NaN: a NaN weight is not listed
            int pos = k - 1;
            for (; pos > 0 && my_weights[(pos - 1) * stride] < w; --pos) {
                my_weights[pos * stride] = my_weights[(pos - 1) * stride];
                my_ids[pos * stride] = my_ids[(pos - 1) * stride];
            }
            my_weights[pos * stride] = w;
            my_ids[pos * stride] = int64_t(v.entry & VOXEL_ID_MASK);
            kth = my_weights[(k - 1) * stride];
        }
        T *= 1.f - alpha;
        done = T < EARLY_STOP_T;
    }, NoFinish{});
}

}  // namespace

void render_topk(const Camera& cam, const PixelSet& pixels, int n_samp, int k, const RenderBuffers& in, int64_t* ids,
                 float* weights, cudaStream_t stream) {
    if (nothing_to_render(pixels)) return;
    // Top-K has no output variants: only the quadrature points are a template parameter.
    dispatch_variant<0>(n_samp, 0u, [&](auto n, auto) {
        render_topk_kernel<decltype(n)::value>
            <<<render_grid(cam, pixels), BLOCK_THREADS, 0, stream>>>(cam, pixels, k, in, ids, weights);
    });
}

}  // namespace svr
