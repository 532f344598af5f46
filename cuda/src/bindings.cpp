// The `_C` extension: PyTorch tensors in, the stages of rasterizer.h on the current stream,
// tensors out. Inputs are checked here again (the Python layer checks first), so that no
// CPU tensor, wrong dtype or wrong size ever reaches a kernel.
#include <ATen/core/CachingHostAllocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <tuple>
#include <type_traits>
#include <atomic>
#include <memory>
#include <unordered_map>
#include <utility>
#include <optional>
#include <vector>

#include "rasterizer.h"

namespace {

using torch::Tensor;

// Error messages are built from strings alone, never through iostreams: where the libstdc++
// the process loads is older than the compiler's headers, streaming a number from this
// module's inline code crashed the process (seen on the device: c10::str(int)).
void append(std::string& s, const char* x) { s += x; }
void append(std::string& s, const std::string& x) { s += x; }
void append(std::string& s, const c10::Device& d) { s += d.str(); }
void append(std::string& s, at::ScalarType t) { s += c10::toString(t); }
void append(std::string& s, c10::IntArrayRef v) {
    s += "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    s += "]";
}
template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
void append(std::string& s, T x) { s += std::to_string(x); }

template <typename... Args>
std::string text(const Args&... args) {
    std::string s;
    (append(s, args), ...);
    return s;
}

// A CUDA tensor on `like`'s device, of `dtype`, contiguous (unless `contiguous` is false), with
// `shape` (-1: any size).
void check_tensor(const Tensor& t, const char* name, at::ScalarType dtype, std::vector<int64_t> shape,
                  const Tensor& like, bool contiguous = true) {
    TORCH_CHECK_VALUE(t.is_cuda(), text(name, ": expected a CUDA tensor, got one on ", t.device()));
    TORCH_CHECK_VALUE(t.device() == like.device(),
                      text(name, ": expected a tensor on ", like.device(), ", got ", t.device()));
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, text(name, ": expected dtype ", dtype, ", got ", t.scalar_type()));
    TORCH_CHECK_VALUE(!contiguous || t.is_contiguous(), text(name, ": expected a contiguous tensor"));
    bool ok = t.dim() == int64_t(shape.size());
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || shape[i] == t.size(int64_t(i));
    TORCH_CHECK_VALUE(ok, text(name, ": expected shape ", c10::IntArrayRef(shape), " (-1: any), got ", t.sizes()));
}

// camera = [W, H, tanfovx, tanfovy, cx, cy, near, w2c (12 values), c2w (12 values)], or its
// first seven numbers alone (`scalars_only`: the matrices are zero, loaded later from the device)
svr::Camera make_camera(const std::vector<double>& camera, bool scalars_only = false) {
    const size_t expected = scalars_only ? 7 : 31;
    TORCH_CHECK_VALUE(camera.size() == expected, text("camera: expected ", expected, " numbers, got ", camera.size()));
    svr::Camera cam;
    cam.width = int(camera[0]);
    cam.height = int(camera[1]);
    TORCH_CHECK_VALUE(cam.width > 0 && cam.height > 0 && cam.width <= MAX_IMAGE_SIZE && cam.height <= MAX_IMAGE_SIZE,
                      text("image_width/image_height: expected 1..", MAX_IMAGE_SIZE, ", got ", cam.width, " x ",
                           cam.height));
    cam.tanfovx = float(camera[2]);
    cam.tanfovy = float(camera[3]);
    cam.cx = float(camera[4]);
    cam.cy = float(camera[5]);
    cam.near = float(camera[6]);
    for (int i = 0; i < 12; ++i) {
        cam.w2c[i] = scalars_only ? 0.f : float(camera[7 + i]);
        cam.c2w[i] = scalars_only ? 0.f : float(camera[19 + i]);
    }
    return cam;
}

template <typename T>
T* ptr(const Tensor& t) { return t.numel() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr; }

using ULL = unsigned long long;

// A temporary device buffer from PyTorch's caching allocator, on the current device and
// stream, without a tensor around it: the dispatcher and TensorImpl of a torch::empty cost the
// host more than the allocator's call, and a frame's GPU waits on the host's calls after its
// read (the binning's own buffers are FrameBuffers', below, for the same reason). Like a
// tensor's memory, it returns to the allocator's pool when released (reset or destroyed),
// reused in stream order.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t bytes)
        : data_(bytes ? c10::cuda::CUDACachingAllocator::get()->allocate(bytes) : c10::DataPtr()), bytes_(bytes),
          allocated_(true) {}
    template <typename T>
    T* get() const { return static_cast<T*>(data_.get()); }
    size_t bytes() const { return bytes_; }
    bool allocated() const { return allocated_; }
    void reset() { *this = DeviceBuffer(); }

private:
    c10::DataPtr data_;
    size_t bytes_ = 0;
    bool allocated_ = false;
};

// A DeviceBuffer of n elements of T.
template <typename T>
DeviceBuffer buffer_of(int64_t n) { return DeviceBuffer(sizeof(T) * size_t(n)); }

// Memory of `bytes` from PyTorch's caching allocator on the current device, as a tensor's storage.
c10::Storage device_storage(size_t bytes) {
    c10::Allocator* allocator = c10::cuda::CUDACachingAllocator::get();
    return c10::Storage(c10::Storage::use_byte_size_t(), bytes, allocator->allocate(bytes), allocator, false);
}

// A contiguous tensor of `sizes` over `storage` (on a CUDA device), from element `offset` on.
// Made without the dispatcher: a torch::empty's dispatch and checks cost the host more than the
// allocator's call, and the frame's outputs are made while its GPU waits on the host.
Tensor tensor_over(const c10::Storage& storage, at::ScalarType dtype, c10::IntArrayRef sizes, int64_t offset = 0) {
    Tensor t = at::detail::make_tensor<c10::TensorImpl>(c10::Storage(storage), c10::DispatchKeySet(c10::DispatchKey::CUDA),
                                                        caffe2::TypeMeta::fromScalarType(dtype));
    t.unsafeGetTensorImpl()->set_sizes_contiguous(sizes);
    t.unsafeGetTensorImpl()->set_storage_offset(offset);
    TORCH_INTERNAL_ASSERT(size_t(offset + t.numel()) * c10::elementSize(dtype) <= storage.nbytes());
    return t;
}

// Pinned host memory for a device read, from PyTorch's caching host allocator (no tensor).
c10::DataPtr pinned_bytes(size_t bytes) { return at::getHostAllocator(at::kCUDA)->allocate(bytes); }

// A device read's completion, recorded on `stream` and waited for by the host: one event per
// device and host thread, made once (a c10::Event is created and destroyed by each frame, two
// more calls into the driver while the GPU waits on the host; an event shared between threads
// could be recorded again by another thread's stream before this one waits).
class ReadEvent {
public:
    explicit ReadEvent(cudaStream_t stream) : event_(of_device(c10::cuda::current_device())) {
        C10_CUDA_CHECK(cudaEventRecord(event_, stream));
    }
    void wait() const { C10_CUDA_CHECK(cudaEventSynchronize(event_)); }

private:
    static cudaEvent_t of_device(int device) {
        thread_local std::unordered_map<int, cudaEvent_t> events;  // never destroyed: the driver may be gone at exit
        cudaEvent_t& e = events[device];
        if (!e) C10_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        return e;
    }
    cudaEvent_t event_;
};

// A new contiguous CUDA tensor on the current device (torch::empty without the dispatcher).
Tensor new_tensor(at::ScalarType dtype, c10::IntArrayRef sizes) {
    return tensor_over(device_storage(size_t(c10::multiply_integers(sizes)) * c10::elementSize(dtype)), dtype, sizes);
}

// The voxel count of `t` ([N, ...]), which must be a CUDA tensor (checked first: the caller's
// device guard takes its device) of at most MAX_VOXELS rows.
int64_t voxel_count(const Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.is_cuda(), text(name, ": expected a CUDA tensor, got one on ", t.device()));
    TORCH_CHECK_VALUE(t.dim() >= 1, text(name, ": expected a tensor of shape [N, ...], got ", t.sizes()));
    const int64_t n = t.size(0);
    TORCH_CHECK_VALUE(n <= MAX_VOXELS, text(name, ": at most ", MAX_VOXELS, " voxels are supported, got ", n));
    return n;
}

// Requested pixels of a sparse render: int64 [P, 2] of (row, col).
void check_pixels(const Tensor& pixels, const Tensor& like) {
    check_tensor(pixels, "pixels", at::kLong, {-1, 2}, like);
    TORCH_CHECK_VALUE(pixels.size(0) < (int64_t(1) << 31),
                      text("pixels: at most 2^31 - 1 pixels, got ", pixels.size(0)));
}

void check_no_outside(const svr::Camera& cam, int64_t n_outside, int64_t n_requests) {
    TORCH_CHECK_VALUE(n_outside == 0, text("pixels: expected (row, col) pairs with 0 <= row < ", cam.height,
                                           " and 0 <= col < ", cam.width, "; ", n_outside, " of the ", n_requests,
                                           " are outside"));
}

// Requested pixels grouped into warps of one tile (rasterizer.h's PixelSet), step 1 (bin_requests):
// per request its (row, col), tile and rank in its tile, and each tile's count.
struct BinnedRequests {
    Tensor requests;  // [P, 2] int32 (row, col): the layout's
    DeviceBuffer tile_of, rank, tile_counts;
};

