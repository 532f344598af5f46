"""Checks of everything a user passes in, in one place. Each error names the argument, what
was expected and what was received. Public tensors are float32 (float64 is refused, not cast,
on every device: a silent cast would hide a 2x memory surprise and differ from upstream)."""
import math
from typing import NamedTuple

import torch

from . import meta


def _describe(x):
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    return f"{type(x).__name__} {x!r}"


def check_tensor(name, x, shape, dtype, device=None):
    """`shape` is a tuple whose entries are ints or None (any size)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(x)}")
    if x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {_describe(x)}")
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {_describe(x)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of vox_centers), got {_describe(x)}")


def _check_number(name, value, positive=False, finite=True):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {_describe(value)}")
    if finite and not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return value


def _plainly_valid(settings):
    """True when every setting is a plain Python number inside its range and the matrices are
    4x4 float tensors, with no ground truth to check: what check_settings accepts, tested in
    one expression (a frame's checks run before its first launch, while the GPU waits). False
    sends the settings through the checks one by one, which name what is wrong."""
    s = settings
    w, h, n = s.image_width, s.image_height, s.n_samp_per_vox
    numbers = (s.tanfovx, s.tanfovy, s.cx, s.cy, s.bg_color, s.near, s.lambda_R_concen, s.lambda_ascending,
               s.lambda_dist)
    try:
        return (type(w) is int and type(h) is int and 0 < w <= meta.MAX_IMAGE_SIZE and 0 < h <= meta.MAX_IMAGE_SIZE
                and type(n) is int and 1 <= n <= meta.MAX_N_SAMP
                and all(type(x) is float or type(x) is int for x in numbers) and math.isfinite(sum(numbers))
                and s.tanfovx > 0 and s.tanfovy > 0 and s.near >= 0 and s.lambda_R_concen == 0
                and s.lambda_ascending >= 0 and s.lambda_dist >= 0
                and all(type(m) is torch.Tensor and m.shape == (4, 4) and m.is_floating_point()
                        for m in (s.w2c_matrix, s.c2w_matrix)))
    except OverflowError:  # an int too large for a float: the checks one by one say so
        return False


class DeviceCamera(NamedTuple):
    """A CUDA frame's camera whose matrices are float32 on the voxels' device: the compiled
    preprocess reads them there, and their values come back with the frame's one device read
    (checked finite then) instead of being read back before its first launch, which would wait
    for the GPU's queue (SVRaster's training code keeps its cameras on the GPU)."""
    scalars: list       # camera_args' first seven numbers: W, H, tanfovx, tanfovy, cx, cy, near
    w2c: torch.Tensor
    c2w: torch.Tensor


def check_settings(settings, device, n_pixels=None, matrices_stay=False):
    """Validate RasterSettings for rendering on `device` (`n_pixels` requested pixels for a
    sparse render, whose gt_color may then also be [3, n_pixels]). Returns camera_args(settings),
    or with `matrices_stay` (the compiled renderer on a CUDA `device`) a DeviceCamera where
    both matrices are float32 tensors on `device`."""
    if not _plainly_valid(settings):
        _check_each_setting(settings, n_pixels)
    w2c, c2w = settings.w2c_matrix, settings.c2w_matrix
    if (matrices_stay and w2c.device == device and c2w.device == device and w2c.dtype is torch.float32
            and c2w.dtype is torch.float32):
        return DeviceCamera(_camera_scalars(settings), w2c, c2w)
    return camera_args(settings)


def _check_each_setting(settings, n_pixels):
    for name in ("image_width", "image_height"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"raster_settings.{name}: expected a positive int, got {_describe(value)}")
    if settings.image_width > meta.MAX_IMAGE_SIZE or settings.image_height > meta.MAX_IMAGE_SIZE:
        raise ValueError("raster_settings.image_width/image_height: images up to "
                         f"{meta.MAX_IMAGE_SIZE} x {meta.MAX_IMAGE_SIZE} are supported, "
                         f"got {settings.image_width} x {settings.image_height}")
    n = settings.n_samp_per_vox
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= meta.MAX_N_SAMP:
        raise ValueError(f"raster_settings.n_samp_per_vox: expected an int in 1..{meta.MAX_N_SAMP}, got {_describe(n)}")
    for name in ("tanfovx", "tanfovy"):
        _check_number(f"raster_settings.{name}", getattr(settings, name), positive=True)
    for name in ("cx", "cy", "bg_color"):
        _check_number(f"raster_settings.{name}", getattr(settings, name))
    near = _check_number("raster_settings.near", settings.near)
    if near < 0:
        raise ValueError(f"raster_settings.near: expected a number >= 0, got {near!r}")
    for name in ("lambda_R_concen", "lambda_ascending", "lambda_dist"):
        value = _check_number(f"raster_settings.{name}", getattr(settings, name))
        if value < 0:
            raise ValueError(f"raster_settings.{name}: expected a number >= 0, got {value!r}")
    for name in ("w2c_matrix", "c2w_matrix"):
        m = getattr(settings, name)
        if not isinstance(m, torch.Tensor) or tuple(m.shape) != (4, 4) or not m.is_floating_point():
            raise ValueError(f"raster_settings.{name}: expected a 4x4 float tensor, got {_describe(m)}")
    if settings.lambda_R_concen > 0:
        gt = settings.gt_color
        shapes = [(3, settings.image_height, settings.image_width)] + ([(3, n_pixels)] if n_pixels is not None else [])
        if not isinstance(gt, torch.Tensor) or tuple(gt.shape) not in shapes:
            want = " or ".join(str(list(x)) for x in shapes)
            raise ValueError(f"raster_settings.gt_color: expected shape {want} when lambda_R_concen > 0, got {_describe(gt)}")


def _plain_voxels(octree_paths, vox_centers, vox_lengths):
    """True when the three are plain tensors (not subclasses) of shapes [N, 1], [N, 3], [N, 1],
    dtypes int64, float32, float32, on one device, N at most MAX_VOXELS: what check_voxels'
    checks of types, shapes and devices accept, tested in one expression (before the frame's
    first launch, while the GPU waits). False sends them through the checks one by one."""
    p, c, s = octree_paths, vox_centers, vox_lengths
    return (type(p) is torch.Tensor and type(c) is torch.Tensor and type(s) is torch.Tensor
            and p.dtype is torch.int64 and c.dtype is torch.float32 and s.dtype is torch.float32
            and c.dim() == 2 and p.dim() == 2 and s.dim() == 2
            and c.shape[1] == 3 and p.shape[1] == 1 and s.shape[1] == 1
            and p.shape[0] == c.shape[0] == s.shape[0] <= meta.MAX_VOXELS
            and p.device == c.device == s.device)


def check_voxels(octree_paths, vox_centers, vox_lengths, values=False):
    """Shapes, dtypes and devices always; the voxel sizes' values on CPU tensors, and on CUDA
    only with `values` (RasterSettings.debug), since reading them back stalls the GPU. A
    non-positive size cannot crash the kernels: its box is empty and it is never drawn."""
    if not _plain_voxels(octree_paths, vox_centers, vox_lengths):
        _check_each_voxel_tensor(octree_paths, vox_centers, vox_lengths)
    if (values or vox_lengths.is_cpu) and vox_centers.shape[0] and not bool((vox_lengths > 0).all()):
        raise ValueError(f"vox_lengths: expected positive voxel sizes, got min {vox_lengths.min().item()!r}")


def _check_each_voxel_tensor(octree_paths, vox_centers, vox_lengths):
    if not isinstance(vox_centers, torch.Tensor):
        raise TypeError(f"vox_centers: expected a torch.Tensor, got {_describe(vox_centers)}")
    device = vox_centers.device
    check_tensor("vox_centers", vox_centers, (None, 3), torch.float32)
    n = vox_centers.shape[0]
    check_tensor("octree_paths", octree_paths, (n, 1), torch.int64, device)
    check_tensor("vox_lengths", vox_lengths, (n, 1), torch.float32, device)
    if n > meta.MAX_VOXELS:
        raise ValueError(f"vox_centers: at most {meta.MAX_VOXELS} voxels are supported, got {n}")


def _plain_params(params, n, device):
    """True when vox_fn's dict holds geos, rgbs and subdiv_p as float32 tensors of shapes
    [n, 8], [n, 3], [n, 1] on `device`: what check_vox_params' checks one by one accept, tested
    in one expression (between the frame's device read and its render launch, while the GPU
    waits). False sends them through the checks one by one."""
    if not (isinstance(params, dict) and "geos" in params and "rgbs" in params and "subdiv_p" in params):
        return False
    g, r, s = params["geos"], params["rgbs"], params["subdiv_p"]
    return (isinstance(g, torch.Tensor) and isinstance(r, torch.Tensor) and isinstance(s, torch.Tensor)
            and g.dtype is torch.float32 and r.dtype is torch.float32 and s.dtype is torch.float32
            and g.shape == (n, 8) and r.shape == (n, 3) and s.shape == (n, 1)
            and g.device == device and r.device == device and s.device == device)


def check_vox_params(params, n, device, values=False):
    if not _plain_params(params, n, device):
        _check_each_vox_param(params, n, device)
    if values:
        for name in ("geos", "rgbs"):
            if not bool(torch.isfinite(params[name]).all()):
                raise ValueError(f"vox_fn()['{name}']: expected finite values (RasterSettings.debug is on)")


def _check_each_vox_param(params, n, device):
    if not isinstance(params, dict):
        raise TypeError(f"vox_fn: expected it to return a dict with 'geos', 'rgbs', 'subdiv_p', got {_describe(params)}")
    missing = [k for k in ("geos", "rgbs", "subdiv_p") if k not in params]
    if missing:
        raise ValueError(f"vox_fn: the returned dict lacks {missing}; it has {sorted(params)}")
    check_tensor("vox_fn()['geos']", params["geos"], (n, 8), torch.float32, device)
    check_tensor("vox_fn()['rgbs']", params["rgbs"], (n, 3), torch.float32, device)
    check_tensor("vox_fn()['subdiv_p']", params["subdiv_p"], (n, 1), torch.float32, device)


def camera_args(settings):
    """The 31 numbers that define a camera (and image size), as the kernels take them:
    W, H, tanfovx, tanfovy, cx, cy, near, w2c (3x4 rows), c2w (3x4 rows). The matrices are read
    as Python numbers once (no tensor ops) and must be finite."""
    rows = {}
    for name in ("w2c_matrix", "c2w_matrix"):
        m = getattr(settings, name).tolist()
        flat = m[0] + m[1] + m[2] + m[3]
        # A sum is finite when its terms are (or, in float64, may overflow: then look closer).
        if not math.isfinite(sum(flat)) and not all(map(math.isfinite, flat)):
            raise ValueError(f"raster_settings.{name}: expected finite values, got {m}")
        rows[name] = flat[:12]
    return _camera_scalars(settings) + rows["w2c_matrix"] + rows["c2w_matrix"]


def _camera_scalars(settings):
    return [float(settings.image_width), float(settings.image_height), float(settings.tanfovx),
            float(settings.tanfovy), float(settings.cx), float(settings.cy), float(settings.near)]


def check_pixels(pixels, device):
    """`pixels`: int64 [P, 2] of (row, col). Their values (inside the image) are checked where
    they are read: by the backends' preprocess and pixel layout (on CUDA, without an extra
    device read)."""
    check_tensor("pixels", pixels, (None, 2), torch.int64, device)


def check_k(k):
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected an int >= 1, got {_describe(k)}")
