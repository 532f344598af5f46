"""Shared test fixtures: golden data, random octrees, cameras, and a brute-force per-ray
evaluation of SPEC section 3 in float64 that orders voxels by distance (not by rank)."""
import math
import os
from pathlib import Path

import pytest
import torch

from svraster_cuda import cameras, meta, utils
from svraster_cuda.renderer import RasterSettings, rasterize_voxels

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SVRASTER_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden" / "golden_upstream.pt"


def load_golden():
    if not GOLDEN.is_file():
        pytest.skip(f"golden data not found at {GOLDEN} (set SVRASTER_SHARED to the shared/ folder)")
    return torch.load(GOLDEN, weights_only=True)


def device_or_skip(name):
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device on this machine; GPU tests run through scripts/gpu_check.sh")
        from svraster_cuda import cuda_backend
        assert cuda_backend.available(), "a CUDA device is present but the _C extension is not available"
    return torch.device(name)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def look_at(eye, target):
    """(w2c, c2w) float32 of an OpenCV camera at `eye` looking at `target`."""
    c2w = cameras.look_at(eye, target)
    return torch.linalg.inv(c2w).float(), c2w.float()


def make_settings(eye, target, width=24, height=20, fov_deg=60.0, cx=None, cy=None, **kw):
    w2c, c2w = look_at(eye, target)
    tanx = math.tan(math.radians(fov_deg) / 2)
    tany = tanx * height / width
    return RasterSettings(color_mode="sh", n_samp_per_vox=kw.pop("n_samp_per_vox", 1), image_width=width,
                          image_height=height, tanfovx=tanx, tanfovy=tany,
                          cx=width / 2 if cx is None else cx, cy=height / 2 if cy is None else cy,
                          w2c_matrix=w2c, c2w_matrix=c2w, **kw)


def golden_settings(case):
    st = dict(case["settings"])
    n = st.pop("n_samp")
    bg = st.pop("bg", 0)
    gt = case["gt_color"] if case["gt_color"] is not None else torch.empty(0)
    return RasterSettings(color_mode="sh", n_samp_per_vox=n, bg_color=bg, gt_color=gt, **case["camera"], **st)


def random_octree(seed, max_level=4, split_prob=0.6, keep_prob=0.7, scene_min=(-1.0, -1.0, -1.0), extent=2.0):
    """Leaves of a random octree over a cube; some leaves dropped (sparse). Returns
    (octpath [N,1], octlevel [N,1], centers [N,3], lengths [N,1])."""
    gen = torch.Generator().manual_seed(seed)
    ijk = torch.zeros(1, 3, dtype=torch.long)
    level = torch.zeros(1, dtype=torch.long)
    leaves_ijk, leaves_lv = [], []
    offsets = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
    while len(ijk):
        split = (level == 0) | ((torch.rand(len(ijk), generator=gen) < split_prob) & (level < max_level))
        leaves_ijk.append(ijk[~split])
        leaves_lv.append(level[~split])
        ijk = (ijk[split, None, :] * 2 + offsets).reshape(-1, 3)
        level = (level[split, None] + 1).expand(-1, 8).reshape(-1)
    ijk, level = torch.cat(leaves_ijk), torch.cat(leaves_lv)
    keep = torch.rand(len(ijk), generator=gen) < keep_prob
    ijk, level = ijk[keep], level[keep, None]
    size = extent * 2.0 ** (-level.double())
    centers = torch.tensor(scene_min, dtype=torch.float64) + (ijk + 0.5) * size
    octpath = utils.ijk_2_octpath(ijk, level)
    return octpath, level.to(torch.int8), centers.float(), size.float()


def random_params(n, seed, density_scale=3.0, offset=-1.0):
    gen = torch.Generator().manual_seed(seed + 1000)
    geos = torch.randn(n, 8, generator=gen) * density_scale + offset
    rgbs = torch.rand(n, 3, generator=gen)
    return geos, rgbs


