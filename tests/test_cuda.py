"""CUDA path against the reference renderer (run on the device; skipped without CUDA)."""
import math
from types import SimpleNamespace

import pytest
import torch

from helpers import device_or_skip, make_settings, random_octree, random_params, render
from svraster_cuda.renderer import rasterize_voxels

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    return device_or_skip("cuda")


def compare(settings, scene, cuda, grad=True, atol=2e-4):
    octpath, centers, lengths, geos, rgbs = scene
    out_r, leaves_r = render(settings, octpath, centers, lengths, geos, rgbs, "cpu", grad=grad)
    cuda_settings = settings._replace(gt_color=settings.gt_color.to(cuda))
    out_c, leaves_c = render(cuda_settings, octpath, centers, lengths, geos, rgbs, cuda, grad=grad)
    names = ("color", "depth", "normal", "T", "max_w")
    for name, r, c in zip(names, out_r, out_c):
        c = c.detach().cpu()
        assert r.shape == c.shape, name
        if name == "depth" and r.numel():
            assert (r[:2] - c[:2]).abs().max() <= atol, name
            assert ((r[2] - c[2]).abs() > 1e-4).float().mean() <= 0.01, "median depth"
        elif r.numel():
            assert torch.nan_to_num(r - c, nan=1.0).abs().max() <= atol, name
    if grad:
        gen = torch.Generator().manual_seed(0)
        weights = [torch.randn(o.shape, generator=gen) for o in out_r[:4]]
        sum((o * w).sum() for o, w in zip(out_r[:4], weights) if o.numel()).backward()
        sum((o * w.to(cuda)).sum() for o, w in zip(out_c[:4], weights) if o.numel()).backward()
        for name, a, b in zip(("geos", "rgbs", "subdiv_p"), leaves_r, leaves_c):
            scale = a.grad.abs().max().clamp(min=1e-6)
            err = (a.grad - b.grad.cpu()).abs().max() / scale
            assert err <= 1e-3, f"{name}: relative error {err:.2e}"


def random_scene(seed, **kw):
    octpath, _, centers, lengths = random_octree(seed, **kw)
    geos, rgbs = random_params(len(octpath), seed, density_scale=2.0, offset=-0.5)
    return octpath, centers, lengths, geos, rgbs


FULL = dict(need_depth=True, need_normal=True, track_max_w=True, lambda_dist=0.3, lambda_ascending=0.2)


@pytest.mark.parametrize("n_samp", [1, 2, 3])
@pytest.mark.parametrize("camera", ["outside", "inside_scene", "near_plane", "off_centre"])
def test_random_scenes(cuda, n_samp, camera):
    scene = random_scene(7 + n_samp, max_level=4)
    eye, target, kw = {
        "outside": ((2.7, -1.9, 1.4), (0, 0, 0), {}),
        "inside_scene": ((0.11, 0.23, -0.31), (1, -0.4, 0.2), {"fov_deg": 110}),
        "near_plane": ((0.4, -0.3, 0.2), (-1, 0.2, 0.1), {"near": 0.2, "fov_deg": 100}),
        "off_centre": ((2.2, 1.7, -1.1), (0, 0, 0), {"cx": 5.3, "cy": 30.1}),
    }[camera]
    settings = make_settings(eye, target, width=47, height=33, n_samp_per_vox=n_samp, bg_color=0.3, **FULL, **kw)
    gt = torch.rand(3, 33, 47, generator=torch.Generator().manual_seed(1))
    compare(settings._replace(lambda_R_concen=0.5, gt_color=gt), scene, cuda)


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (16, 16), (33, 17)])
def test_odd_image_sizes(cuda, size):
    scene = random_scene(3)
    settings = make_settings((2.0, 2.2, 1.5), (0, 0, 0), width=size[0], height=size[1], fov_deg=40, **FULL)
    compare(settings, scene, cuda)


def test_empty_and_nothing_in_view(cuda):
    settings = make_settings((0, 0, 5.0), (0, 0, 0), width=20, height=10, bg_color=0.5, **FULL)
    empty = (torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0, 1), torch.zeros(0, 8), torch.zeros(0, 3))
    compare(settings, empty, cuda, grad=False)
    octpath, centers, lengths, geos, rgbs = random_scene(4)
    behind = (octpath, centers + torch.tensor([0, 0, 20.0]), lengths, geos, rgbs)
    compare(settings, behind, cuda)


@pytest.mark.parametrize("matrix_device, dtype", [("cpu", torch.float32), ("cuda", torch.float32),
                                                  ("cpu", torch.float64)])
def test_vox_fn_camera_position(cuda, matrix_device, dtype):
    """vox_fn gets the camera position on the voxels' device, in the matrices' dtype, whether
    the matrices live on the host (written by preprocess) or on the device (a view), and with
    intersections reused (also for requested pixels)."""
    octpath, centers, lengths, geos, rgbs = random_scene(4)
    settings = make_settings((0.7, -2.0, 1.3), (0, 0, 0), width=20, height=10)
    settings = settings._replace(w2c_matrix=settings.w2c_matrix.to(matrix_device, dtype),
                                 c2w_matrix=settings.c2w_matrix.to(matrix_device, dtype))
    seen = []

    def vox_fn(idx, cam_pos, color_mode):
        seen.append(cam_pos)
        return {"geos": geos.to(cuda), "rgbs": rgbs.to(cuda), "subdiv_p": torch.zeros(len(geos), 1, device=cuda)}

    from svraster_cuda.renderer import intersect_voxels, rasterize_voxels_sparse
    voxels = (octpath.to(cuda), centers.to(cuda), lengths.to(cuda))
    pixels = torch.tensor([[3, 4], [9, 19]], device=cuda)
    rasterize_voxels(settings, *voxels, vox_fn)
    rasterize_voxels(settings, *voxels, vox_fn, intersections=intersect_voxels(settings, *voxels))
    rasterize_voxels_sparse(settings, *voxels, vox_fn, pixels)
    rasterize_voxels_sparse(settings, *voxels, vox_fn, pixels,
                            intersections=intersect_voxels(settings, *voxels, pixels=pixels))
    assert len(seen) == 4
    for cam_pos in seen:
        assert cam_pos.device == voxels[1].device and cam_pos.dtype == dtype
        assert torch.equal(cam_pos.cpu(), settings.c2w_matrix[:3, 3].cpu())


def _on_device(settings, cuda, layout="contiguous"):
    """The settings with their matrices as float32 CUDA tensors (column-major: a transposed view)."""
    def move(m):
        m = m.to(cuda, torch.float32)
        return m.t().contiguous().t() if layout == "column-major" else m
    return settings._replace(w2c_matrix=move(settings.w2c_matrix), c2w_matrix=move(settings.c2w_matrix))


