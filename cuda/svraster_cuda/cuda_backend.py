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


class CudaState(NamedTuple):
    camera: list            # the 31 numbers of rasterizer.h's Camera
    ranges: torch.Tensor    # [n_tiles, 2] int32
    entries: torch.Tensor   # [M] int32, sorted: octant << 29 | voxel id
    pixel_rect: torch.Tensor  # [N, 4] int32 conservative pixel rectangle per voxel


def camera_args(settings):
    w2c = settings.w2c_matrix.detach().to("cpu", torch.float64)
    c2w = settings.c2w_matrix.detach().to("cpu", torch.float64)
    return [float(settings.image_width), float(settings.image_height), float(settings.tanfovx),
            float(settings.tanfovy), float(settings.cx), float(settings.cy), float(settings.near),
            *w2c[:3].reshape(-1).tolist(), *c2w[:3].reshape(-1).tolist()]


def rasterize_preprocess(settings, octree_paths, vox_centers, vox_lengths):
    camera = camera_args(settings)
    n_duplicates, in_view, ranges, entries, pixel_rect = _load().rasterize_preprocess(
        camera, octree_paths.contiguous(), vox_centers.contiguous(), vox_lengths.contiguous())
    return in_view, CudaState(camera, ranges, entries, pixel_rect)


def rasterize_forward(settings, state, vox_centers, vox_lengths, geos, rgbs):
    color, depth, normal, T, max_w, aux, last = _load().rasterize_voxels(
        state.camera, settings.n_samp_per_vox, float(settings.bg_color), bool(settings.need_depth),
        settings.lambda_dist > 0, bool(settings.need_normal), bool(settings.track_max_w),
        state.ranges, state.entries, state.pixel_rect, vox_centers.contiguous(), vox_lengths.contiguous(), geos.contiguous(),
        rgbs.contiguous())
    return (color, depth, normal, T, max_w), (T, aux, last)


def rasterize_backward(settings, state, saved, vox_centers, vox_lengths, geos, rgbs, dL_dcolor, dL_ddepth,
                       dL_dnormal, dL_dT):
    T, aux, last = saved
    gt = settings.gt_color
    gt = gt.to(device=geos.device, dtype=torch.float32).contiguous() if settings.lambda_R_concen > 0 else geos.new_empty(0)
    grad_geos, grad_rgbs, priority = _load().rasterize_voxels_backward(
        state.camera, settings.n_samp_per_vox, float(settings.bg_color), bool(settings.need_depth),
        bool(settings.need_normal), float(settings.lambda_R_concen), float(settings.lambda_ascending),
        float(settings.lambda_dist), gt, state.ranges, state.entries, state.pixel_rect, vox_centers.contiguous(),
        vox_lengths.contiguous(), geos.contiguous(), rgbs.contiguous(), T, aux, last,
        dL_dcolor, dL_ddepth, dL_dnormal, dL_dT)
    return grad_geos, grad_rgbs, priority