def render(settings, octpath, centers, lengths, geos, rgbs, device="cpu", grad=False):
    """rasterize_voxels with constant parameters; returns outputs and the leaf tensors."""
    geos = geos.to(device).clone().requires_grad_(grad)
    rgbs = rgbs.to(device).clone().requires_grad_(grad)
    subdiv = torch.zeros(len(geos), 1, device=device, requires_grad=grad)
    out = rasterize_voxels(settings, octpath.to(device), centers.to(device), lengths.to(device),
                           lambda idx, cam_pos, color_mode: {"geos": geos, "rgbs": rgbs, "subdiv_p": subdiv})
    return out, (geos, rgbs, subdiv)


def brute_force_pixel(settings, x, y, centers, lengths, geos, rgbs, weights_out=None):
    """SPEC section 3 for one pixel in float64: colour [3], T, mean depth, normal [3]. With
    `weights_out` (a list), appends (voxel id, blending weight) of each used voxel, front first."""
    f64 = torch.float64
    W, H = settings.image_width, settings.image_height
    d_cam = torch.tensor([(x + 0.5 - settings.cx) * 2 * settings.tanfovx / W,
                          (y + 0.5 - settings.cy) * 2 * settings.tanfovy / H, 1.0], dtype=f64)
    c2w = settings.c2w_matrix.to(f64)
    ro, rd = c2w[:3, 3], c2w[:3, :3] @ d_cam / d_cam.norm()
    c, L, g = centers.to(f64), lengths.to(f64), geos.to(f64)
    lo, hi = c - L / 2, c + L / 2
    with torch.no_grad():
        t0 = torch.where(rd == 0, torch.where((lo <= ro) & (ro <= hi), -math.inf, math.inf), torch.minimum((lo - ro) / rd, (hi - ro) / rd))
        t1 = torch.where(rd == 0, torch.where((lo <= ro) & (ro <= hi), math.inf, -math.inf), torch.maximum((lo - ro) / rd, (hi - ro) / rd))
    a = torch.clamp(t0.amax(1), min=settings.near * d_cam.norm().item())
    b = t1.amin(1)
    ok = (a <= b) & ((c - ro).norm(dim=1) >= settings.near)
    order = [i for i in torch.argsort(a).tolist() if ok[i]]
    T, color, depth, normal = 1.0, torch.zeros(3, dtype=f64), 0.0, torch.zeros(3, dtype=f64)
    n = settings.n_samp_per_vox
    for i in order:
        step = (b[i] - a[i]) / n
        integral = 0.0
        for k in range(n):
            t = a[i] + (k + 0.5) * step
            u = (ro + t * rd - lo[i]) / L[i]
            w = torch.stack([(u[0] if cx else 1 - u[0]) * (u[1] if cy else 1 - u[1]) * (u[2] if cz else 1 - u[2])
                             for cx in (0, 1) for cy in (0, 1) for cz in (0, 1)])
            d = (w * g[i]).sum()
            sigma = d if d > meta.ACTIVATION_KNEE else meta.ACTIVATION_KNEE * torch.exp((d - meta.ACTIVATION_KNEE) / meta.ACTIVATION_KNEE)
            integral = integral + meta.STEP_SZ_SCALE * step * sigma
        alpha = min(meta.MAX_ALPHA, 1 - math.exp(-float(integral)))
        if alpha < meta.MIN_ALPHA:
            continue
        wgt = T * alpha
        if weights_out is not None:
            weights_out.append((i, wgt))
        color += wgt * rgbs[i].to(f64)
        depth += T * alpha * float(a[i] + b[i]) / 2 if n == 1 else 0.0
        gv = g[i].reshape(2, 2, 2)
        grad = torch.stack([gv[1].sum() - gv[0].sum(), gv[:, 1].sum() - gv[:, 0].sum(), gv[:, :, 1].sum() - gv[:, :, 0].sum()])
        normal += wgt * grad / torch.sqrt((grad * grad).sum() + meta.NORMAL_EPS)
        T *= 1 - alpha
        if T < meta.EARLY_STOP_T:
            break
    return color + T * settings.bg_color, T, depth / d_cam.norm().item(), normal