@pytest.mark.parametrize("layout", ["contiguous", "column-major"])
def test_device_matrices_match_host_matrices(cuda, layout):
    """Float32 CUDA matrices are read by preprocess on the device (validation.DeviceCamera):
    every output equals the one with the same matrices on the host, bit for bit, and so does
    every gradient up to the order of the backward's float atomics, for dense and sparse
    frames, top-K and reused intersections; the frame synchronises with the device through no
    PyTorch operation (the matrices are not read back before it)."""
    from svraster_cuda.renderer import intersect_voxels, rasterize_voxels_sparse, topk_contributors
    octpath, centers, lengths, geos, rgbs = random_scene(11)
    gt = torch.rand(3, 21, 30, generator=torch.Generator().manual_seed(2))
    host = make_settings((1.9, -1.6, 1.2), (0, 0, 0), width=30, height=21, n_samp_per_vox=2, bg_color=0.2,
                         lambda_R_concen=0.3, gt_color=gt.to(cuda), **FULL)
    dev = _on_device(host, cuda, layout)
    voxels = (octpath.to(cuda), centers.to(cuda), lengths.to(cuda))
    pixels = torch.tensor([[0, 0], [20, 29], [7, 11], [7, 11], [13, 2]], device=cuda)
    weights = [torch.randn(3, 21, 30, generator=torch.Generator().manual_seed(k)).to(cuda) for k in range(4)]
    geos_c, rgbs_c = geos.to(cuda), rgbs.to(cuda)

    def frame(settings, sparse=False, intersections=None):
        # Only device-to-device copies here (a host-to-device copy synchronises).
        g, r = geos_c.clone().requires_grad_(), rgbs_c.clone().requires_grad_()
        s = torch.zeros(len(g), 1, device=cuda, requires_grad=True)
        vox_fn = lambda *a: {"geos": g, "rgbs": r, "subdiv_p": s}  # noqa: E731
        if sparse:
            out = rasterize_voxels_sparse(settings, *voxels, vox_fn, pixels, intersections=intersections)
            w = [x[:, pixels[:, 0], pixels[:, 1]] for x in weights]
        else:
            out = rasterize_voxels(settings, *voxels, vox_fn, intersections=intersections)
            w = weights
        sum((o * x[:len(o)]).sum() for o, x in zip(out[:4], w)).backward()
        return [o.detach() for o in out], [g.grad, r.grad, s.grad]

    def assert_equal(a, b):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert torch.equal(x, y)

    def assert_same_frame(a, b):
        assert_equal(a[0], b[0])
        for x, y in zip(a[1], b[1]):  # atomics add in any order: an ulp or so of the largest
            assert (x - y).abs().max() <= 1e-5 * y.abs().max()

    torch.cuda.set_sync_debug_mode("error")
    try:
        on_device = [frame(dev), frame(dev, sparse=True)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_same_frame(on_device[0], frame(host))
    assert_same_frame(on_device[1], frame(host, sparse=True))
    top = topk_contributors(dev, *voxels, geos_c, 3, pixels=pixels)
    assert_equal(top, topk_contributors(host, *voxels, geos_c, 3, pixels=pixels))
    # Intersections built with matrices on the device hold their values: they serve settings
    # with the same matrices anywhere, and refuse another pose.
    inter = intersect_voxels(dev, *voxels)
    assert inter.camera == intersect_voxels(host, *voxels).camera
    assert_same_frame(frame(host, intersections=inter), on_device[0])
    assert_same_frame(frame(dev, intersections=inter), on_device[0])
    sparse_inter = intersect_voxels(dev, *voxels, pixels=pixels)
    assert_same_frame(frame(dev, sparse=True, intersections=sparse_inter), on_device[1])
    moved = _on_device(make_settings((1.9, -1.6, 1.3), (0, 0, 0), width=30, height=21), cuda, layout)
    with pytest.raises(ValueError, match="intersections: built for another camera"):
        rasterize_voxels(moved, *voxels, lambda *a: None, intersections=inter)


@pytest.mark.parametrize("name", ["w2c_matrix", "c2w_matrix"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_device_matrices_not_finite(cuda, name, bad):
    """A matrix on the device is checked where its values come back, with the frame's counts:
    a clear error naming it, for dense and sparse frames, and a working context after it."""
    from svraster_cuda.renderer import rasterize_voxels_sparse
    octpath, centers, lengths, geos, rgbs = random_scene(5)
    settings = _on_device(make_settings((2.0, 2.0, 2.0), (0, 0, 0), width=16, height=16), cuda)
    matrix = getattr(settings, name).clone()
    matrix[3, 3] = bad  # a value no kernel uses is still checked, as the host's check does
    bad_settings = settings._replace(**{name: matrix})
    voxels = [t.to(cuda) for t in (octpath, centers, lengths)]
    params = {"geos": geos.to(cuda), "rgbs": rgbs.to(cuda), "subdiv_p": torch.zeros(len(geos), 1, device=cuda)}
    with pytest.raises(ValueError, match=rf"raster_settings\.{name}: expected finite values"):
        rasterize_voxels(bad_settings, *voxels, lambda *a: params)
    matrix[3, 3] = 1.0
    matrix[1, 2] = bad
    with pytest.raises(ValueError, match=rf"raster_settings\.{name}: expected finite values"):
        rasterize_voxels_sparse(bad_settings, *voxels, lambda *a: params, torch.tensor([[3, 4]], device=cuda))
    color = rasterize_voxels(settings, *voxels, lambda *a: params)[0]
    torch.cuda.synchronize()
    assert torch.isfinite(color).all() and color.abs().sum() > 0


def test_camera_inside_voxels(cuda):
    """A single coarse voxel around the camera plus finer ones: the camera's voxel covers the
    whole screen and is integrated only in front of the near plane."""
    octpath, centers, lengths, geos, rgbs = random_scene(9, max_level=2, split_prob=0.3, keep_prob=1.0)
    settings = make_settings(tuple(centers[0].tolist()), (0.3, 0.2, 0.1), width=40, height=30, fov_deg=90,
                             **FULL)
    compare(settings, (octpath, centers, lengths, geos * 0.3 - 2.0, rgbs), cuda)


def test_gradient_views_and_repeated_backward(cuda):
    """Incoming gradients that are views (permuted from HWC, expanded from a sum, sliced) and a
    ground truth that is one (the concentration loss) give the reference's gradients and those
    of the same values made contiguous; a second backward through a retained graph does not
    reuse the first one's gradient buffers (prepared zeroed by the forward)."""
    from svraster_cuda.renderer import rasterize_voxels_sparse
    octpath, centers, lengths, geos, rgbs = random_scene(11, max_level=4)
    gen = torch.Generator().manual_seed(3)
    gt_hwc = torch.rand(28, 40, 3, generator=gen)
    settings = make_settings((2.3, -1.6, 1.2), (0, 0, 0), width=40, height=28, need_depth=True, need_normal=True,
                             lambda_R_concen=0.5)
    w_hwc = torch.randn(28, 40, 3, generator=gen).to(cuda)
    w_depth = torch.randn(3, 40, 28, generator=gen).to(cuda)
    w_normal = torch.randn(6, 28, 40, generator=gen).to(cuda)

    def grads(views, device=cuda):
        gt = gt_hwc.to(device).permute(2, 0, 1)
        s = settings._replace(gt_color=gt if views else gt.contiguous())
        out, leaves = render(s, octpath, centers, lengths, geos, rgbs, device, grad=True)
        if device != cuda:
            out = [o.to(cuda) for o in out]
        color, depth, normal, T, _ = out
        if views:
            loss = ((color.permute(1, 2, 0) * w_hwc).sum() + (depth.transpose(1, 2) * w_depth).sum()
                    + (normal * w_normal[::2]).sum() + 0.7 * T.sum())
        else:
            loss = ((color * w_hwc.permute(2, 0, 1).contiguous()).sum()
                    + (depth * w_depth.transpose(1, 2).contiguous()).sum()
                    + (normal * w_normal[::2].contiguous()).sum() + (T * torch.full_like(T, 0.7)).sum())
        loss.backward(retain_graph=True)
        first = [leaf.grad.clone() for leaf in leaves]
        loss.backward()
        return first, [leaf.grad for leaf in leaves]

    def close(a, b, factor=1.0):
        return (a - factor * b).abs().max() <= 1e-5 * b.abs().max().clamp(min=1e-6)

    (contiguous, _), (viewed, twice), (reference, _) = grads(False), grads(True), grads(False, "cpu")
    assert any(g.abs().max() > 0 for g in contiguous)
    for name, a, b, c, r in zip(("geos", "rgbs", "subdiv_p"), contiguous, viewed, twice, reference):
        r = r.to(cuda)
        assert (a - r).abs().max() <= 1e-3 * r.abs().max().clamp(min=1e-6), f"{name}: against the reference"
        assert close(b, a), name
        assert close(c, b, 2.0), f"{name}: the second backward must add the same gradients again"

    # Requested pixels: [3, P] gradients and ground truth as transposes of [P, 3] tensors.
    pixels = torch.tensor([[3, 5], [20, 33], [27, 0], [10, 10], [11, 10]], device=cuda)
    w_pix = torch.randn(len(pixels), 3, generator=gen).to(cuda)
    gt_pix = torch.rand(len(pixels), 3, generator=gen).to(cuda)
    sparse = []
    for views in (False, True):
        g = geos.to(cuda).clone().requires_grad_()
        params = {"geos": g, "rgbs": rgbs.to(cuda), "subdiv_p": torch.zeros(len(g), 1, device=cuda)}
        s = settings._replace(gt_color=gt_pix.T if views else gt_pix.T.contiguous())
        color = rasterize_voxels_sparse(s, octpath.to(cuda), centers.to(cuda), lengths.to(cuda),
                                        lambda *a: params, pixels)[0]
        (color.T * w_pix if views else color * w_pix.T.contiguous()).sum().backward()
        sparse.append(g.grad)
    assert sparse[0].abs().max() > 0 and close(sparse[1], sparse[0])


@pytest.mark.parametrize("leaves", ["geos", "rgbs", "subdiv_p", "all", "none"])
def test_autograd_function_in_the_extension(cuda, leaves):
    """The compiled renderer's autograd Function (bindings.cpp's RasterizeVoxels) against the
    reference's Python one: a loss that leaves outputs out (their gradients come undefined and
    are read as zeros), parameters of which only some require grad (no graph where none
    does), and a parameter modified in place before the backward (refused, as for any saved
    tensor)."""
    octpath, centers, lengths, geos, rgbs = random_scene(12, max_level=4)
    settings = make_settings((2.1, 1.4, -1.5), (0, 0, 0), width=36, height=24, **FULL)
    weight = torch.randn(3, 24, 36, generator=torch.Generator().manual_seed(1))

    def frame(device):
        params = {"geos": geos.to(device).clone(), "rgbs": rgbs.to(device).clone(),
                  "subdiv_p": torch.zeros(len(geos), 1, device=device)}
        for name, t in params.items():
            t.requires_grad_(leaves in (name, "all"))
        out = rasterize_voxels(settings, octpath.to(device), centers.to(device), lengths.to(device),
                               lambda *a: params)
        return out, params

    (color_r, *_), params_r = frame("cpu")
    (color_c, depth_c, normal_c, T_c, _), params_c = frame(cuda)
    if leaves == "none":
        assert color_c.grad_fn is None and not T_c.requires_grad
        return
    assert "CppNode" in color_c.grad_fn.name(), color_c.grad_fn.name()
    assert depth_c.requires_grad and normal_c.requires_grad and T_c.requires_grad
    (color_r * weight).sum().backward()  # depth, normal and T get no gradient
    (color_c * weight.to(cuda)).sum().backward()
    for name in params_r:
        r, c = params_r[name].grad, params_c[name].grad
        if leaves not in (name, "all"):
            assert r is None and c is None, name
            continue
        assert r.abs().max() > 0, name
        assert (r - c.cpu()).abs().max() <= 1e-3 * r.abs().max(), name

    # A saved parameter modified in place between forward and backward.
    for device in ("cpu", cuda):
        leaf = geos.to(device).clone().requires_grad_()
        params = {"geos": leaf * 1.0, "rgbs": rgbs.to(device), "subdiv_p": torch.zeros(len(geos), 1, device=device)}
        color = rasterize_voxels(settings, octpath.to(device), centers.to(device), lengths.to(device),
                                 lambda *a: params)[0]
        with torch.no_grad():
            params["geos"].add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            color.sum().backward()


def test_gradient_buffers_are_separate_tensors(cuda):
    """The backward's gradient buffers (zeroed by the forward) become the parameters' .grad as
    they are: contiguous tensors, not views (which would refuse detach_()); zero_grad without
    set_to_none clears them in place, and the next steps add into them."""
    octpath, centers, lengths, geos, rgbs = random_scene(13, max_level=4)
    settings = make_settings((-1.9, 1.6, 1.3), (0, 0, 0), width=32, height=24, lambda_ascending=0.2)
    voxels = [t.to(cuda) for t in (octpath, centers, lengths)]
    params = {"geos": geos.to(cuda).requires_grad_(), "rgbs": rgbs.to(cuda).requires_grad_(),
              "subdiv_p": torch.zeros(len(geos), 1, device=cuda, requires_grad=True)}

    def step():
        color, _, _, T, _ = rasterize_voxels(settings, *voxels, lambda *a: params)
        (color.sum() + T.sum()).backward()

    step()
    grads = [p.grad for p in params.values()]
    assert all(g._base is None and g.is_contiguous() for g in grads)
    first = [g.clone() for g in grads]
    assert all(f.abs().max() > 0 for f in first)
    for g in grads:
        g.detach_()
    torch.optim.SGD(list(params.values()), lr=0.0).zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(params.values(), grads))
    step()
    step()
    for name, g, f in zip(params, grads, first):
        assert (g - 2 * f).abs().max() <= 1e-5 * f.abs().max(), name


@pytest.mark.parametrize("ranks", ["few", "all", "coarse"])
def test_key_layouts(cuda, ranks):
    """Few and all 48 rank bits (binning.cu's items pack rank, octant and voxel id in one sort
    key either way here; at 70x45 the rank's top two bits are sorted with the 6 tile bits), and
    a level-1 octree at 40x30, whose 3 rank bits all go to the entry key (5 tile bits) and whose
    items are not sorted: values and gradients equal the reference's. Items too wide to pack
    (48 rank bits and 262,144 voxels) are test_long_tile_lists'; tiles too many for the entry's
    rectangle to ride in its key (gathered after the sort), test_large_image_crop's."""
    octpath, centers, lengths, geos, rgbs = random_scene(14, max_level=1 if ranks == "coarse" else 4)
    if ranks == "all":
        octpath = octpath | 1  # 48 rank bits; changes no order (distinct leaves differ above it)
    width, height = (40, 30) if ranks == "coarse" else (70, 45)
    settings = make_settings((2.2, 1.7, -1.4), (0, 0, 0), width=width, height=height, fov_deg=70, **FULL)
    compare(settings, (octpath, centers, lengths, geos, rgbs), cuda)


@pytest.mark.parametrize("size, full_rank", [((16384, 16384), False), ((16384, 16384), True),
                                             ((7680, 4320), True), ((4097, 2161), True)])
def test_large_image_crop(cuda, size, full_rank):
    """Large images against the reference on crops: more tiles than the entry key holds beside
    the entry's rectangle (gathered after the sort), with few and with all 48 rank bits
    (octpaths using all 16 levels: setting the finest bit of every path changes no order, as
    distinct leaves differ above it)."""
    octpath, centers, lengths, geos, rgbs = random_scene(12, max_level=5)
    if full_rank:
        octpath = octpath | 1
    W, H = size
    settings = make_settings((2.4, -2.0, 1.3), (0, 0, 0), width=W, height=H, fov_deg=60, need_depth=True)
    settings = settings._replace(tanfovy=settings.tanfovx * H / W)
    dev = [t.to(cuda) for t in (octpath, centers, lengths, geos, rgbs)]
    params = {"geos": dev[3], "rgbs": dev[4], "subdiv_p": torch.zeros(len(geos), 1, device=cuda)}
    color, depth, _, T, _ = rasterize_voxels(settings, dev[0], dev[1], dev[2], lambda *a: params)
    for x0, y0 in ((W // 2 - 20, H // 2 - 12), (0, 0), (W - 40, H - 24)):
        w, h = 40, 24
        crop = settings._replace(image_width=w, image_height=h, cx=settings.cx - x0, cy=settings.cy - y0,
                                 tanfovx=settings.tanfovx * w / W, tanfovy=settings.tanfovy * h / H)
        ref, _ = render(crop, octpath, centers, lengths, geos, rgbs)
        assert (ref[0] - color[:, y0:y0 + h, x0:x0 + w].cpu()).abs().max() <= 2e-4
        assert (ref[3] - T[:, y0:y0 + h, x0:x0 + w].cpu()).abs().max() <= 2e-4
        assert (ref[1][0] - depth[0, y0:y0 + h, x0:x0 + w].cpu()).abs().max() <= 2e-4
    assert (T < 1).any()


def test_errors_leave_context_healthy(cuda):
    octpath, centers, lengths, geos, rgbs = random_scene(5)
    settings = make_settings((2.0, 2.0, 2.0), (0, 0, 0), width=16, height=16)
    good = [t.to(cuda) for t in (octpath, centers, lengths, geos, rgbs)]

    def call(o, c, l, g, r):
        return rasterize_voxels(settings, o, c, l, lambda *a: {"geos": g, "rgbs": r, "subdiv_p": torch.zeros_like(g[:, :1])})

    with pytest.raises(ValueError, match="octree_paths.*device"):
        call(octpath, *good[1:])                         # mixed devices
    with pytest.raises(ValueError, match="geos.*device"):
        call(*good[:3], geos, good[4])                   # vox_fn returns CPU tensors
    with pytest.raises(TypeError, match="geos"):
        call(*good[:3], good[3].double(), good[4])
    from svraster_cuda import cuda_backend
    with pytest.raises(ValueError, match="CUDA tensor"):
        cuda_backend._load().rasterize_preprocess([16.0, 16.0, 1, 1, 8, 8, 0.02] + [0.0] * 24, octpath, centers, lengths,
                                                  None)
    # Errors raised inside the extension, with numbers in their messages (formatting one
    # crashed the process once: see bindings.cpp), leave a working context.
    C, cam = cuda_backend._load(), [16.0, 16.0, 1, 1, 8, 8, 0.02] + [0.0] * 24
    with pytest.raises(ValueError, match=r"image_width/image_height: expected 1\.\.16384, got 0 x 16"):
        C.rasterize_preprocess([0.0] + cam[1:], *good[:3], None)
    with pytest.raises(ValueError, match=r"vox_lengths: expected shape \[\d+, 1\] \(-1: any\), got \[\d+, 2\]"):
        C.rasterize_preprocess(cam, good[0], good[1], good[2].repeat(1, 2), None)
    with pytest.raises(ValueError, match=r"pixels: expected \(row, col\) pairs with 0 <= row < 16 and 0 <= col < 16; "
                                         r"1 of the 2 are outside"):
        C.rasterize_preprocess(cam, *good[:3], torch.tensor([[0, 0], [16, 3]], device=cuda))
    eye = torch.eye(4, device=cuda)
    with pytest.raises(ValueError, match=r"raster_settings\.c2w_matrix: expected a CUDA tensor"):
        C.rasterize_preprocess(cam[:7], *good[:3], None, w2c=eye, c2w=torch.eye(4))
    with pytest.raises(ValueError, match=r"raster_settings\.w2c_matrix: expected shape \[4, 4\]"):
        C.rasterize_preprocess(cam[:7], *good[:3], None, w2c=eye[:3], c2w=eye)
    with pytest.raises(ValueError, match=r"w2c, c2w: expected both or neither"):
        C.rasterize_preprocess(cam[:7], *good[:3], None, w2c=eye)
    with pytest.raises(ValueError, match=r"camera: expected 7 numbers, got 31"):
        C.rasterize_preprocess(cam, *good[:3], None, w2c=eye, c2w=eye)
    nan = good[3].clone()
    nan[:] = math.nan
    color = call(*good[:3], nan, good[4])[0]
    assert torch.isnan(color).any()
    debug = settings._replace(debug=True)
    with pytest.raises(ValueError, match="vox_lengths.*positive"):
        rasterize_voxels(debug, good[0], good[1], -good[2], lambda *a: {"geos": good[3], "rgbs": good[4],
                                                                       "subdiv_p": torch.zeros_like(good[3][:, :1])})
    with pytest.raises(ValueError, match="geos.*finite"):
        rasterize_voxels(debug, *good[:3], lambda *a: {"geos": nan, "rgbs": good[4], "subdiv_p": torch.zeros_like(nan[:, :1])})
    color = call(*good)[0]                               # the context still works
    torch.cuda.synchronize()
    assert torch.isfinite(color).all()


def test_long_runs_do_not_grow(cuda):
    """Repeated renders (with and without backward) keep allocated memory flat. Whether they slow
    down is a benchmark's question (`bench/bench_cuda.py --long 1000`: the median times of the
    first and last hundred renders): a wall-clock bound here failed when the device machine's
    cores were busy with a parallel build (session 15: training steps 0.72 -> 1.18 ms)."""
    octpath, centers, lengths, geos, rgbs = random_scene(21, max_level=5)
    settings = make_settings((2.2, 1.9, -1.4), (0, 0, 0), width=320, height=240, need_depth=True, lambda_dist=0.1)
    dev = [t.to(cuda) for t in (octpath, centers, lengths)]
    g, r = geos.to(cuda).requires_grad_(), rgbs.to(cuda).requires_grad_()
    params = {"geos": g, "rgbs": r, "subdiv_p": torch.zeros(len(g), 1, device=cuda, requires_grad=True)}
    memory = []
    for i in range(300):
        color, depth, _, T, _ = rasterize_voxels(settings, *dev, lambda *a: params)
        if i % 2:
            (color.sum() + depth[0].sum() + T.sum()).backward()
        del color, depth, T
        torch.cuda.synchronize()
        memory.append(torch.cuda.memory_allocated())
    assert memory[-1] == memory[20] and max(memory[20:]) == max(memory[20:40])


def test_extension_constants_match_header(cuda):
    """The integer constants `_C` was compiled with are those Python reads from constants.h."""
    from svraster_cuda import cuda_backend, meta
    C = cuda_backend._load()
    for name in ("MAX_NUM_LEVELS", "MAX_N_SAMP", "TILE_SIZE", "MAX_VOXELS", "MAX_EXACT_TILES", "MAX_IMAGE_SIZE"):
        assert getattr(C, name) == getattr(meta, name), name


def expected_octant_ranks(octpath):
    """rasterizer.h's cached ranks by a stable argsort: voxel v's place in ascending
    octpath XOR repeat(q), q = 0..3."""
    ranks = torch.empty(4, len(octpath), dtype=torch.int32)
    for q in range(4):
        order = torch.sort(octpath[:, 0] ^ (q * 0x249249249249), stable=True).indices
        ranks[q, order] = torch.arange(len(octpath), dtype=torch.int32)
    return ranks


def test_cached_octant_ranks(cuda, monkeypatch):
    """The octant ranks cached per octree (rasterizer.h, cuda_backend) place the items without
    a sort: the ranks are a stable argsort's; paths that repeat or leave the 16 levels are not
    cached; by default the second frame of an octree builds them and the third uses them, with
    the first frame's pixels bit for bit, its gradients and the reference's values; a path
    changed in place (same tensor, same count) is noticed and rendered as the reference does;
    SVRASTER_OCTANT_RANKS=off builds nothing, and a bad value is refused by name."""
    from svraster_cuda import cuda_backend
    from svraster_cuda.renderer import intersect_voxels
    C = cuda_backend._load()
    octpath, centers, lengths, geos, rgbs = random_scene(17, max_level=5)
    assert torch.equal(C.octant_ranks(octpath.to(cuda)).cpu(), expected_octant_ranks(octpath))
    repeated = octpath.clone()
    repeated[5] = repeated[9]
    assert C.octant_ranks(repeated.to(cuda)).shape == (0, len(octpath))
    assert C.octant_ranks((octpath | (1 << 50)).to(cuda)).shape == (0, len(octpath))

    monkeypatch.delenv("SVRASTER_OCTANT_RANKS", raising=False)
    cuda_backend.release_octant_ranks()
    settings = make_settings((2.2, 1.7, -1.4), (0, 0, 0), width=61, height=37, fov_deg=70, **FULL)
    dev = [t.to(cuda) for t in (octpath, centers, lengths)]
    g, r = geos.to(cuda).requires_grad_(), rgbs.to(cuda).requires_grad_()
    params = {"geos": g, "rgbs": r, "subdiv_p": torch.zeros(len(g), 1, device=cuda, requires_grad=True)}

    def frame():
        for p in params.values():
            p.grad = None
        out = rasterize_voxels(settings, *dev, lambda *a: params)
        sum(o.sum() * (i + 1) for i, o in enumerate(out[:4])).backward()
        return [o.detach().clone() for o in out], [p.grad.clone() for p in params.values()]

    first = frame()
    assert not cuda_backend._octant_ranks
    frame()
    built = cuda_backend._octant_ranks[dev[0].device]
    assert torch.equal(built.ranks.cpu(), expected_octant_ranks(octpath))
    third = frame()
    assert cuda_backend._octant_ranks[dev[0].device] is built  # current: used, not rebuilt
    for a, b in zip(first[0], third[0]):
        assert torch.equal(a, b)
    for a, b in zip(first[1], third[1]):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    compare(settings, (octpath, centers, lengths, geos, rgbs), cuda)  # same paths: the cached ranks

    # Two voxels in view trade places in storage, in place: same tensors, same count, other
    # paths. The stale ranks are not used (forced, they give other lists).
    in_view = intersect_voxels(settings, octpath, centers, lengths).in_view
    i, j = int(in_view[0]), int(in_view[len(in_view) // 2])
    for t in dev:
        t[[i, j]] = t[[j, i]]
    ref = intersect_voxels(settings, *(t.cpu() for t in dev))
    got = intersect_voxels(settings, *dev)
    assert cuda_backend._octant_ranks[dev[0].device] is built
    n_tiles = math.ceil(61 / 8) * math.ceil(37 / 8)
    assert_same_lists(got, ref, n_tiles)
    camera = got.camera
    _, fingerprint, _ = C.rasterize_preprocess(camera, *dev, None)
    (_, ranges, entries, *_), _, _ = C.rasterize_preprocess(camera, *dev, None, built.ranks, fingerprint)
    with pytest.raises(AssertionError):
        assert_same_lists(SimpleNamespace(state=SimpleNamespace(ranges=ranges, entries=entries)), ref, n_tiles)

    monkeypatch.setenv("SVRASTER_OCTANT_RANKS", "off")
    cuda_backend.release_octant_ranks()
    for _ in range(3):
        intersect_voxels(settings, *dev)
    assert not cuda_backend._octant_ranks
    monkeypatch.setenv("SVRASTER_OCTANT_RANKS", "always")
    with pytest.raises(ValueError, match="SVRASTER_OCTANT_RANKS"):
        intersect_voxels(settings, *dev)


def assert_layout(layout, pixels, width, tile_order):
    """`layout` (cuda_backend.SparsePixels) groups `pixels` into warps of one tile each: every
    request in one lane, each tile's requests in as few warps as the requests a warp takes
    allow (8 for up to SPLIT_REQUESTS_MAX requests, else 32: rasterizer.h), in its first lanes,
    the warps' tiles in `tile_order` (None: index order), spare warps (tile -1, no lanes) last."""
    from svraster_cuda import cuda_backend, meta
    C = cuda_backend._load()
    per_warp = C.SPLIT_WARP_REQUESTS if len(pixels) <= C.SPLIT_REQUESTS_MAX else 32
    assert torch.equal(layout.requests.cpu(), pixels.int())
    tiles_x = math.ceil(width / meta.TILE_SIZE)
    pixel_tiles = (pixels[:, 0] // meta.TILE_SIZE) * tiles_x + pixels[:, 1] // meta.TILE_SIZE
    warp_tiles = layout.warp_tiles.cpu().long()
    lanes = layout.lane_requests.cpu().long().view(-1, 32)
    taken = lanes[lanes >= 0]
    assert torch.equal(torch.sort(taken).values, torch.arange(len(pixels)))
    lane_tiles = torch.where(lanes >= 0, pixel_tiles[lanes.clamp(min=0)], warp_tiles[:, None])
    assert (lane_tiles == warp_tiles[:, None]).all()
    used = warp_tiles >= 0
    n_used = int(used.sum())
    assert used[:n_used].all() and not used[n_used:].any() and not (lanes[~used] >= 0).any()
    assert not (lanes[:, per_warp:] >= 0).any()
    n_tiles = int(pixel_tiles.max()) + 1 if len(pixels) else 0
    assert torch.equal(torch.bincount(warp_tiles[:n_used], minlength=n_tiles),
                       (torch.bincount(pixel_tiles, minlength=n_tiles) + per_warp - 1) // per_warp)
    place = warp_tiles[:n_used]
    if tile_order is not None:
        place = torch.argsort(tile_order)[place]
    assert (place[1:] >= place[:-1]).all()


def assert_same_lists(got, ref, n_tiles):
    """The CUDA lists (a tile's octants interleaved) read, octant by octant, exactly as the
    reference's (tile, octant) groups: same voxels, same front-to-back order."""
    ranges = got.state.ranges.cpu().long()
    entries = got.state.entries.cpu().long() & 0xFFFFFFFF  # uint32 stored as int32
    octant, voxel = entries >> 29, entries & ((1 << 29) - 1)
    # Sorted by tile: the lists follow each other in tile order.
    tile = torch.repeat_interleave(torch.arange(n_tiles), ranges[:, 1] - ranges[:, 0])
    assert len(tile) == len(entries)
    group = tile * 8 + octant
    order = torch.sort(group, stable=True).indices
    binning = ref.state.binning
    assert torch.equal(torch.bincount(group, minlength=8 * n_tiles), binning.group_end - binning.group_start)
    assert torch.equal(voxel[order], binning.entry_voxel)


@pytest.mark.parametrize("size", [(8, 8), (40, 24)])
@pytest.mark.parametrize("full_rank", [False, True])
def test_long_tile_lists(cuda, size, full_rank):
    """A full level-6 grid (262,144 voxels) seen whole by a few tiles: at 8x8 one tile (no tile
    bits in the key) of 3,548 entries, at 40x24 lists from a hundred entries to 13,821 (hundreds
    of 32-candidate groups in the render walks; the longest rendered by four blocks a tile, a
    row of each warp's pixels each). The lists equal the reference's, and so do values,
    gradients and the top-K contributors. With 48 rank bits the items' rank, octant and voxel
    id (18 bits) do not fit one key: they are sorted as key and value."""
    from svraster_cuda import meta
    from svraster_cuda.renderer import intersect_voxels, topk_contributors
    octpath, _, centers, lengths = random_octree(3, max_level=6, split_prob=1.0, keep_prob=1.0)
    if full_rank:
        octpath = octpath | 1  # 48 rank bits; changes no order (distinct leaves differ above it)
    width, height = size
    settings = make_settings((3.5, 2.5, 3.0), (0, 0, 0), width=width, height=height, fov_deg=42, **FULL)
    settings = settings._replace(tanfovy=settings.tanfovx * height / width)
    n_tiles = math.ceil(width / meta.TILE_SIZE) * math.ceil(height / meta.TILE_SIZE)
    ref = intersect_voxels(settings, octpath, centers, lengths)
    got = intersect_voxels(settings, octpath.to(cuda), centers.to(cuda), lengths.to(cuda))
    assert_same_lists(got, ref, n_tiles)
    list_lengths = (got.state.ranges[:, 1] - got.state.ranges[:, 0]).cpu()
    # Past render_common.cuh's SPLIT_MIN_ENTRIES (3,072) the lists are rendered split; at 40x24
    # shorter ones are rendered whole beside them.
    assert list_lengths.max() > {(8, 8): 3072, (40, 24): 12288}[size]
    assert size == (8, 8) or list_lengths.min() < 3072
    geos, rgbs = random_params(len(octpath), 3, density_scale=1.0, offset=-4.0)
    compare(settings, (octpath, centers, lengths, geos, rgbs), cuda)
    ids_ref, w_ref = topk_contributors(settings, octpath, centers, lengths, geos, 4)
    ids, w = topk_contributors(settings, *(t.to(cuda) for t in (octpath, centers, lengths, geos)), 4)
    assert (w.cpu() - w_ref).abs().max() <= 2e-5
    # Ids must match where a weight does not nearly tie a neighbour in the ranking.
    gap = torch.full_like(w_ref, float("inf"))
    step = (w_ref[1:] - w_ref[:-1]).abs()
    gap[1:] = step
    gap[:-1] = torch.minimum(gap[:-1], step)
    assert torch.equal(ids.cpu()[gap > 1e-4], ids_ref[gap > 1e-4])
    assert (gap > 1e-4).sum() > w_ref.numel() / 4


@pytest.mark.parametrize("seed", range(8))
def test_culling_matches_reference(cuda, seed):
    """The voxels with entries, their number of entries and the sorted tile lists are the
    reference's: for cameras inside and outside the scene, looking partly away from it, wide and
    narrow, with an off-centre principal point, for every pixel and for requested pixels (the
    kernel's quick bound before the exact footprint, tested against the image and, where at
    most a quarter of the tiles hold requests, against those tiles, must cull nothing the exact
    test keeps: the single pixel takes the tile test, a pixel in every tile does not; a patch
    of whole tiles fills several warps a tile),
    and the requested pixels' layout in warps is a grouping by tile in the order that each
    kind of lists takes (assert_layout). Seeds 6 and 7 render 320x240, where near voxels span more than MAX_EXACT_TILES tiles and
    are binned into every tile holding a request; there voxels spanning more than
    WIDE_CANDIDATES tiles, whose items are binned by a warp each, sit among others (but for the
    single pixel)."""
    from svraster_cuda import cuda_backend, meta, validation
    from svraster_cuda.renderer import _intersect, intersect_voxels
    gen = torch.Generator().manual_seed(seed)
    octpath, _, centers, lengths = random_octree(seed, max_level=5, split_prob=0.5, keep_prob=0.8)
    eye = (torch.rand(3, generator=gen) * 5 - 2.5).tolist()
    target = (torch.rand(3, generator=gen) * 3 - 1.5).tolist()
    width, height = (40 + 13 * seed, 30 + 7 * seed) if seed < 6 else (320, 240)
    if seed >= 6:
        eye = (torch.rand(3, generator=gen) - 0.5).tolist()  # inside the scene: large near voxels
    settings = make_settings(eye, target, width=width, height=height, fov_deg=(30.0, 60.0, 100.0)[seed % 3],
                             cx=width * (0.3 + 0.1 * (seed % 6)), near=(0.02, 0.3)[seed % 2])
    n_pixels = 7 if seed < 6 else 60
    pixels = torch.stack([torch.randint(0, height, (n_pixels,), generator=gen),
                          torch.randint(0, width, (n_pixels,), generator=gen)], 1)
    n_tiles = math.ceil(width / meta.TILE_SIZE) * math.ceil(height / meta.TILE_SIZE)
    tile_starts = [torch.arange(0, size, meta.TILE_SIZE) for size in (height, width)]
    every_tile = torch.cartesian_prod((tile_starts[0] + 3).clamp(max=height - 1),
                                      (tile_starts[1] + 5).clamp(max=width - 1))
    patch = torch.cartesian_prod(torch.arange(16), torch.arange(16))  # four whole tiles: eight warps each
    for subset in (None, pixels, pixels[:1], every_tile, patch):
        ref = intersect_voxels(settings, octpath, centers, lengths, pixels=subset)
        got = intersect_voxels(settings, octpath.to(cuda), centers.to(cuda), lengths.to(cuda),
                               pixels=None if subset is None else subset.to(cuda))
        assert torch.equal(torch.sort(got.in_view.cpu()).values, torch.sort(ref.in_view).values)
        assert got.state.entries.numel() == len(ref.state.binning.entry_voxel)
        assert_same_lists(got, ref, n_tiles)
        if subset is None:
            # The tiles' render order: each tile once, the lengths descending to within a
            # sixteenth of an octave (the order's buckets).
            order = got.state.tile_order.cpu().long()
            assert torch.equal(torch.sort(order).values, torch.arange(n_tiles))
            list_lengths = (got.state.ranges[:, 1] - got.state.ranges[:, 0]).cpu()[order].double()
            assert (list_lengths[1:] <= list_lengths[:-1] * 2 ** (1 / 16) * (1 + 1e-5)).all()
            # Requested pixels over the whole image's lists: warps in its render order.
            layout = cuda_backend.pixel_layout(settings, got.state, pixels.to(cuda), None, None, verify=True)
            assert_layout(layout, pixels, width, order)
        else:
            # Over lists binned for them: tile index order, laid out for reused intersections
            # (checked) and by a fresh frame's preprocess call.
            layout = cuda_backend.pixel_layout(settings, got.state, subset.to(cuda), None, None, verify=True)
            assert_layout(layout, subset, width, None)
            voxels = (octpath.to(cuda), centers.to(cuda), lengths.to(cuda))
            fresh = _intersect(settings, validation.camera_args(settings), *voxels, subset.to(cuda), lay_out=True)
            assert_layout(fresh.state.layout, subset, width, None)
        if seed >= 6:
            rect = ref.state.preprocessed.tile_rect
            area = (rect[:, 2] - rect[:, 0] + 1).clamp(min=0) * (rect[:, 3] - rect[:, 1] + 1).clamp(min=0)
            assert (area > meta.MAX_EXACT_TILES).any(), "the case must hold voxels binned without the per-tile test"
            binned = ref.state.preprocessed.n_duplicates > 0
            wide = area > cuda_backend._load().WIDE_CANDIDATES  # binning.cu: per (voxel, octant) item
            if subset is None or subset is pixels:
                assert (binned & wide).any() and (binned & ~wide).any(), "the case must mix wide and narrow voxels"


def test_negative_sizes_in_view_as_reference(cuda):
    """Voxels of negative size (their values are checked only with RasterSettings.debug) are
    never drawn. One whose extent on an axis holds the camera's coordinate there is reached by no
    ray octant: it has no entries and is not in view, as in the reference; the others are in view
    where their positive twins are (the quick cull bounds the box by its size's magnitude).
    Before session 16 the kernels listed the former in view (by their tile count alone) and the
    quick cull dropped some of the latter. Whole image and requested pixels."""
    from svraster_cuda import meta, validation
    from svraster_cuda.renderer import _intersect
    octpath, _, centers, lengths = random_octree(4, max_level=4, split_prob=0.5, keep_prob=0.9)
    lengths = -lengths
    width, height = 64, 48
    settings = make_settings((0.1, 0.05, -3.0), (0, 0, 0), width=width, height=height, fov_deg=60)
    n_tiles = math.ceil(width / meta.TILE_SIZE) * math.ceil(height / meta.TILE_SIZE)
    camera = validation.camera_args(settings)
    pixels = torch.tensor([[3, 5], [20, 33], [40, 60], [24, 32]])
    for subset in (None, pixels):
        ref = _intersect(settings, camera, octpath, centers, lengths, subset)
        got = _intersect(settings, camera, octpath.to(cuda), centers.to(cuda), lengths.to(cuda),
                         None if subset is None else subset.to(cuda))
        pre = ref.state.preprocessed
        has_tiles = (pre.tile_rect[:, 2] >= pre.tile_rect[:, 0]) & (pre.tile_rect[:, 3] >= pre.tile_rect[:, 1])
        assert (has_tiles & (pre.octant_mask == 0)).any(), "the case must hold voxels in the image reached by no octant"
        in_view = torch.sort(got.in_view.cpu()).values
        with_entries = torch.unique(got.state.entries.cpu().long() & ((1 << 29) - 1))
        assert torch.equal(in_view, with_entries)
        assert torch.equal(in_view, torch.sort(ref.in_view).values)
        assert_same_lists(got, ref, n_tiles)


def test_frame_graph(cuda, monkeypatch):
    """Frames binned by the frame graph (bindings.cpp: ranked frames of one shape in a row, the
    binning one graph launch over a reused arena) equal the eagerly binned frames: values bit
    for bit, gradients to the order of their float atomics; whole image and requested pixels, over cameras whose counts move
    within the capacities and beyond them (a frame that does not fit is binned eagerly, the
    next builds a larger graph). A frame whose intersections are still alive is not
    overwritten: the next fresh frame is binned eagerly, and the kept one still renders as
    before."""
    from svraster_cuda import cuda_backend
    from svraster_cuda.renderer import intersect_voxels, rasterize_voxels_sparse
    C = cuda_backend._load()
    octpath, centers, lengths, geos, rgbs = random_scene(29, max_level=5)
    dev = [t.to(cuda) for t in (octpath, centers, lengths)]
    g, r = geos.to(cuda).requires_grad_(), rgbs.to(cuda).requires_grad_()
    params = {"geos": g, "rgbs": r, "subdiv_p": torch.zeros(len(g), 1, device=cuda, requires_grad=True)}
    cameras = [make_settings(eye, (0, 0, 0), width=67, height=45, fov_deg=65, **FULL)
               for eye in ((2.4, 1.6, -1.2), (2.3, 1.7, -1.1), (-1.9, 2.2, 1.5), (1.2, 0.7, -0.6), (2.4, 1.6, -1.2))]
    pixels = torch.tensor([[0, 0], [44, 66], [20, 31], [20, 31], [7, 60], [33, 3]], device=cuda)

    def frame(settings, sparse=False):
        for p in params.values():
            p.grad = None
        if sparse:
            out = rasterize_voxels_sparse(settings, *dev, lambda *a: params, pixels)
        else:
            out = rasterize_voxels(settings, *dev, lambda *a: params)
        sum(o.sum() * (i + 1) for i, o in enumerate(out[:4])).backward()
        return [o.detach().clone() for o in out] + [p.grad.clone() for p in params.values()]

    def assert_equal(a, b):
        # The pixels bit for bit; the gradients to float atomics' order, as the octant ranks'.
        for x, y in zip(a[:5], b[:5]):
            assert torch.equal(x, y)
        for x, y in zip(a[5:], b[5:]):
            assert (x - y).abs().max() <= 1e-5 * y.abs().max()

    monkeypatch.setenv("SVRASTER_OCTANT_RANKS", "off")
    cuda_backend.release_octant_ranks()
    expected = {(i, sparse): frame(s, sparse) for i, s in enumerate(cameras) for sparse in (False, True)}
    monkeypatch.setenv("SVRASTER_OCTANT_RANKS", "eager")
    for sparse in (False, True):
        launches = C.frame_graph_launches()
        # The fourth camera is nearer: more entries than the graph built for the first three.
        for i in (0, 0, 1, 2, 0, 3, 3, 1, 4):
            assert_equal(frame(cameras[i], sparse), expected[(i, sparse)])
        assert C.frame_graph_launches() >= launches + 5  # of 9 frames: not the first two, nor a frame past the capacities

    # Intersections kept from a graph frame hold its arena: fresh frames go around it.
    frame(cameras[0])
    kept = intersect_voxels(cameras[0], *dev)
    launches = C.frame_graph_launches()
    assert launches > 0
    for i in (1, 2):
        assert_equal(frame(cameras[i]), expected[(i, False)])
    assert C.frame_graph_launches() == launches
    for p in params.values():
        p.grad = None
    out = rasterize_voxels(cameras[0], *dev, lambda *a: params, intersections=kept)
    sum(o.sum() * (i + 1) for i, o in enumerate(out[:4])).backward()
    assert_equal([o.detach() for o in out] + [p.grad for p in params.values()], expected[(0, False)])
    del kept, out
    frame(cameras[1])
    assert_equal(frame(cameras[1]), expected[(1, False)])
    assert C.frame_graph_launches() > launches
    cuda_backend.release_octant_ranks()


def test_frame_graph_in_a_training_loop(cuda, monkeypatch):
    """A training loop keeps a step's outputs (and its loss) until the next step replaces them.
    After their backward they hold nothing of the frame graph's arena, so that the next frames
    are still binned by the graph; with the graph retained for a second backward, the next
    frame goes around the arena, and both backwards give the same gradients."""
    from svraster_cuda import cuda_backend
    C = cuda_backend._load()
    octpath, centers, lengths, geos, rgbs = random_scene(31, max_level=5)
    dev = [t.to(cuda) for t in (octpath, centers, lengths)]
    params = {"geos": geos.to(cuda).requires_grad_(), "rgbs": rgbs.to(cuda).requires_grad_(),
              "subdiv_p": torch.zeros(len(geos), 1, device=cuda, requires_grad=True)}
    settings = make_settings((2.4, 1.6, -1.2), (0, 0, 0), width=67, height=45, fov_deg=65, **FULL)
    monkeypatch.setenv("SVRASTER_OCTANT_RANKS", "eager")
    cuda_backend.release_octant_ranks()
    out = loss = None
    launches = C.frame_graph_launches()
    for step in range(6):
        for p in params.values():
            p.grad = None
        out = rasterize_voxels(settings, *dev, lambda *a: params)
        loss = out[0].sum() + out[3].sum()
        loss.backward()
    # The first frame builds the ranks, the second the graph: the other four are its launches.
    assert C.frame_graph_launches() == launches + 4

    for p in params.values():
        p.grad = None
    out = rasterize_voxels(settings, *dev, lambda *a: params)
    loss = out[0].sum() + out[3].sum()
    loss.backward(retain_graph=True)
    first = params["geos"].grad.clone()
    launches = C.frame_graph_launches()
    rasterize_voxels(settings, *dev, lambda *a: params)  # the retained graph holds the arena
    assert C.frame_graph_launches() == launches
    params["geos"].grad = None
    loss.backward()
    assert (params["geos"].grad - first).abs().max() <= 1e-5 * first.abs().max()  # float atomics' order
    cuda_backend.release_octant_ranks()