BinnedRequests bin_requests(const svr::Camera& cam, const Tensor& pixels, const Tensor* allowed, Tensor* tile_masks,
                            unsigned long long* n_outside, unsigned long long* n_not_allowed, cudaStream_t stream) {
    const int64_t n_requests = pixels.size(0), n_tiles = cam.tiles_x() * cam.tiles_y();
    BinnedRequests b{new_tensor(at::kInt, {n_requests, 2}), buffer_of<int32_t>(n_requests),
                     buffer_of<int32_t>(n_requests), buffer_of<int32_t>(n_tiles)};
    // Zeros and -1 fills as memsets (no fill kernels: a frame's host time is most of a small one).
    C10_CUDA_CHECK(cudaMemsetAsync(b.tile_counts.get<void>(), 0, b.tile_counts.bytes(), stream));
    svr::bin_requests(cam, int(n_requests), ptr<int64_t>(pixels), allowed ? ptr<uint64_t>(*allowed) : nullptr,
                      tile_masks ? ptr<uint64_t>(*tile_masks) : nullptr, ptr<int2>(b.requests),
                      b.tile_of.get<int32_t>(), b.rank.get<int32_t>(), b.tile_counts.get<int32_t>(), n_outside,
                      n_not_allowed, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return b;
}

// Step 2: the warps of the tiles in `tile_order` ([n_tiles]: the whole image's lists, longest
// first; null: index order) -> [requests [P, 2] int32, warp_tiles [n_warps], lane_requests
// [32 * n_warps]]. Sized for the most warps P requests can need (a warp per tile holding
// requests, and one more per `per_warp` requests), so that no device read is needed: spare
// warps have tile -1.
std::vector<Tensor> assign_warps(int64_t n_tiles, const int32_t* tile_order, const BinnedRequests& b,
                                 cudaStream_t stream) {
    const int64_t n_requests = b.requests.size(0);
    const int per_warp = svr::requests_per_warp(n_requests);
    const int64_t max_warps = std::min<int64_t>(n_requests, n_tiles) + n_requests / per_warp;
    const DeviceBuffer warp_start = buffer_of<int32_t>(n_tiles);
    Tensor warp_tiles = new_tensor(at::kInt, {max_warps});
    Tensor lane_requests = new_tensor(at::kInt, {32 * max_warps});
    C10_CUDA_CHECK(cudaMemsetAsync(warp_tiles.data_ptr(), 0xff, sizeof(int32_t) * warp_tiles.numel(), stream));
    C10_CUDA_CHECK(cudaMemsetAsync(lane_requests.data_ptr(), 0xff, sizeof(int32_t) * lane_requests.numel(), stream));
    const DeviceBuffer scratch(svr::assign_warps_scratch_bytes(int(n_tiles)));
    svr::assign_warps(int(n_tiles), int(n_requests), per_warp, tile_order, b.tile_counts.get<int32_t>(),
                      b.tile_of.get<int32_t>(), b.rank.get<int32_t>(), scratch.get<void>(), warp_start.get<int32_t>(),
                      ptr<int32_t>(warp_tiles), ptr<int32_t>(lane_requests), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {b.requests, warp_tiles, lane_requests};
}

// A 4x4 camera matrix, as preprocess read it from the device, must be finite (the kernels
// ran on it: they bound every rectangle to the image, so no value makes them misbehave).
void check_finite_matrix(const char* name, const float* m) {
    bool finite = true;
    for (int i = 0; i < 16; ++i) finite = finite && std::isfinite(m[i]);
    if (finite) return;
    std::string values = "[";
    for (int i = 0; i < 16; ++i) {
        if (i % 4 == 0) values += i ? "], [" : "[";
        else values += ", ";
        values += std::to_string(m[i]);
    }
    TORCH_CHECK_VALUE(false, text("raster_settings.", name, ": expected finite values, got ", values, "]]"));
}

// --- The binning's buffers. A frame's stages 1-4 (preprocess to the in-view selection) write
// and read the buffers below. Each is the frame's own (from the caching allocator, released as
// soon as its last kernel is queued: the frame's peak stays low) or a place in a frame graph's
// arena (kept between frames, see "Frame graphs"). One sequence queues the stages after the
// frame's read over either (queue_binning): for a frame binned eagerly and for a graph's capture.

// The binning's steps, in order: a buffer lives from the step that writes it first to the
// last that reads it (AT_HELD: the frame's outputs, read after the call).
enum Step { AT_PREPROCESS, AT_MARK, AT_PLACE, AT_SCAN, AT_DUPLICATE, AT_SORT, AT_RANGES, AT_ORDER, AT_SELECT, AT_HELD };

// ITEM_OFFSETS to ITEM_VALUES_ALT serve frames that sort their items (no current ranks), which
// are never a graph's.
enum BinningBuffer {
    COUNTERS, TILE_MASKS, TILE_SAT, PIXEL_RECT, OCTANT_MASK, ITEM_TILES, BITMAP, WORD_OFFSETS, MARK_SCRATCH,
    ITEM_OFFSETS, ITEM_KEYS, ITEM_KEYS_ALT, ITEM_VALUES, ITEM_VALUES_ALT, ENTRY_OFFSETS, WIDE, KEYS, KEYS_ALT, VALUES,
    VALUES_ALT, SORT_SCRATCH, ENTRY_RECTS, RANGES, TILE_ORDER, IN_VIEW, SELECT_SCRATCH, N_BINNING_BUFFERS
};

// The counters' words: the frame counts, the camera matrices read on the device (16), then the
// tile order's scratch.
constexpr int64_t COUNTER_WORDS = svr::N_FRAME_COUNTS + 16;
size_t counter_bytes() { return sizeof(ULL) * COUNTER_WORDS + svr::order_tiles_scratch_bytes(); }

// --- Frame graphs. Where a frame's octant ranks are current, its binning after the frame's
// device read (place, scans, duplicate, sort, tile ranges, tile order, in-view selection: about
// twenty launches and memsets and as many allocations) is one CUDA graph launch: the GPU ran
// those kernels as fast as the host could queue them, not as fast as it could run them
// (docs/design.md, Session 25). A graph's kernel arguments are fixed, so its buffers are fixed
// too: one arena per device, planned for capacities of the counts (BinningSizes), reused frame
// after frame while no tensor of the last frame's (the intersections' views into it) is alive.
// Its buffers share memory where their lifetimes do not meet, as the caching allocator gave
// the eager frame's, and it stays allocated between frames (release_frame_graphs frees it).

struct ArenaSlot {
    size_t bytes = 0;
    int first = 0, last = 0;  // Steps
    size_t offset = 0;
};

// Offsets for the slots, each at the lowest place (256-byte aligned) clear of every slot placed
// before it whose steps meet its own, the largest first; returns the arena's size.
size_t plan_arena(std::vector<ArenaSlot>& slots) {
    constexpr size_t ALIGN = 256;
    std::vector<int> order(slots.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = int(i);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return slots[a].bytes > slots[b].bytes; });
    std::vector<int> placed;
    size_t total = 0;
    for (const int i : order) {
        ArenaSlot& s = slots[i];
        const size_t size = (s.bytes + ALIGN - 1) / ALIGN * ALIGN;
        std::vector<std::pair<size_t, size_t>> taken;  // [begin, end) of the slots alive with this one
        for (const int j : placed)
            if (slots[j].first <= s.last && s.first <= slots[j].last)
                taken.push_back({slots[j].offset, slots[j].offset + (slots[j].bytes + ALIGN - 1) / ALIGN * ALIGN});
        std::sort(taken.begin(), taken.end());
        size_t at = 0;
        for (const auto& [begin, end] : taken) {
            if (at + size <= begin) break;
            at = std::max(at, end);
        }
        s.offset = at;
        total = std::max(total, at + size);
        placed.push_back(i);
    }
    return total;
}

// What a graph is built for: the frame's shape, and the capacities of its counts.
struct FrameShape {
    int64_t n_voxels = -1;
    int width = 0, height = 0;
    bool sparse = false;
    bool operator==(const FrameShape& o) const {
        return n_voxels == o.n_voxels && width == o.width && height == o.height && sparse == o.sparse;
    }
};

struct Capacities {
    int64_t items = 0, entries = 0, wide = 0, in_view = 0;
    bool operator==(const Capacities& o) const {
        return items == o.items && entries == o.entries && wide == o.wide && in_view == o.in_view;
    }
    bool hold(const int64_t* c) const {
        return c[svr::COUNT_ITEMS] <= items && c[svr::COUNT_ENTRIES] <= entries && c[svr::COUNT_WIDE] <= wide &&
               c[svr::COUNT_IN_VIEW] <= in_view;
    }
    // A frame's counts with a thirty-second more (and 256) for the next views' (a moving
    // camera's counts drift; a frame past the capacities is binned eagerly, beside the arena,
    // and the next one builds a larger graph); never less than before. The margin is memory
    // held: at R1.5M, 18 bytes an entry of it.
    void grow_to(const int64_t* c) {
        auto margin = [](int64_t x) { return x + x / 32 + 256; };
        items = std::max(items, margin(c[svr::COUNT_ITEMS]));
        entries = std::max(entries, margin(c[svr::COUNT_ENTRIES]));
        wide = std::max(wide, margin(c[svr::COUNT_WIDE]));
        in_view = std::max(in_view, margin(c[svr::COUNT_IN_VIEW]));
    }
};

class FrameGraph {
public:
    FrameShape shape;
    Capacities caps;
    const int32_t* ranks = nullptr;  // the cached ranks the graph reads (current for the octree)
    cudaStream_t stream = nullptr;

    FrameGraph(const FrameShape& shape_, const Capacities& caps_, const Tensor& ranks_, cudaStream_t stream_)
        : shape(shape_), caps(caps_), ranks(ptr<int32_t>(ranks_)), stream(stream_) {}
    ~FrameGraph() {
        if (exec_) cudaGraphExecDestroy(exec_);
    }
    FrameGraph(const FrameGraph&) = delete;
    FrameGraph& operator=(const FrameGraph&) = delete;

    // Plans and allocates the arena and captures the graph; false where capture failed.
    bool build(const Tensor& like, const svr::Camera& cam);
    // A tensor of the last frame's (a view into the arena) is still alive.
    bool held() const { return arena_.defined() && arena_.storage().use_count() > 1; }
    const ArenaSlot& slot(BinningBuffer b) const { return slots_[b]; }
    template <typename T>
    T* at(BinningBuffer b) const { return reinterpret_cast<T*>(static_cast<char*>(arena_.data_ptr()) + slots_[b].offset); }
    void launch(cudaStream_t on) const {
        C10_CUDA_CHECK(cudaGraphLaunch(exec_, on));
        ++launches();
    }
    // Frames binned by a graph since the process started (tests: which path a frame took).
    static std::atomic<int64_t>& launches() {
        static std::atomic<int64_t> count{0};
        return count;
    }
    // The frame's outputs, views into the arena.
    Tensor view(BinningBuffer b, at::ScalarType dtype, c10::IntArrayRef sizes) const {
        return tensor_over(arena_.storage(), dtype, sizes, int64_t(slots_[b].offset / c10::elementSize(dtype)));
    }
    BinningBuffer entries() const { return sorted_in_alt_ ? VALUES_ALT : VALUES; }

private:
    void plan(const svr::KeyLayout& layout, int n_tiles, int tiles_x, int tiles_y);
    bool capture(const svr::Camera& cam, const svr::KeyLayout& layout, const Tensor& like);
    std::vector<ArenaSlot> slots_;
    Tensor arena_;
    cudaGraphExec_t exec_ = nullptr;
    bool sorted_in_alt_ = false;  // where the sort leaves the keys and values (CUB decides)
};

// A frame's binning buffers: its own, or places in a graph's arena (from the frame's start
// while a graph may bin it, until it leaves the arena). Each use of an arena place is checked
// against the plan's steps for it: a use the plan does not cover would meet another buffer
// sharing its memory.
class FrameBuffers {
public:
    explicit FrameBuffers(const FrameGraph* graph) : graph_(graph), in_arena_(graph != nullptr) {}
    // The step queued next: the uses that follow are checked against it.
    void at_step(Step s) { step_ = s; }
    // Buffer b, for n elements of T: its arena place, or a new buffer of the frame's own.
    void* make_bytes(BinningBuffer b, size_t bytes);
    template <typename T>
    T* make(BinningBuffer b, int64_t n) { return static_cast<T*>(make_bytes(b, sizeof(T) * size_t(n))); }
    template <typename T>
    T* get(BinningBuffer b) const { return static_cast<T*>(in_arena_ ? arena_place(b) : ptr_[b]); }
    // After the last kernel that reads b is queued: the frame's own memory goes back to the
    // allocator (which hands it on in stream order); an arena place stays.
    void release(BinningBuffer b) { own_[b].clear(); }
    // The buffers made from now on are the frame's own (it is binned eagerly).
    void leave_arena() { in_arena_ = false; }
    // Buffer b as one of the frame's outputs: a view into the arena, or a tensor that owns the
    // frame's own buffer from then on.
    Tensor output(BinningBuffer b, at::ScalarType dtype, c10::IntArrayRef sizes);

private:
    void* arena_place(BinningBuffer b) const {
        const ArenaSlot& s = graph_->slot(b);
        TORCH_INTERNAL_ASSERT(s.first <= step_ && step_ <= s.last, "binning buffer ", int(b), " used at step ",
                              int(step_), ", planned for steps ", s.first, " to ", s.last);
        return graph_->at<void>(b);
    }
    const FrameGraph* graph_;
    bool in_arena_;
    Step step_ = AT_PREPROCESS;
    std::array<void*, N_BINNING_BUFFERS> ptr_{};
    std::array<size_t, N_BINNING_BUFFERS> bytes_{};
    std::array<bool, N_BINNING_BUFFERS> owned_{};
    std::array<c10::DataPtr, N_BINNING_BUFFERS> own_;
};

void* FrameBuffers::make_bytes(BinningBuffer b, size_t bytes) {
    bytes_[b] = bytes;
    if (in_arena_) {
        TORCH_INTERNAL_ASSERT(bytes <= graph_->slot(b).bytes, "binning buffer ", int(b), ": ", bytes,
                              " bytes asked for, ", graph_->slot(b).bytes, " planned");
        return ptr_[b] = arena_place(b);
    }
    // Without a tensor around it: the dispatcher and TensorImpl of a torch::empty cost the host
    // more than the allocator's call, some fifteen times a frame (where the GPU waits on them).
    own_[b] = c10::cuda::CUDACachingAllocator::get()->allocate(bytes);
    owned_[b] = true;
    return ptr_[b] = own_[b].get();
}

Tensor FrameBuffers::output(BinningBuffer b, at::ScalarType dtype, c10::IntArrayRef sizes) {
    if (!owned_[b]) return graph_->view(b, dtype, sizes);
    owned_[b] = false;
    const c10::Storage storage(c10::Storage::use_byte_size_t(), bytes_[b], std::move(own_[b]),
                               c10::cuda::CUDACachingAllocator::get(), false);
    return tensor_over(storage, dtype, sizes);
}

// Stages 2-4 after the frame's read, queued once for a frame binned eagerly (its counts as the
// sizes) and once for a graph's capture (capacities, the counts read on the device): the items
// placed by `ranks` (else sorted: eager frames only), the entry offsets' scan, duplicate, the
// entry sort, the tile ranges, the whole image's tile order, the in-view selection (of at most
// `in_view` voxels). The buffers before the read (counters, requests' tables, preprocess's and
// the marks' outputs) are made already. Returns the buffer holding the sorted entries (the
// sort's or its second, as CUB decides).
BinningBuffer queue_binning(FrameBuffers& buf, const svr::Camera& cam, const svr::KeyLayout& layout,
                            const svr::BinningSizes& sizes, int64_t in_view, bool sparse, int n,
                            const int64_t* octree_paths, const int32_t* ranks, cudaStream_t stream) {
    const int n_tiles = cam.tiles_x() * cam.tiles_y();
    const size_t scratch_bytes = svr::sort_scratch_bytes(sizes.items, sizes.entries, layout);
    buf.at_step(AT_PLACE);
    svr::SortedItems items;
    int32_t* entry_offsets = buf.make<int32_t>(ENTRY_OFFSETS, sizes.items);
    if (ranks) {
        items = svr::place_ranked_items(n, ranks, buf.get<uint8_t>(OCTANT_MASK), buf.get<int32_t>(ITEM_TILES),
                                        buf.get<uint32_t>(BITMAP), buf.get<int32_t>(WORD_OFFSETS),
                                        buf.make<uint32_t>(ITEM_VALUES, sizes.items), entry_offsets, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        buf.release(BITMAP);
        buf.release(WORD_OFFSETS);
    } else {
        const bool packed = layout.packed_items();
        items = svr::sort_items(layout, n, octree_paths, buf.get<uint8_t>(OCTANT_MASK), buf.get<int32_t>(ITEM_OFFSETS),
                                sizes.items, buf.make<uint64_t>(ITEM_KEYS, sizes.items),
                                buf.make<uint64_t>(ITEM_KEYS_ALT, sizes.items),
                                buf.make<uint32_t>(ITEM_VALUES, packed ? 0 : sizes.items),
                                buf.make<uint32_t>(ITEM_VALUES_ALT, packed ? 0 : sizes.items),
                                buf.make_bytes(SORT_SCRATCH, scratch_bytes), scratch_bytes, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        buf.release(ITEM_OFFSETS);
        buf.release(items.keys == buf.get<uint64_t>(ITEM_KEYS) ? ITEM_KEYS_ALT : ITEM_KEYS);
        buf.release(items.values == buf.get<uint32_t>(ITEM_VALUES) ? ITEM_VALUES_ALT : ITEM_VALUES);
    }

    buf.at_step(AT_SCAN);
    void* scratch = ranks ? buf.make_bytes(SORT_SCRATCH, scratch_bytes) : buf.get<void>(SORT_SCRATCH);
    svr::scan_entry_offsets(layout, sizes, items, ranks ? nullptr : buf.get<int32_t>(ITEM_TILES), entry_offsets,
                            scratch, scratch_bytes, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    buf.release(ITEM_TILES);  // the in-view selection reads the octant masks

    buf.at_step(AT_DUPLICATE);
    uint32_t* keys = buf.make<uint32_t>(KEYS, sizes.entries);
    uint32_t* values = buf.make<uint32_t>(VALUES, sizes.entries);
    const svr::RequestedPixels requests{sparse ? buf.get<uint64_t>(TILE_MASKS) : nullptr,
                                        sparse ? buf.get<int32_t>(TILE_SAT) : nullptr};
    svr::duplicate_with_keys(cam, requests, layout, sizes, items, buf.get<short4>(PIXEL_RECT), entry_offsets,
                             buf.make<int32_t>(WIDE, sizes.wide), buf.get<ULL>(COUNTERS) + svr::WIDE_CURSOR, keys,
                             values, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (const BinningBuffer b : {ITEM_KEYS, ITEM_KEYS_ALT, ITEM_VALUES, ITEM_VALUES_ALT, ENTRY_OFFSETS, WIDE, TILE_SAT})
        buf.release(b);
    // Where the rectangles ride in the keys, the tile ranges do not read the voxels' (the
    // frame's peak is the entry sort's double buffers).
    if (layout.rect_in_key()) buf.release(PIXEL_RECT);

    buf.at_step(AT_SORT);
    uint32_t* keys_alt = buf.make<uint32_t>(KEYS_ALT, sizes.entries);
    uint32_t* values_alt = buf.make<uint32_t>(VALUES_ALT, sizes.entries);
    const svr::SortedEntries sorted =
        svr::sort_entries(sizes, layout, keys, keys_alt, values, values_alt, scratch, scratch_bytes, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    buf.release(SORT_SCRATCH);
    const bool keys_in_alt = sorted.keys == keys_alt, values_in_alt = sorted.values == values_alt;
    buf.release(keys_in_alt ? KEYS : KEYS_ALT);
    buf.release(values_in_alt ? VALUES : VALUES_ALT);

    buf.at_step(AT_RANGES);
    svr::identify_tile_ranges(sizes, cam.tiles_x(), n_tiles, layout, sorted,
                              layout.rect_in_key() ? nullptr : buf.get<short4>(PIXEL_RECT),
                              buf.make<uint16_t>(ENTRY_RECTS, sizes.entries), buf.make<int2>(RANGES, n_tiles), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    buf.release(keys_in_alt ? KEYS_ALT : KEYS);
    buf.release(PIXEL_RECT);

    // Only the whole image's blocks take the tiles longest list first (a sparse frame's warps
    // come in tile index order, laid out before the read).
    if (!sparse) {
        buf.at_step(AT_ORDER);
        svr::order_tiles(n_tiles, buf.get<int2>(RANGES), buf.get<ULL>(COUNTERS) + COUNTER_WORDS,
                         buf.make<int32_t>(TILE_ORDER, n_tiles), stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }

    // Queued last: only vox_fn needs it (the GPU reaches it after the sort, the host at once).
    buf.at_step(AT_SELECT);
    const size_t select_bytes = svr::in_view_scratch_bytes(n);
    svr::select_in_view(n, buf.get<uint8_t>(OCTANT_MASK), buf.make<int64_t>(IN_VIEW, in_view),
                        buf.make_bytes(SELECT_SCRATCH, select_bytes), select_bytes, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    buf.release(SELECT_SCRATCH);
    return values_in_alt ? VALUES_ALT : VALUES;
}

void FrameGraph::plan(const svr::KeyLayout& layout, int n_tiles, int tiles_x, int tiles_y) {
    const int64_t n = shape.n_voxels, words = svr::ranked_words(int(n));
    const bool alt = sorted_in_alt_, sparse = shape.sparse;
    slots_.assign(N_BINNING_BUFFERS, ArenaSlot());
    auto set = [&](BinningBuffer b, size_t bytes, Step first, Step last) { slots_[b] = {bytes, first, last, 0}; };
    set(COUNTERS, counter_bytes(), AT_PREPROCESS, AT_ORDER);
    set(TILE_MASKS, sparse ? sizeof(int64_t) * n_tiles : 0, AT_PREPROCESS, AT_HELD);
    set(TILE_SAT, sparse ? sizeof(int32_t) * (tiles_x + 1) * (tiles_y + 1) : 0, AT_PREPROCESS, AT_DUPLICATE);
    set(PIXEL_RECT, sizeof(short4) * n, AT_PREPROCESS, layout.rect_in_key() ? AT_DUPLICATE : AT_RANGES);
    set(OCTANT_MASK, n, AT_PREPROCESS, AT_SELECT);
    set(ITEM_TILES, sizeof(int32_t) * n, AT_PREPROCESS, AT_PLACE);
    set(BITMAP, sizeof(uint32_t) * words, AT_MARK, AT_PLACE);
    set(WORD_OFFSETS, sizeof(int32_t) * words, AT_MARK, AT_PLACE);
    set(MARK_SCRATCH, svr::ranked_scratch_bytes(int(n)), AT_MARK, AT_MARK);
    set(ITEM_VALUES, sizeof(uint32_t) * caps.items, AT_PLACE, AT_DUPLICATE);
    set(ENTRY_OFFSETS, sizeof(int32_t) * caps.items, AT_PLACE, AT_DUPLICATE);
    set(WIDE, sizeof(int32_t) * caps.wide, AT_DUPLICATE, AT_DUPLICATE);
    const size_t entries = sizeof(uint32_t) * caps.entries;
    set(KEYS, entries, AT_DUPLICATE, alt ? AT_SORT : AT_RANGES);
    set(VALUES, entries, AT_DUPLICATE, alt ? AT_SORT : AT_HELD);
    set(KEYS_ALT, entries, AT_SORT, alt ? AT_RANGES : AT_SORT);
    set(VALUES_ALT, entries, AT_SORT, alt ? AT_HELD : AT_SORT);
    set(SORT_SCRATCH, svr::sort_scratch_bytes(caps.items, caps.entries, layout), AT_SCAN, AT_SORT);
    set(ENTRY_RECTS, sizeof(uint16_t) * caps.entries, AT_RANGES, AT_HELD);
    set(RANGES, sizeof(int2) * n_tiles, AT_RANGES, AT_HELD);
    set(TILE_ORDER, sparse ? 0 : sizeof(int32_t) * n_tiles, AT_ORDER, AT_HELD);
    set(IN_VIEW, sizeof(int64_t) * caps.in_view, AT_SELECT, AT_HELD);
    set(SELECT_SCRATCH, svr::in_view_scratch_bytes(int(n)), AT_SELECT, AT_SELECT);
}

// Ends a capture left open by an error.
struct CaptureGuard {
    cudaStream_t stream;
    bool open = true;
    ~CaptureGuard() {
        if (!open) return;
        cudaGraph_t graph = nullptr;
        cudaStreamEndCapture(stream, &graph);
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
    }
};

bool FrameGraph::capture(const svr::Camera& cam, const svr::KeyLayout& layout, const Tensor& like) {
    if (exec_) {
        cudaGraphExecDestroy(exec_);
        exec_ = nullptr;
    }
    // Captured on a stream of the pool (the current one may be the legacy default stream,
    // which cannot capture); the graph is launched on the frame's stream.
    const cudaStream_t side = c10::cuda::getStreamFromPool(false, like.device().index()).stream();
    if (cudaStreamBeginCapture(side, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    CaptureGuard guard{side};
    FrameBuffers buffers(this);
    const svr::BinningSizes sizes{caps.items, caps.entries, caps.wide, at<ULL>(COUNTERS)};
    const bool in_alt = queue_binning(buffers, cam, layout, sizes, caps.in_view, shape.sparse, int(shape.n_voxels),
                                      nullptr, ranks, side) == VALUES_ALT;
    guard.open = false;
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(side, &graph);
    if (ended != cudaSuccess || cudaGetLastError() != cudaSuccess || !graph) {
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
        return false;
    }
    const cudaError_t made = cudaGraphInstantiate(&exec_, graph, 0);
    cudaGraphDestroy(graph);
    if (made != cudaSuccess) {
        exec_ = nullptr;
        cudaGetLastError();
        return false;
    }
    return in_alt == sorted_in_alt_;  // else planned for the other place: plan again
}
bool FrameGraph::build(const Tensor& like, const svr::Camera& cam) {
    const int n_tiles = cam.tiles_x() * cam.tiles_y();
    const svr::KeyLayout layout(n_tiles, 0, int(shape.n_voxels), true);
    for (int attempt = 0; attempt < 2; ++attempt) {
        plan(layout, n_tiles, cam.tiles_x(), cam.tiles_y());
        arena_ = Tensor();
        arena_ = torch::empty({int64_t(plan_arena(slots_))}, like.options().dtype(at::kByte));
        if (capture(cam, layout, like)) return true;
        if (!exec_) break;  // capture failed: eager frames
        sorted_in_alt_ = !sorted_in_alt_;
    }
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
    arena_ = Tensor();
    return false;
}

// Per device: the graph, and the shape and capacities the last ranked frame asked for. Never
// destroyed (freed by release_frame_graphs): at exit, the allocator may be gone before statics.
struct GraphCache {
    std::unique_ptr<FrameGraph> graph;
    FrameShape last_shape;
    Capacities wanted;
    bool build_failed = false;  // for last_shape and wanted: not tried again each frame
};
std::unordered_map<int, GraphCache>& graph_caches() {
    static auto* caches = new std::unordered_map<int, GraphCache>();
    return *caches;
}

void release_frame_graphs() { graph_caches().clear(); }
int64_t frame_graph_launches() { return FrameGraph::launches().load(); }

// The graph for a frame of `shape` with `ranks` (null: bin the frame eagerly): built once the
// same shape's ranked frames follow each other (a frame of another shape between them would
// rebuild it each time), reused while its arena is free and its capacities those wanted. A
// graph for another shape or other ranks is released here, at the frame's start (later, the
// frame's kernels may still read its arena): no frame keeps two arenas alive.
FrameGraph* acquire_frame_graph(const FrameShape& shape, const Tensor* ranks, const Tensor& like,
                                const svr::Camera& cam, cudaStream_t stream) {
    GraphCache& cache = graph_caches()[like.device().index()];
    FrameGraph* g = cache.graph.get();
    if (g && !(ranks && g->shape == shape && g->ranks == ptr<int32_t>(*ranks) && g->stream == stream)) {
        cache.graph.reset();
        g = nullptr;
    }
    if (!ranks || !(cache.last_shape == shape) || cache.build_failed) return nullptr;
    if (g && g->held()) return nullptr;
    if (g && g->caps == cache.wanted) return g;
    cache.graph.reset();  // its memory goes to the new arena
    auto built = std::make_unique<FrameGraph>(shape, cache.wanted, *ranks, stream);
    if (!built->build(like, cam)) {
        cache.build_failed = true;
        return nullptr;
    }
    cache.graph = std::move(built);
    return cache.graph.get();
}

// After a ranked frame's read: the capacities the next frame of its shape is built for.
void record_ranked_frame(int device, const FrameShape& shape, const int64_t* counts) {
    GraphCache& cache = graph_caches()[device];
    if (!(cache.last_shape == shape)) {
        cache.last_shape = shape;
        cache.wanted = Capacities();
        cache.build_failed = false;
    }
    if (!cache.wanted.hold(counts)) {
        cache.wanted.grow_to(counts);
        cache.build_failed = false;
    }
}

// A frame whose ranks are not offered or not current ends a run of ranked frames (its graph,
// if any, is released by the next frame's start).
void record_unranked_frame(int device) { graph_caches()[device].last_shape = FrameShape(); }
// Stages 1-4 for the whole image, or (sparse, `pixels` given) for the tiles holding requested
// pixels. Returns ([in_view, ranges, entries, entry_rects, tile_order, tile_masks,
// camera_position, requests, warp_tiles, lane_requests], fingerprint, device camera);
// tile_order (the whole image's render order) is empty for requested pixels; tile_masks [n_tiles] int64 (bit
// TILE_SIZE * y + x: pixel (x, y) of the tile is requested) is empty for the whole image, and
// the pixels' layout in warps (requests, warp_tiles, lane_requests: pixel_layout's)
// unless `lay_out` (a frame rendering them at once); camera_position is float32
// [3] (vox_fn's); fingerprint is the frame's PATHS_FINGERPRINT (as int64). `ranks`
// (octant_ranks' [4, N], built for octpaths of fingerprint `ranks_fingerprint`) place the
// items without a sort where the fingerprints agree (and then, frame after frame, through the
// frame graph). With `w2c` and `c2w` (float32 [4, 4] CUDA tensors on the voxels' device),
// `camera` holds its first seven numbers only: preprocess loads the matrices, the frame's read
// brings them back (checked finite then), and the device camera returned is the 31 numbers
// (else it is empty).
std::tuple<std::vector<Tensor>, int64_t, std::vector<double>> rasterize_preprocess(
    const std::vector<double>& camera, const Tensor& octree_paths, const Tensor& vox_centers,
    const Tensor& vox_lengths, const std::optional<Tensor>& pixels, const std::optional<Tensor>& ranks,
    int64_t ranks_fingerprint, bool lay_out, const std::optional<Tensor>& w2c, const std::optional<Tensor>& c2w) {
    const int64_t n = voxel_count(vox_centers, "vox_centers");
    const c10::cuda::CUDAGuard guard(vox_centers.device());
    check_tensor(vox_centers, "vox_centers", at::kFloat, {n, 3}, vox_centers);
    check_tensor(octree_paths, "octree_paths", at::kLong, {n, 1}, vox_centers);
    check_tensor(vox_lengths, "vox_lengths", at::kFloat, {n, 1}, vox_centers);
    if (ranks) check_tensor(*ranks, "ranks", at::kInt, {4, n}, vox_centers);
    const bool matrices_on_device = w2c.has_value();
    TORCH_CHECK_VALUE(matrices_on_device == c2w.has_value(), "w2c, c2w: expected both or neither");
    if (matrices_on_device) {
        check_tensor(*w2c, "raster_settings.w2c_matrix", at::kFloat, {4, 4}, vox_centers, false);
        check_tensor(*c2w, "raster_settings.c2w_matrix", at::kFloat, {4, 4}, vox_centers, false);
    }
    if (pixels) check_pixels(*pixels, vox_centers);
    svr::Camera cam = make_camera(camera, matrices_on_device);
    const int n_tiles = cam.tiles_x() * cam.tiles_y();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const int device = vox_centers.device().index();

    // The frame graph's arena holds the buffers made before the read where the frame may be
    // binned by it (ranks offered: whether they are current is known after the read); else
    // they are the frame's own.
    const FrameShape shape{n, cam.width, cam.height, pixels.has_value()};
    FrameGraph* graph = acquire_frame_graph(shape, ranks ? &*ranks : nullptr, vox_centers, cam, stream);
    if (!ranks) record_unranked_frame(device);
    FrameBuffers buf(graph);

    // The frame's counters, zeroed with one memset (no kernel) with the tile order's scratch
    // behind them; matrices read on the device ride behind the counters (32 floats in 16 words,
    // written by preprocess) to come back in one copy.
    const int64_t count_words = svr::N_FRAME_COUNTS + (matrices_on_device ? 16 : 0);
    ULL* counters = static_cast<ULL*>(buf.make_bytes(COUNTERS, counter_bytes()));
    C10_CUDA_CHECK(cudaMemsetAsync(counters, 0, counter_bytes(), stream));
    svr::CameraMatrices matrices{};
    if (matrices_on_device)
        matrices = {ptr<float>(*w2c), ptr<float>(*c2w), {w2c->stride(0), w2c->stride(1)},
                    {c2w->stride(0), c2w->stride(1)}, reinterpret_cast<float*>(counters + svr::N_FRAME_COUNTS)};

    // Requested pixels: their tiles' masks and the table of the tiles holding them (read by
    // preprocess and binning); the bin kernel also takes the tiles and ranks that their
    // grouping into warps needs (assign_warps, queued after preprocess).
    Tensor tile_masks = new_tensor(at::kLong, {0});
    svr::RequestedPixels requests{nullptr, nullptr};
    BinnedRequests binned;
    if (pixels) {
        uint64_t* masks = buf.make<uint64_t>(TILE_MASKS, n_tiles);
        tile_masks = buf.output(TILE_MASKS, at::kLong, {n_tiles});
        C10_CUDA_CHECK(cudaMemsetAsync(masks, 0, sizeof(int64_t) * n_tiles, stream));
        binned = bin_requests(cam, *pixels, nullptr, &tile_masks, counters + svr::COUNT_OUTSIDE_REQUESTS, nullptr,
                              stream);
        int32_t* tile_sat = buf.make<int32_t>(TILE_SAT, int64_t(cam.tiles_y() + 1) * (cam.tiles_x() + 1));
        svr::tile_table(cam, masks, tile_sat, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        requests = {masks, tile_sat};
    }

    uint8_t* octant_mask = buf.make<uint8_t>(OCTANT_MASK, n);
    Tensor position = new_tensor(at::kFloat, {3});
    svr::preprocess(cam, matrices_on_device ? &matrices : nullptr, requests, int(n), ptr<int64_t>(octree_paths),
                    ptr<float>(vox_centers), ptr<float>(vox_lengths), buf.make<short4>(PIXEL_RECT, n), octant_mask,
                    buf.make<int32_t>(ITEM_TILES, n), counters, ptr<float>(position), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    // The one device-to-host read of the frame: how many items and entries to allocate, how
    // many rank bits carry information, how many voxels are in view, whether cached ranks are
    // current (and whether the requests are valid). The copy is queued before the items'
    // offsets scan (or, with ranks, their bitmap and its scan) and waited for after it: the
    // host learns the counts while the GPU scans.
    const c10::DataPtr host_counts = pinned_bytes(sizeof(ULL) * count_words);
    C10_CUDA_CHECK(cudaMemcpyAsync(host_counts.get(), counters, sizeof(ULL) * count_words, cudaMemcpyDeviceToHost,
                                   stream));
    const ReadEvent counts_copied(stream);
    // int32: the items are at most the entries, which the check below keeps below 2^31 before
    // any offset is used.
    auto scan_item_offsets = [&] {
        const DeviceBuffer scan_scratch(svr::item_offsets_scratch_bytes(int(n)));
        svr::item_offsets(int(n), octant_mask, buf.make<int32_t>(ITEM_OFFSETS, n), scan_scratch.get<void>(),
                          scan_scratch.bytes(), stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    // The ranks are bet on before the counts come back: queued behind the counts' copy, the
    // marks run while the host reads the counts and allocates; so does the requests' layout.
    if (ranks) {
        buf.at_step(AT_MARK);
        const int64_t words = svr::ranked_words(int(n));
        const size_t scratch_bytes = svr::ranked_scratch_bytes(int(n));
        svr::mark_ranked_items(int(n), ptr<int32_t>(*ranks), octant_mask, buf.make<uint32_t>(BITMAP, words),
                               buf.make<int32_t>(WORD_OFFSETS, words), buf.make_bytes(MARK_SCRATCH, scratch_bytes),
                               scratch_bytes, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        buf.release(MARK_SCRATCH);
    } else {
        scan_item_offsets();
    }
    const std::vector<Tensor> warps = pixels && lay_out ? assign_warps(n_tiles, nullptr, binned, stream)
                                                        : std::vector<Tensor>(3, new_tensor(at::kInt, {0}));
    counts_copied.wait();
    const int64_t* c = static_cast<const int64_t*>(host_counts.get());
    // The device's matrices first: the counts of a camera that is not finite mean nothing.
    std::vector<double> device_camera;
    if (matrices_on_device) {
        const float* values = reinterpret_cast<const float*>(c + svr::N_FRAME_COUNTS);
        check_finite_matrix("w2c_matrix", values);
        check_finite_matrix("c2w_matrix", values + 16);
        device_camera = camera;
        for (int i = 0; i < 12; ++i) device_camera.push_back(cam.w2c[i] = values[i]);
        for (int i = 0; i < 12; ++i) device_camera.push_back(cam.c2w[i] = values[16 + i]);
    }
    if (pixels) check_no_outside(cam, c[svr::COUNT_OUTSIDE_REQUESTS], pixels->size(0));
    const int64_t n_entries = c[svr::COUNT_ENTRIES], n_items = c[svr::COUNT_ITEMS];
    TORCH_CHECK_VALUE(n_entries < (int64_t(1) << 31),
                      text("vox_centers: this view needs ", n_entries, " tile-voxel entries; at most 2^31 - 1 are "
                           "supported (fewer voxels or a smaller image)"));
    // The ranks cost a pass over all voxels (mark and place: 0.09 ms at 6M voxels), the sort
    // about as much per third of them in items (five radix passes of 64-bit keys). Requested
    // pixels take the ranks whenever they are current: their frames wait on the host's
    // launches after the read, and the place kernel is one where the sort queues a dozen
    // (its items' listing over all voxels costs about what placing them does).
    const bool ranked =
        ranks && c[svr::PATHS_FINGERPRINT] == ranks_fingerprint && (pixels || 3 * n_items >= n);
    if (ranked)
        record_ranked_frame(device, shape, c);
    else
        record_unranked_frame(device);

    // The frame graph: the binning in one launch, its outputs views into the arena. Else the
    // same stages queued one by one, the frame's own buffers from here on.
    BinningBuffer entries;
    if (ranked && graph && graph->caps.hold(c)) {
        graph->launch(stream);
        entries = graph->entries();
    } else {
        buf.leave_arena();
        if (ranks && !ranked) scan_item_offsets();  // the bet on the ranks was lost
        const svr::KeyLayout layout(n_tiles, int(c[svr::COUNT_USED_LEVELS]), int(n), ranked);
        const svr::BinningSizes sizes{n_items, n_entries, c[svr::COUNT_WIDE], nullptr};
        entries = queue_binning(buf, cam, layout, sizes, c[svr::COUNT_IN_VIEW], pixels.has_value(), int(n),
                                ptr<int64_t>(octree_paths), ranked ? ptr<int32_t>(*ranks) : nullptr, stream);
    }
    Tensor tile_order = pixels ? new_tensor(at::kInt, {0}) : buf.output(TILE_ORDER, at::kInt, {n_tiles});
    return {{buf.output(IN_VIEW, at::kLong, {c[svr::COUNT_IN_VIEW]}), buf.output(RANGES, at::kInt, {n_tiles, 2}),
             buf.output(entries, at::kInt, {n_entries}), buf.output(ENTRY_RECTS, at::kShort, {n_entries}), tile_order,
             tile_masks, position, warps[0], warps[1], warps[2]},
            c[svr::PATHS_FINGERPRINT], device_camera};
}

// The cached octant ranks of octree_paths [N, 1] (rasterizer.h): int32 [4, N], or [0, N] where
// the paths are not distinct or not all within the 16 levels (the frames sort then).
Tensor octant_ranks(const Tensor& octree_paths) {
    const int64_t n = voxel_count(octree_paths, "octree_paths");
    const c10::cuda::CUDAGuard guard(octree_paths.device());
    check_tensor(octree_paths, "octree_paths", at::kLong, {n, 1}, octree_paths);
    const auto opts = octree_paths.options();
    Tensor ranks = torch::empty({4, n}, opts.dtype(at::kInt));
    Tensor keys = torch::empty({2 * n}, opts);
    Tensor ids = torch::empty({2 * n}, opts.dtype(at::kInt));
    Tensor invalid = torch::empty({1}, opts.dtype(at::kInt));
    Tensor scratch = torch::empty({int64_t(svr::octant_ranks_scratch_bytes(int(n)))}, opts.dtype(at::kByte));
    const bool ok = svr::octant_ranks(int(n), ptr<int64_t>(octree_paths), ptr<int32_t>(ranks), ptr<uint64_t>(keys),
                                      ptr<uint32_t>(ids), ptr<int>(invalid), scratch.data_ptr(),
                                      size_t(scratch.numel()), c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return ok ? ranks : ranks.narrow(0, 0, 0);
}

// Requested pixels grouped into warps of one tile, for intersections reused (a fresh frame's
// come with its preprocess): assign_warps' [requests, warp_tiles, lane_requests], the tiles in
// `tile_order` (the whole image's, longest list first; empty for the lists of requested
// pixels: index order). The requests are checked first (one device read): inside the image
// and, when `allowed` tile masks are given (those the entries were binned for), among them.
std::vector<Tensor> pixel_layout(const std::vector<double>& camera, const Tensor& pixels, const Tensor& tile_order,
                                 const std::optional<Tensor>& allowed) {
    TORCH_CHECK_VALUE(pixels.is_cuda(), text("pixels: expected a CUDA tensor, got one on ", pixels.device()));
    const c10::cuda::CUDAGuard guard(pixels.device());
    check_pixels(pixels, pixels);
    const svr::Camera cam = make_camera(camera);
    const int n_tiles = cam.tiles_x() * cam.tiles_y();
    check_tensor(tile_order, "tile_order", at::kInt, {allowed ? 0 : n_tiles}, pixels);
    if (allowed) check_tensor(*allowed, "allowed", at::kLong, {n_tiles}, pixels);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const DeviceBuffer invalid = buffer_of<ULL>(2);
    C10_CUDA_CHECK(cudaMemsetAsync(invalid.get<void>(), 0, invalid.bytes(), stream));
    const BinnedRequests binned = bin_requests(cam, pixels, allowed ? &*allowed : nullptr, nullptr,
                                               invalid.get<ULL>(), invalid.get<ULL>() + 1, stream);
    // As a fresh frame's counts: the copy is queued before the layout's kernels and waited for
    // after them (invalid requests are left out of the layout; the call raises before any
    // kernel reads it).
    const c10::DataPtr host_invalid = pinned_bytes(invalid.bytes());
    C10_CUDA_CHECK(cudaMemcpyAsync(host_invalid.get(), invalid.get<void>(), invalid.bytes(), cudaMemcpyDeviceToHost,
                                   stream));
    const ReadEvent copied(stream);
    std::vector<Tensor> warps = assign_warps(n_tiles, ptr<int32_t>(tile_order), binned, stream);
    copied.wait();
    const int64_t* bad = static_cast<const int64_t*>(host_invalid.get());
    check_no_outside(cam, bad[0], pixels.size(0));
    TORCH_CHECK_VALUE(bad[1] == 0,
                      "pixels: some requested pixels are not among those `intersections` was built for; build it "
                      "with these pixels (or without pixels)");
    return warps;
}

// `rgbs` may be undefined where colours are not read (top-K).
svr::RenderBuffers render_buffers(const Tensor& ranges, const Tensor& entries, const Tensor& entry_rects,
                                  const Tensor& vox_centers,
                                  const Tensor& vox_lengths, const Tensor& geos, const Tensor& rgbs, int n_tiles) {
    const int64_t n = vox_centers.size(0);
    check_tensor(ranges, "ranges", at::kInt, {n_tiles, 2}, vox_centers);
    check_tensor(entries, "entries", at::kInt, {-1}, vox_centers);
    check_tensor(entry_rects, "entry_rects", at::kShort, {entries.size(0)}, vox_centers);
    check_tensor(vox_centers, "vox_centers", at::kFloat, {n, 3}, vox_centers);
    check_tensor(vox_lengths, "vox_lengths", at::kFloat, {n, 1}, vox_centers);
    check_tensor(geos, "geos", at::kFloat, {n, 8}, vox_centers);
    if (rgbs.defined()) check_tensor(rgbs, "rgbs", at::kFloat, {n, 3}, vox_centers);
    return {ptr<int2>(ranges), ptr<uint32_t>(entries), ptr<uint16_t>(entry_rects), ptr<float>(vox_centers),
            ptr<float>(vox_lengths), ptr<float>(geos), rgbs.defined() ? ptr<float>(rgbs) : nullptr};
}

// The pixels to render: the whole image (blocks in tile_order), or (sparse) requests [P, 2]
// int32 (row, col) grouped by tile into warps: warp_tiles [n_warps], lane_requests
// [32 * n_warps] (-1: idle lane).
svr::PixelSet pixel_set(const Tensor& tile_order, bool sparse, const Tensor& requests, const Tensor& warp_tiles,
                        const Tensor& lane_requests, const Tensor& like, int n_tiles) {
    if (!sparse) {
        check_tensor(tile_order, "tile_order", at::kInt, {n_tiles}, like);
        return {ptr<int32_t>(tile_order), 0, nullptr, 0, nullptr, nullptr};
    }
    check_tensor(requests, "requests", at::kInt, {-1, 2}, like);
    check_tensor(warp_tiles, "warp_tiles", at::kInt, {-1}, like);
    check_tensor(lane_requests, "lane_requests", at::kInt, {32 * warp_tiles.size(0)}, like);
    // A non-null pointer marks the set as sparse even when it is empty.
    static const int2 no_requests{0, 0};
    return {nullptr, int(requests.size(0)), requests.numel() ? ptr<int2>(requests) : &no_requests,
            int(warp_tiles.size(0)), ptr<int32_t>(warp_tiles), ptr<int32_t>(lane_requests)};
}

// Shape of a per-pixel output with `channels` channels: [C, H, W], or [C, P] for requests.
std::vector<int64_t> pixel_shape(const svr::Camera& cam, const svr::PixelSet& set, int64_t channels) {
    if (set.sparse()) return {channels, set.n_requests};
    return {channels, cam.height, cam.width};
}

// What every render entry point starts from: checked inputs, the voxels' device made current
// (for as long as the call lives), the camera, the voxel buffers and the pixels to render.
// `rgbs` may be undefined (top-K reads no colours).
struct RenderCall {
    c10::cuda::CUDAGuard guard;
    svr::Camera cam;
    svr::RenderBuffers in;
    svr::PixelSet pixels;

    // Shape of a per-pixel tensor with `channels` channels.
    std::vector<int64_t> shape(int64_t channels) const { return pixel_shape(cam, pixels, channels); }
};

RenderCall render_call(const std::vector<double>& camera, int64_t n_samp, const Tensor& ranges, const Tensor& entries,
                       const Tensor& entry_rects, const Tensor& vox_centers, const Tensor& vox_lengths,
                       const Tensor& geos, const Tensor& rgbs, const Tensor& tile_order, bool sparse,
                       const Tensor& requests, const Tensor& warp_tiles, const Tensor& lane_requests) {
    TORCH_CHECK_VALUE(vox_centers.is_cuda(),
                      text("vox_centers: expected a CUDA tensor, got one on ", vox_centers.device()));
    TORCH_CHECK_VALUE(n_samp >= 1 && n_samp <= MAX_N_SAMP,
                      text("n_samp_per_vox: expected 1..", MAX_N_SAMP, ", got ", n_samp));
    const svr::Camera cam = make_camera(camera);
    const int n_tiles = cam.tiles_x() * cam.tiles_y();
    return {c10::cuda::CUDAGuard(vox_centers.device()), cam,
            render_buffers(ranges, entries, entry_rects, vox_centers, vox_lengths, geos, rgbs, n_tiles),
            pixel_set(tile_order, sparse, requests, warp_tiles, lane_requests, vox_centers, n_tiles)};
}

// The backward's gradient buffers dL/dgeos [n, 8], dL/drgbs [n, 3] and priority [n, 1], zeroed
// by memsets on `stream`. The forward queues them behind its render kernel when a backward may
// follow: the GPU clears them while the host works through the loss and autograd towards the
// backward (the GPU waits there, 0.1 ms or more), and the backward kernel starts without the
// fills (0.09 ms on O6M). Zeroed on a side stream during the render instead, they slowed the
// render kernel by about as much (session 13, run 5: O6M 0.33 -> 0.41 ms).
// The three share one allocation, zeroed by one memset (a frame's host calls are most of a
// small training step): the memory returns to the allocator when all three are released
// (optimizer.zero_grad() releases them together).
std::vector<Tensor> zeroed_gradients(int64_t n, cudaStream_t stream) {
    const c10::Storage storage = device_storage(sizeof(float) * 12 * size_t(n));
    if (n) C10_CUDA_CHECK(cudaMemsetAsync(storage.mutable_data(), 0, storage.nbytes(), stream));
    return {tensor_over(storage, at::kFloat, {n, 8}), tensor_over(storage, at::kFloat, {n, 3}, 8 * n),
            tensor_over(storage, at::kFloat, {n, 1}, 11 * n)};
}

std::vector<Tensor> rasterize_voxels(const std::vector<double>& camera, int64_t n_samp, double bg, bool need_depth,
                                     bool need_distortion, bool need_normal, bool track_max_w, const Tensor& ranges,
                                     const Tensor& entries, const Tensor& entry_rects, const Tensor& vox_centers,
                                     const Tensor& vox_lengths, const Tensor& geos, const Tensor& rgbs,
                                     const Tensor& tile_order, bool sparse,
                                     const Tensor& requests, const Tensor& warp_tiles, const Tensor& lane_requests,
                                     bool zero_gradients) {
    const RenderCall call = render_call(camera, n_samp, ranges, entries, entry_rects, vox_centers, vox_lengths, geos, rgbs,
                                        tile_order, sparse, requests, warp_tiles, lane_requests);
    const int64_t n = vox_centers.size(0);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    // An output not asked for is empty ([0]).
    auto output = [&](bool needed, std::vector<int64_t> shape) {
        return new_tensor(at::kFloat, needed ? shape : std::vector<int64_t>{0});
    };
    Tensor color = output(true, call.shape(3)), T = output(true, call.shape(1));
    Tensor depth = output(need_depth, call.shape(3)), normal = output(need_normal, call.shape(3));
    Tensor aux = output(need_distortion, call.shape(1)), max_w = output(track_max_w, {n, 1});
    if (track_max_w && n) C10_CUDA_CHECK(cudaMemsetAsync(ptr<float>(max_w), 0, sizeof(float) * n, stream));
    // Where the backward starts each pixel's walk: only a frame that a backward may follow keeps it.
    Tensor last = zero_gradients ? new_tensor(at::kInt, call.shape(1)) : new_tensor(at::kFloat, {0});
    svr::render_forward(call.cam, call.pixels,
                        {int(n_samp), float(bg), need_depth, need_distortion, need_normal, track_max_w}, call.in,
                        {ptr<float>(color), ptr<float>(depth), ptr<float>(normal), ptr<float>(T), ptr<float>(max_w),
                         ptr<float>(aux), ptr<int32_t>(last)},
                        stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    std::vector<Tensor> outputs{color, depth, normal, T, max_w, aux, last};
    if (zero_gradients) {
        const std::vector<Tensor> zeroed = zeroed_gradients(n, stream);
        outputs.insert(outputs.end(), zeroed.begin(), zeroed.end());
    }
    return outputs;
}

std::vector<Tensor> rasterize_voxels_backward(
    const std::vector<double>& camera, int64_t n_samp, double bg, bool need_depth, bool need_normal,
    double lambda_R_concen, double lambda_ascending, double lambda_dist, const Tensor& gt_color, const Tensor& ranges,
    const Tensor& entries, const Tensor& entry_rects, const Tensor& vox_centers, const Tensor& vox_lengths, const Tensor& geos, const Tensor& rgbs,
    const Tensor& T, const Tensor& aux, const Tensor& last,
    const Tensor& dL_dcolor, const Tensor& dL_ddepth, const Tensor& dL_dnormal, const Tensor& dL_dT,
    const Tensor& tile_order, bool sparse,
    const Tensor& requests, const Tensor& warp_tiles, const Tensor& lane_requests,
    const std::optional<std::vector<Tensor>>& zeroed) {
    const RenderCall call = render_call(camera, n_samp, ranges, entries, entry_rects, vox_centers, vox_lengths, geos, rgbs,
                                        tile_order, sparse, requests, warp_tiles, lane_requests);
    const int64_t n = vox_centers.size(0);
    auto image = [&](const Tensor& t, const char* name, int64_t ch) {
        check_tensor(t, name, at::kFloat, call.shape(ch), vox_centers);
        return ptr<float>(t);
    };
    // Images the caller hands in (gradients, the ground truth), read once per pixel in any strides.
    auto strided_image = [&](const Tensor& t, const char* name, int64_t ch) {
        check_tensor(t, name, at::kFloat, call.shape(ch), vox_centers, /*contiguous=*/false);
        return t.dim() == 3 ? svr::PixelImage{ptr<float>(t), t.stride(0), t.stride(1), t.stride(2)}
                            : svr::PixelImage{ptr<float>(t), t.stride(0), 0, t.stride(1)};
    };
    check_tensor(last, "last", at::kInt, call.shape(1), vox_centers);
    svr::BackwardInputs g{image(T, "T", 1), lambda_dist > 0 ? image(aux, "aux", 1) : nullptr, ptr<int32_t>(last),
                          strided_image(dL_dcolor, "dL_dcolor", 3),
                          need_depth ? strided_image(dL_ddepth, "dL_ddepth", 3) : svr::PixelImage{},
                          need_normal ? strided_image(dL_dnormal, "dL_dnormal", 3) : svr::PixelImage{},
                          strided_image(dL_dT, "dL_dT", 1),
                          lambda_R_concen > 0 ? strided_image(gt_color, "gt_color", 3) : svr::PixelImage{}};
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    std::vector<Tensor> grads;
    if (zeroed) {
        grads = *zeroed;
        TORCH_CHECK_VALUE(grads.size() == 3, text("zeroed: expected 3 tensors, got ", grads.size()));
        check_tensor(grads[0], "zeroed[0]", at::kFloat, {n, 8}, vox_centers);
        check_tensor(grads[1], "zeroed[1]", at::kFloat, {n, 3}, vox_centers);
        check_tensor(grads[2], "zeroed[2]", at::kFloat, {n, 1}, vox_centers);
    } else {
        grads = zeroed_gradients(n, stream);
    }
    const Tensor &dL_dgeos = grads[0], &dL_drgbs = grads[1], &priority = grads[2];
    svr::render_backward(call.cam, call.pixels,
                         {int(n_samp), float(bg), need_depth, need_normal, float(lambda_R_concen),
                          float(lambda_ascending), float(lambda_dist)},
                         call.in, g, {ptr<float>(dL_dgeos), ptr<float>(dL_drgbs), ptr<float>(priority)}, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {dL_dgeos, dL_drgbs, priority};
}

// The render as the extension's own autograd Function: autograd's engine runs a training
// step's backward straight into the extension, without the GIL, Python frames and argument
// conversions a Python Function's backward costs (renderer._RasterizeVoxels serves the
// reference). Differentiable in geos and rgbs; subdiv_p's gradient is the subdivision
// priority (SPEC section 4). What both passes read beside the voxel tensors is one Frame.
struct Frame : torch::CustomClassHolder {
    std::vector<double> camera;
    int64_t n_samp = 1;
    double bg = 0;
    bool need_depth = false, need_distortion = false, need_normal = false, track_max_w = false;
    double lambda_R_concen = 0, lambda_ascending = 0, lambda_dist = 0;
    Tensor gt_color;
    // The binning's outputs: the forward's, handed to the saved variables after it.
    Tensor ranges, entries, entry_rects, tile_order;
    bool sparse = false;
    Tensor requests, warp_tiles, lane_requests;
    // The backward's gradient buffers, zeroed by the forward behind its render kernel; the
    // first backward takes them (a second one, through a retained graph, allocates its own).
    std::optional<std::vector<Tensor>> zeroed;
};

struct RasterizeVoxels : torch::autograd::Function<RasterizeVoxels> {
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                  const c10::intrusive_ptr<Frame>& frame, bool backward_follows,
                                                  const Tensor& vox_centers, const Tensor& vox_lengths,
                                                  const Tensor& geos, const Tensor& rgbs, const Tensor& /*subdiv_p*/) {
        Frame& f = *frame;
        std::vector<Tensor> out = rasterize_voxels(
            f.camera, f.n_samp, f.bg, f.need_depth, f.need_distortion, f.need_normal, f.track_max_w, f.ranges,
            f.entries, f.entry_rects, vox_centers, vox_lengths, geos, rgbs, f.tile_order, f.sparse, f.requests,
            f.warp_tiles, f.lane_requests, backward_follows);
        if (backward_follows) f.zeroed = std::vector<Tensor>(out.begin() + 7, out.end());
        ctx->saved_data["frame"] = c10::IValue::make_capsule(frame);
        // T is an output: saved as one, so that the node does not hold itself. aux and last
        // are saved alike, and so are the binning's outputs, to be released after the backward
        // (the Frame lives as long as the outputs do): a training loop keeps a step's outputs
        // until the next step replaces them, and the frame graph's arena, which those views
        // would hold, serves the next frame only when no view into it is alive.
        ctx->save_for_backward({vox_centers, vox_lengths, geos, rgbs, out[3], out[5], out[6], f.ranges, f.entries,
                                f.entry_rects, f.tile_order});
        f.ranges = f.entries = f.entry_rects = f.tile_order = Tensor();
        ctx->mark_non_differentiable({out[4]});
        // Outputs the loss leaves out get no zero-filled gradient images: read as zeros below.
        ctx->set_materialize_grads(false);
        return {out[0], out[1], out[2], out[3], out[4]};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        Frame& f = *c10::static_intrusive_pointer_cast<Frame>(ctx->saved_data["frame"].toCapsule());
        const torch::autograd::variable_list saved = ctx->get_saved_variables();
        const Tensor &vox_centers = saved[0], &T = saved[4];
        // An output's undefined gradient is one zero read at every pixel (the backward takes
        // gradients in any strides).
        Tensor zero;
        auto or_zeros = [&](const Tensor& grad, int64_t channels) {
            if (grad.defined()) return grad;
            if (!zero.defined()) zero = torch::zeros({1}, T.options());
            std::vector<int64_t> shape = T.sizes().vec();
            shape[0] = channels;
            return zero.expand(shape);
        };
        std::optional<std::vector<Tensor>> zeroed;
        std::swap(zeroed, f.zeroed);
        std::vector<Tensor> g = rasterize_voxels_backward(
            f.camera, f.n_samp, f.bg, f.need_depth, f.need_normal, f.lambda_R_concen, f.lambda_ascending,
            f.lambda_dist, f.gt_color, saved[7], saved[8], saved[9], vox_centers, saved[1], saved[2], saved[3],
            T, saved[5], saved[6], or_zeros(grads[0], 3), f.need_depth ? or_zeros(grads[1], 3) : grads[1],
            f.need_normal ? or_zeros(grads[2], 3) : grads[2], or_zeros(grads[3], 1), saved[10], f.sparse,
            f.requests, f.warp_tiles, f.lane_requests, zeroed);
        return {Tensor(), Tensor(), Tensor(), Tensor(), g[0], g[1], g[2]};
    }
};

// [color, depth, normal, T, max_w] of RasterizeVoxels (autograd's graph recorded where grad
// mode is on and geos, rgbs or subdiv_p require grad).
std::vector<Tensor> rasterize_voxels_autograd(
    const std::vector<double>& camera, int64_t n_samp, double bg, bool need_depth, bool need_distortion,
    bool need_normal, bool track_max_w, double lambda_R_concen, double lambda_ascending, double lambda_dist,
    const Tensor& gt_color, const Tensor& ranges, const Tensor& entries, const Tensor& entry_rects,
    const Tensor& vox_centers, const Tensor& vox_lengths, const Tensor& geos, const Tensor& rgbs,
    const Tensor& subdiv_p, const Tensor& tile_order, bool sparse, const Tensor& requests, const Tensor& warp_tiles,
    const Tensor& lane_requests) {
    auto frame = c10::make_intrusive<Frame>();
    Frame& f = *frame;
    f.camera = camera;
    f.n_samp = n_samp;
    f.bg = bg;
    f.need_depth = need_depth;
    f.need_distortion = need_distortion;
    f.need_normal = need_normal;
    f.track_max_w = track_max_w;
    f.lambda_R_concen = lambda_R_concen;
    f.lambda_ascending = lambda_ascending;
    f.lambda_dist = lambda_dist;
    f.gt_color = gt_color;
    f.ranges = ranges;
    f.entries = entries;
    f.entry_rects = entry_rects;
    f.tile_order = tile_order;
    f.sparse = sparse;
    f.requests = requests;
    f.warp_tiles = warp_tiles;
    f.lane_requests = lane_requests;
    // Inside the Function's forward grad mode is off: whether a backward may follow is known here.
    const bool backward_follows =
        at::GradMode::is_enabled() && (geos.requires_grad() || rgbs.requires_grad() || subdiv_p.requires_grad());
    return RasterizeVoxels::apply(frame, backward_follows, vox_centers, vox_lengths, geos, rgbs, subdiv_p);
}

std::vector<Tensor> rasterize_topk(const std::vector<double>& camera, int64_t n_samp, int64_t k, const Tensor& ranges,
                                   const Tensor& entries, const Tensor& entry_rects, const Tensor& vox_centers,
                                   const Tensor& vox_lengths, const Tensor& geos, const Tensor& tile_order, bool sparse,
                                   const Tensor& requests,
                                   const Tensor& warp_tiles, const Tensor& lane_requests) {
    TORCH_CHECK_VALUE(k >= 1 && k <= (int64_t(1) << 20), text("k: expected 1..2^20, got ", k));
    const RenderCall call = render_call(camera, n_samp, ranges, entries, entry_rects, vox_centers, vox_lengths, geos,
                                        Tensor(), tile_order, sparse, requests, warp_tiles, lane_requests);
    Tensor ids = torch::full(call.shape(k), -1, geos.options().dtype(at::kLong));
    Tensor weights = torch::zeros(call.shape(k), geos.options());
    svr::render_topk(call.cam, call.pixels, int(n_samp), int(k), call.in, ptr<int64_t>(ids), ptr<float>(weights),
                     c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {ids, weights};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("rasterize_preprocess", &rasterize_preprocess,
          "preprocess, duplicateWithKeys, sort, identifyTileRanges -> ([in_view, ranges, entries, entry_rects, "
          "tile_order, tile_masks, camera_position, requests, warp_tiles, lane_requests], paths fingerprint, "
          "the 31 camera numbers where the matrices were read on the device)",
          py::arg("camera"), py::arg("octree_paths"), py::arg("vox_centers"), py::arg("vox_lengths"),
          py::arg("pixels"), py::arg("ranks") = py::none(), py::arg("ranks_fingerprint") = 0,
          py::arg("lay_out") = false, py::arg("w2c") = py::none(), py::arg("c2w") = py::none());
    m.def("release_frame_graphs", &release_frame_graphs, "frees the frame graphs and their arenas (every device)");
    m.def("frame_graph_launches", &frame_graph_launches, "frames binned by a frame graph since the process started");
    m.def("octant_ranks", &octant_ranks, "an octree's cached octant ranks -> int32 [4, N] ([0, N]: not cacheable)");
    m.def("pixel_layout", &pixel_layout,
          "requested pixels (checked) grouped into warps -> [requests, warp_tiles, lane_requests]");
    m.def("rasterize_voxels", &rasterize_voxels,
          "forward render -> [color, depth, normal, T, max_w, aux, last (empty unless zero_gradients)] + "
          "(zero_gradients: a backward may follow) the backward's zeroed "
          "[dL_dgeos, dL_drgbs, priority]");
    m.def("rasterize_voxels_autograd", &rasterize_voxels_autograd,
          "the differentiable render, forward and backward in the extension -> [color, depth, normal, T, max_w]");
    m.def("rasterize_topk", &rasterize_topk, "per-pixel top-K contributors -> [ids, weights]");
    m.attr("MAX_NUM_LEVELS") = MAX_NUM_LEVELS;
    m.attr("MAX_N_SAMP") = MAX_N_SAMP;
    m.attr("STEP_SZ_SCALE") = STEP_SZ_SCALE;
    m.attr("MAX_ALPHA") = MAX_ALPHA;
    m.attr("MIN_ALPHA") = MIN_ALPHA;
    m.attr("EARLY_STOP_T") = EARLY_STOP_T;
    m.attr("TILE_SIZE") = TILE_SIZE;
    m.attr("MAX_VOXELS") = MAX_VOXELS;
    m.attr("MAX_EXACT_TILES") = MAX_EXACT_TILES;
    m.attr("MAX_IMAGE_SIZE") = MAX_IMAGE_SIZE;
    m.attr("WIDE_CANDIDATES") = svr::WIDE_CANDIDATES;  // scheduling only (binning.cu): tests cover both sides
    m.attr("SPLIT_WARP_REQUESTS") = svr::SPLIT_WARP_REQUESTS;  // scheduling only (requests.cu): tests check the layout
    m.attr("SPLIT_REQUESTS_MAX") = svr::SPLIT_REQUESTS_MAX;
}
