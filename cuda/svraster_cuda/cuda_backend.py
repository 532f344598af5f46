"""The compiled `_C` extension behind the same stage interface as `reference`.

`_C` is the extension built by `pip install --no-build-isolation -e .`. When it is missing but
CUDA is present, the first CUDA call compiles it just in time from `cuda/src` with
`torch.utils.cpp_extension.load` (cached in TORCH_EXTENSIONS_DIR); compiler errors are raised
in full."""
import glob
import os
import sys
from typing import NamedTuple

import torch

from . import validation


_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
_C = None
_load_error = None


def _load():
    global _C, _load_error
    if _C is not None or _load_error is not None:
        return _C
    try:
        from . import _C as compiled
        _C = compiled
        return _C
    except ImportError as exc:
        _load_error = exc
    if torch.cuda.is_available() and torch.version.cuda and os.path.isdir(_SRC):
        from torch.utils.cpp_extension import load
        print("svraster_cuda: the CUDA extension is not built; compiling it now (once, then cached)...",
              file=sys.stderr, flush=True)
        sources = sorted(glob.glob(os.path.join(_SRC, "*.cu"))) + sorted(glob.glob(os.path.join(_SRC, "*.cpp")))
        _C = load(name="svraster_cuda_C", sources=sources, extra_include_paths=[_SRC],
                  extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-lineinfo"], verbose=False)
        _load_error = None
    return _C


def available():
    return _load() is not None


class SparsePixels(NamedTuple):
    """Requested pixels grouped by tile into warps of at most 32 (8 in frames of at most
    SPLIT_REQUESTS_MAX requests: rasterizer.h's requests_per_warp), in rasterizer.h's PixelSet."""
    requests: torch.Tensor       # [P, 2] int32 (row, col)
    warp_tiles: torch.Tensor     # [n_warps] int32, -1 for a spare warp
    lane_requests: torch.Tensor  # [n_warps * 32] int32, -1 for an idle lane


class CudaState(NamedTuple):
    camera: list            # the 31 numbers of rasterizer.h's Camera
    ranges: torch.Tensor    # [n_tiles, 2] int32
    entries: torch.Tensor   # [M] int32, sorted: octant << 29 | voxel id
    entry_rects: torch.Tensor  # [M] int16 each entry's pixel rectangle within its tile (4 bits a side)
    tile_order: torch.Tensor  # [n_tiles] int32 the whole image's render order, longest list first ([0] with pixels)
    camera_position: torch.Tensor  # [3] float32, written by preprocess
    tile_masks: torch.Tensor = None  # [n_tiles] int64 requested pixels binned for, bit TILE_SIZE * y + x (None: all)
    layout: SparsePixels = None  # the pixels binned for, laid out by the preprocess call (lay_out)


_NO_PIXELS = torch.empty(0, dtype=torch.int32)  # the whole image's placeholder requests (never read)
_NO_GROUND_TRUTH = torch.empty(0)  # read only where lambda_R_concen > 0


def _pixel_args(state, layout):
    if layout is None:
        return state.tile_order, False, _NO_PIXELS, _NO_PIXELS, _NO_PIXELS
    return state.tile_order, True, layout.requests, layout.warp_tiles, layout.lane_requests


def camera_position(settings, state, device):
    """vox_fn's camera position on `device`, in the matrices' dtype: the one preprocess wrote
    (a host-to-device copy would wait for the GPU's queue; a pinned one was slower still)."""
    if settings.c2w_matrix.dtype != torch.float32:
        camera = state.camera
        return torch.tensor([camera[22], camera[26], camera[30]], dtype=settings.c2w_matrix.dtype, device=device)
    return state.camera_position


class OctantRanks(NamedTuple):
    fingerprint: int      # PATHS_FINGERPRINT of the octpaths they were built for
    ranks: torch.Tensor   # int32 [4, N], or None where the paths cannot be cached (not distinct)


# Cached octant ranks (rasterizer.h): one octree per device, built when a frame's octpaths
# have the fingerprint of the previous frame's (so that one-off renders never pay the build),
# or at once with SVRASTER_OCTANT_RANKS=eager; =off never builds them.
_octant_ranks = {}
_last_fingerprint = {}


def release_octant_ranks():
    """Frees the cached octant ranks of every device (16 bytes a voxel of the last octree
    rendered twice in a row) and the frame graphs that bin with them (their arenas: about the
    binning memory of a frame); the next frames build them again."""
    _octant_ranks.clear()
    _last_fingerprint.clear()
    if _C is not None:
        _C.release_frame_graphs()


def _octant_ranks_policy():
    policy = os.environ.get("SVRASTER_OCTANT_RANKS", "auto")
    if policy not in ("auto", "eager", "off"):
        raise ValueError(f"SVRASTER_OCTANT_RANKS: expected auto, eager or off, got {policy!r}")
    return policy


def rasterize_preprocess(settings, camera, octree_paths, vox_centers, vox_lengths, pixels=None, lay_out=False):
    """`camera`: validation.camera_args(settings), computed once by the caller, or a
    validation.DeviceCamera (the state then holds the 31 numbers its matrices held). With `pixels`
    (int64 [P, 2]), only the tiles holding them; pixels outside the image raise ValueError
    (checked in the frame's one device read). `lay_out`: the frame renders those pixels at once,
    and the call lays them out for it (the state's `layout`, pixel_layout's without `verify`)."""
    policy = _octant_ranks_policy()
    device = vox_centers.device
    cached = _octant_ranks.get(device) if policy != "off" else None
    usable = cached is not None and cached.ranks is not None and cached.ranks.shape[1] == vox_centers.shape[0]
    paths = octree_paths.contiguous()
    matrices = (camera.w2c, camera.c2w) if isinstance(camera, validation.DeviceCamera) else ()
    outputs, fingerprint, device_camera = _load().rasterize_preprocess(
        camera.scalars if matrices else camera, paths, vox_centers.contiguous(), vox_lengths.contiguous(),
        None if pixels is None else pixels.contiguous(), cached.ranks if usable else None,
        cached.fingerprint if usable else 0, lay_out, *matrices)
    if matrices:
        camera = device_camera
    in_view, ranges, entries, entry_rects, tile_order, tile_masks, position, *layout = outputs
    if policy != "off" and not (cached is not None and cached.fingerprint == fingerprint):
        if policy == "eager" or _last_fingerprint.get(device) == fingerprint:
            _octant_ranks.pop(device, None)  # its memory goes to the new ones
            ranks = _load().octant_ranks(paths)
            _octant_ranks[device] = OctantRanks(fingerprint, ranks if len(ranks) else None)
        _last_fingerprint[device] = fingerprint
    if pixels is None:
        return in_view, CudaState(camera, ranges, entries, entry_rects, tile_order, position)
    return in_view, CudaState(camera, ranges, entries, entry_rects, tile_order, position, tile_masks,
                              SparsePixels(*layout) if lay_out else None)


def pixel_layout(settings, state, pixels, dtype, device, verify=False):
    """None for the whole image; for requested pixels, their grouping into warps of one tile
    (the tiles longest list first over the whole image's lists, in index order over lists
    binned for requested pixels; no device read). `verify` checks them first (one read):
    inside the image, and among the pixels `state` was binned for. Without `verify`, `pixels`
    are those `state` was built for, which its preprocess call laid out (`lay_out`) and checked."""
    if pixels is None:
        return None
    if not verify:
        return state.layout
    return SparsePixels(*_load().pixel_layout(state.camera, pixels.contiguous(), state.tile_order, state.tile_masks))


def rasterize_forward(settings, state, layout, vox_centers, vox_lengths, geos, rgbs):
    """The outputs (color, depth, normal, T, max_w) of a frame without autograd's graph."""
    color, depth, normal, T, max_w, *_ = _load().rasterize_voxels(
        state.camera, settings.n_samp_per_vox, float(settings.bg_color), bool(settings.need_depth),
        settings.lambda_dist > 0, bool(settings.need_normal), bool(settings.track_max_w),
        state.ranges, state.entries, state.entry_rects, vox_centers.contiguous(), vox_lengths.contiguous(),
        geos.contiguous(), rgbs.contiguous(), *_pixel_args(state, layout), False)
    return color, depth, normal, T, max_w


def rasterize_differentiable(settings, state, layout, vox_centers, vox_lengths, geos, rgbs, subdiv_p):
    """The outputs with autograd's graph, through the extension's own autograd Function
    (bindings.cpp's RasterizeVoxels: a training step's backward runs without Python), with
    reference.RasterizeVoxels' semantics. The incoming gradients and the ground truth are
    read in any strides."""
    gt = settings.gt_color
    gt = gt.to(device=geos.device, dtype=torch.float32) if settings.lambda_R_concen > 0 else _NO_GROUND_TRUTH
    return _load().rasterize_voxels_autograd(
        state.camera, settings.n_samp_per_vox, float(settings.bg_color), bool(settings.need_depth),
        settings.lambda_dist > 0, bool(settings.need_normal), bool(settings.track_max_w),
        float(settings.lambda_R_concen), float(settings.lambda_ascending), float(settings.lambda_dist), gt,
        state.ranges, state.entries, state.entry_rects, vox_centers.contiguous(), vox_lengths.contiguous(),
        geos.contiguous(), rgbs.contiguous(), subdiv_p, *_pixel_args(state, layout))


def rasterize_topk(settings, state, layout, vox_centers, vox_lengths, geos, k):
    ids, weights = _load().rasterize_topk(
        state.camera, settings.n_samp_per_vox, int(k), state.ranges, state.entries, state.entry_rects,
        vox_centers.contiguous(), vox_lengths.contiguous(), geos.contiguous(), *_pixel_args(state, layout))
    return ids, weights
