"""Top-K contributors, reusable tile intersections and sparse pixel rendering (reference and
CUDA): top-K against a brute-force per-pixel ranking, sparse against the dense render (values
and gradients), reuse against fresh calls, frames under no_grad against grad mode, and the
errors for stale objects and bad input."""
import pytest
import torch

from helpers import DEVICES, brute_force_pixel, device_or_skip, make_settings, random_octree, random_params
from svraster_cuda.renderer import (TileIntersections, intersect_voxels, rasterize_voxels, rasterize_voxels_sparse,
                                    topk_contributors)

FULL = dict(need_depth=True, need_normal=True, track_max_w=True, lambda_dist=0.3, lambda_ascending=0.2)


def scene(seed, opaque=False, device="cpu", max_level=3):
    octpath, _, centers, lengths = random_octree(seed, max_level=max_level)
    if opaque:
        geos, rgbs = random_params(len(octpath), seed, density_scale=1.0, offset=4.0)
    else:  # semi-transparent: most pixels see several voxels
        geos, rgbs = random_params(len(octpath), seed, density_scale=1.5, offset=-3.0)
    return [t.to(device) for t in (octpath, centers, lengths, geos, rgbs)]


def leaves(geos, rgbs):
    g = geos.clone().requires_grad_(True)
    r = rgbs.clone().requires_grad_(True)
    s = torch.zeros(len(g), 1, device=g.device, requires_grad=True)
    return g, r, s


def vox_fn_of(g, r, s):
    return lambda idx, cam_pos, color_mode: {"geos": g, "rgbs": r, "subdiv_p": s}


def query_case(seed, device, width, height, **kw):
    """A scene seen from the camera the reuse/error tests share, and a vox_fn of constants."""
    octpath, centers, lengths, geos, rgbs = scene(seed, device=device)
    settings = make_settings((2.0, 1.7, -1.2), (0, 0, 0), width=width, height=height, **kw)
    vox_fn = vox_fn_of(geos, rgbs, torch.zeros(len(geos), 1, device=device))
    return octpath, centers, lengths, geos, settings, vox_fn


def random_pixels(n, settings, seed, device):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, settings.image_height, (n,), generator=gen)
    cols = torch.randint(0, settings.image_width, (n,), generator=gen)
    return torch.stack([rows, cols], 1).to(device)


def all_pixels(settings, device, seed=None):
    H, W = settings.image_height, settings.image_width
    rc = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij"), -1).reshape(-1, 2)
    if seed is not None:
        rc = rc[torch.randperm(len(rc), generator=torch.Generator().manual_seed(seed))]
    return rc.to(device)


# ---------------------------------------------------------------- top-K


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opaque", [False, True])
def test_topk_matches_brute_force(device, opaque):
    device = device_or_skip(device)
    octpath, centers, lengths, geos, rgbs = scene(21, opaque)
    settings = make_settings((2.3, -1.8, 1.2), (0, 0, 0), width=18, height=14, fov_deg=55)
    k = 4
    ids, weights = topk_contributors(settings, octpath.to(device), centers.to(device), lengths.to(device),
                                     geos.to(device), k)
    assert ids.shape == (k, 14, 18) and ids.dtype == torch.int64
    assert weights.shape == (k, 14, 18) and weights.dtype == torch.float32
    ids, weights = ids.cpu(), weights.cpu()
    longer_than_k = 0
    for y in range(14):
        for x in range(18):
            contrib = []
            brute_force_pixel(settings, x, y, centers, lengths, geos, rgbs, weights_out=contrib)
            # Descending weight; sorted() is stable, so equal weights keep front-to-back order.
            order = sorted(contrib, key=lambda iw: -iw[1])
            ranked, ws = order[:k], [w for _, w in order]
            longer_than_k += len(contrib) > k
            want_w = torch.tensor(ws[:k] + [0.0] * (k - len(ranked)))
            assert (weights[:, y, x].double() - want_w).abs().max() <= 2e-5, (x, y)
            for j, (voxel, w) in enumerate(ranked):
                # The id must match unless a neighbour in the ranking nearly ties (float32 order).
                neighbours = ws[max(j - 1, 0):j] + ws[j + 1:j + 2]
                if all(abs(w - o) > 1e-4 for o in neighbours):
                    assert ids[j, y, x] == voxel, (x, y, j)
            assert (ids[len(ranked):, y, x] == -1).all() and (weights[len(ranked):, y, x] == 0).all()
    if opaque:  # the first voxel hit takes (almost) all the weight
        assert (weights[0][ids[0] >= 0] > 0.99).float().mean() > 0.9
    else:
        assert longer_than_k > 20
    assert (ids[0] >= 0).sum() > 100


@pytest.mark.parametrize("device", DEVICES)
def test_topk_k_larger_than_any_list_and_sparse(device):
    device = device_or_skip(device)
    octpath, centers, lengths, geos, _ = scene(23, device=device)
    settings = make_settings((2.3, -1.8, 1.2), (0, 0, 0), width=21, height=17, fov_deg=55, n_samp_per_vox=2)
    k = 64
    ids, weights = topk_contributors(settings, octpath, centers, lengths, geos, k)
    listed = (ids >= 0).sum(0)
    assert listed.max() < k and listed.max() > 3
    # Sorted, padded consistently, and each listed voxel at most once per pixel.
    assert (weights[:-1] >= weights[1:]).all()
    assert ((ids == -1) == (weights == 0)).all()
    one = topk_contributors(settings, octpath, centers, lengths, geos, 1)
    assert torch.equal(one[0][0], ids[0]) and torch.equal(one[1][0], weights[0])
    # With pixels: the same lists at those pixels, duplicates answered, [k, P].
    pixels = torch.cat([random_pixels(40, settings, 3, device), torch.tensor([[0, 0], [16, 20], [0, 0]], device=device)])
    sp_ids, sp_w = topk_contributors(settings, octpath, centers, lengths, geos, k, pixels=pixels)
    assert sp_ids.shape == (k, len(pixels))
    assert torch.equal(sp_ids, ids[:, pixels[:, 0], pixels[:, 1]])
    assert torch.equal(sp_w, weights[:, pixels[:, 0], pixels[:, 1]])


# ---------------------------------------------------------------- sparse rendering


def dense_and_sparse(settings, data, pixels, upstream_seed=0, intersections=None):
    """Dense and sparse renders with gradients of sum(outputs * random weights); the dense
    upstream gradients are the sparse ones scattered (added) to the requested pixels."""
    octpath, centers, lengths, geos, rgbs = data
    device = geos.device
    H, W = settings.image_height, settings.image_width
    gen = torch.Generator().manual_seed(upstream_seed)
    shapes = [(3, len(pixels)), (3, len(pixels)), (3, len(pixels)), (1, len(pixels))]
    ups = [torch.randn(s, generator=gen).to(device) for s in shapes]

    sparse_leaves = leaves(geos, rgbs)
    out_s = rasterize_voxels_sparse(settings, octpath, centers, lengths, vox_fn_of(*sparse_leaves), pixels,
                                    intersections=intersections)
    sum((o * u).sum() for o, u in zip(out_s[:4], ups) if o.numel()).backward()

    dense_leaves = leaves(geos, rgbs)
    out_d = rasterize_voxels(settings, octpath, centers, lengths, vox_fn_of(*dense_leaves))
    flat = pixels[:, 0] * W + pixels[:, 1]
    loss = 0
    for o, u in zip(out_d[:4], ups):
        if o.numel():
            scattered = torch.zeros(o.shape[0], H * W, device=device).index_add_(1, flat, u)
            loss = loss + (o * scattered.reshape(o.shape)).sum()
    loss.backward()
    return out_s, out_d, sparse_leaves, dense_leaves


def assert_close_grads(a_leaves, b_leaves, rtol=1e-4, priority=True):
    names = ("geos", "rgbs", "subdiv_p") if priority else ("geos", "rgbs")
    for name, a, b in zip(names, a_leaves, b_leaves):
        scale = b.grad.abs().max().clamp(min=1e-6)
        err = (a.grad - b.grad).abs().max() / scale
        assert err <= rtol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_samp", [1, 3])
@pytest.mark.parametrize("which", ["random", "duplicates", "single", "all"])
def test_sparse_equals_dense(device, n_samp, which):
    device = device_or_skip(device)
    data = scene(31 + n_samp, device=device)
    settings = make_settings((0.3, -0.2, 0.25), (1, 0.4, -0.2), width=37, height=29, fov_deg=100, near=0.1,
                             n_samp_per_vox=n_samp, bg_color=0.2, need_depth=True, need_normal=True, track_max_w=True)
    pixels = {
        "random": lambda: all_pixels(settings, device, seed=5)[:150],
        "duplicates": lambda: torch.cat([random_pixels(60, settings, 7, device)] * 2)[torch.randperm(120)],
        "single": lambda: torch.tensor([[17, 20]], device=device),
        "all": lambda: all_pixels(settings, device, seed=9),
    }[which]()
    out_s, out_d, sp, de = dense_and_sparse(settings, data, pixels)
    rows, cols = pixels[:, 0], pixels[:, 1]
    for name, s, d in zip(("color", "depth", "normal", "T"), out_s, out_d):
        assert s.shape == (d.shape[0], len(pixels)), name
        assert (s - d[:, rows, cols]).abs().max() <= 1e-6, name
    assert (out_s[1][0] > 0).any() and (out_s[3] < 0.9).any()
    # max_w over the requested pixels only: never above the dense one, equal at all pixels.
    assert (out_s[4] <= out_d[4] + 1e-7).all()
    if which == "all":
        assert (out_s[4] - out_d[4]).abs().max() <= 1e-6
    # The priority sums |dL/dalpha * alpha| per request: equal to the dense one without repeats.
    assert_close_grads(sp, de, priority=which != "duplicates")


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_frames_match_grad_mode(device):
    """Under torch.no_grad() a frame skips the autograd Function (renderer._render); its outputs
    are those of a frame in grad mode, bit for bit, dense and sparse, and carry no graph."""
    device = device_or_skip(device)
    octpath, centers, lengths, geos, rgbs = scene(5, device=device)
    settings = make_settings((2.0, 1.7, -1.2), (0, 0, 0), width=24, height=16, **FULL)
    pixels = random_pixels(40, settings, 5, device)
    g, r, s = leaves(geos, rgbs)
    for render in (lambda: rasterize_voxels(settings, octpath, centers, lengths, vox_fn_of(g, r, s)),
                   lambda: rasterize_voxels_sparse(settings, octpath, centers, lengths, vox_fn_of(g, r, s), pixels)):
        with torch.no_grad():
            fast = render()
        traced = render()
        assert traced[0].requires_grad and not any(t.requires_grad for t in fast)
        for a, b in zip(fast, traced):
            assert a.numel() > 0 and torch.equal(a, b.detach())


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_regularisers_add_up_to_dense(device):
    """With the implicit regularisers on, two sparse renders that split the image's pixels
    give gradients that add up to the dense render's."""
    device = device_or_skip(device)
    octpath, centers, lengths, geos, rgbs = scene(41, device=device)
    settings = make_settings((2.1, -1.6, 1.1), (0, 0, 0), width=26, height=19, fov_deg=60, bg_color=0.1, **FULL)
    gt = torch.rand(3, 19, 26, generator=torch.Generator().manual_seed(2)).to(device)
    settings = settings._replace(lambda_R_concen=0.4, gt_color=gt)
    pixels = all_pixels(settings, device, seed=3)
    halves = pixels[:200], pixels[200:]

    g, r, s = leaves(geos, rgbs)
    color, depth, normal, T, _ = rasterize_voxels(settings, octpath, centers, lengths, vox_fn_of(g, r, s))
    (color.sum() + 0.5 * depth[0].sum() + normal.sum() - T.sum()).backward()
    dense = (g, r, s)

    total = [torch.zeros_like(geos), torch.zeros_like(rgbs), torch.zeros(len(geos), 1, device=device)]
    for part, gt_form in zip(halves, ("image", "columns")):
        st = settings if gt_form == "image" else settings._replace(gt_color=gt[:, part[:, 0], part[:, 1]])
        g, r, s = leaves(geos, rgbs)
        color, depth, normal, T, _ = rasterize_voxels_sparse(st, octpath, centers, lengths, vox_fn_of(g, r, s), part)
        (color.sum() + 0.5 * depth[0].sum() + normal.sum() - T.sum()).backward()
        for acc, leaf in zip(total, (g, r, s)):
            acc += leaf.grad
    for name, acc, leaf in zip(("geos", "rgbs", "subdiv_p"), total, dense):
        err = (acc - leaf.grad).abs().max() / leaf.grad.abs().max()
        assert err <= 1e-4, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_empty_pixel_list(device):
    device = device_or_skip(device)
    octpath, centers, lengths, geos, rgbs = scene(43, device=device)
    settings = make_settings((2.1, -1.6, 1.1), (0, 0, 0), width=20, height=16, need_depth=True)
    none = torch.zeros(0, 2, dtype=torch.long, device=device)
    color, depth, normal, T, _ = rasterize_voxels_sparse(settings, octpath, centers, lengths,
                                                         vox_fn_of(*leaves(geos, rgbs)), none)
    assert color.shape == (3, 0) and depth.shape == (3, 0) and T.shape == (1, 0)
    ids, weights = topk_contributors(settings, octpath, centers, lengths, geos, 3, pixels=none)
    assert ids.shape == (3, 0) and weights.shape == (3, 0)


def test_reference_binning_test_against_pixels():
    """The reference's sparse binning test (mirrored by math.cuh's bins_into, whose lists the
    CUDA tests compare with the reference's) against the pixels themselves: a rectangle is
    binned into a tile exactly when one of the tile's requested pixels lies inside it (tiles
    of at most MAX_EXACT_TILES), every bit of the 64-bit tile masks, row 7 (the sign bit) too."""
    from svraster_cuda import meta
    from svraster_cuda.reference.binning import bins_into
    from svraster_cuda.reference.requests import request_masks
    t, tiles_x, tiles_y = meta.TILE_SIZE, 3, 2
    settings = make_settings((0, 0, -3.0), (0, 0, 0), width=tiles_x * t, height=tiles_y * t)
    gen = torch.Generator().manual_seed(5)
    for n_pixels in (1, 3, 12):
        pixels = torch.stack([torch.randint(0, tiles_y * t, (n_pixels,), generator=gen),
                              torch.randint(0, tiles_x * t, (n_pixels,), generator=gen)], 1)
        requests = request_masks(settings, pixels)
        image = torch.zeros(tiles_y * t, tiles_x * t, dtype=torch.bool)
        image[pixels[:, 0], pixels[:, 1]] = True
        # Rectangles in image pixels (x0, y0, x1, y1) and each tile they touch.
        corners = torch.stack([torch.randint(0, tiles_x * t, (400,), generator=gen),
                               torch.randint(0, tiles_y * t, (400,), generator=gen)], 1)
        sizes = torch.randint(0, 11, (400, 2), generator=gen)
        rects = torch.cat([corners, (corners + sizes).minimum(torch.tensor([tiles_x * t - 1, tiles_y * t - 1]))], 1)
        for rect in rects:
            x0, y0, x1, y1 = rect.tolist()
            for ty in range(y0 // t, y1 // t + 1):
                for tx in range(x0 // t, x1 // t + 1):
                    tile = torch.tensor([ty * tiles_x + tx])
                    got = bins_into(requests, rect[None], tile, torch.tensor([1]), tiles_x)
                    inside = image[max(y0, ty * t):min(y1, ty * t + t - 1) + 1,
                                   max(x0, tx * t):min(x1, tx * t + t - 1) + 1]
                    assert bool(got) == bool(inside.any()), (rect.tolist(), tx, ty, pixels.tolist())

# ---------------------------------------------------------------- reusable intersections


@pytest.mark.parametrize("device", DEVICES)
def test_intersections_reuse_matches_fresh_calls(device):
    device = device_or_skip(device)
    octpath, centers, lengths, geos, settings, vox_fn = query_case(51, device, 33, 20, **FULL)
    pixels = random_pixels(70, settings, 4, device)

    inter = intersect_voxels(settings, octpath, centers, lengths)
    assert isinstance(inter, TileIntersections) and len(inter.in_view) > 0
    for _ in range(2):
        for a, b in zip(rasterize_voxels(settings, octpath, centers, lengths, vox_fn, intersections=inter),
                        rasterize_voxels(settings, octpath, centers, lengths, vox_fn)):
            assert torch.equal(a, b)
        for a, b in zip(topk_contributors(settings, octpath, centers, lengths, geos, 5, intersections=inter),
                        topk_contributors(settings, octpath, centers, lengths, geos, 5)):
            assert torch.equal(a, b)
        for a, b in zip(rasterize_voxels_sparse(settings, octpath, centers, lengths, vox_fn, pixels, intersections=inter),
                        rasterize_voxels_sparse(settings, octpath, centers, lengths, vox_fn, pixels)):
            assert torch.equal(a, b)

    # Built for a pixel subset: serves those pixels (and any others in the same tiles).
    sub = intersect_voxels(settings, octpath, centers, lengths, pixels=pixels)
    assert len(sub.in_view) <= len(inter.in_view)
    # Only voxels that may cover a requested pixel are binned.
    one = intersect_voxels(settings, octpath, centers, lengths, pixels=pixels[:1])
    assert 0 < len(one.in_view) < len(inter.in_view) / 4
    for a, b in zip(rasterize_voxels_sparse(settings, octpath, centers, lengths, vox_fn, pixels, intersections=sub),
                    rasterize_voxels_sparse(settings, octpath, centers, lengths, vox_fn, pixels, intersections=inter)):
        assert torch.equal(a, b)
    for a, b in zip(topk_contributors(settings, octpath, centers, lengths, geos, 3, pixels=pixels, intersections=sub),
                    topk_contributors(settings, octpath, centers, lengths, geos, 3, pixels=pixels)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_stale_intersections_refused(device):
    device = device_or_skip(device)
    octpath, centers, lengths, geos, settings, vox_fn = query_case(52, device, 40, 24)
    inter = intersect_voxels(settings, octpath, centers, lengths)

    moved = make_settings((2.0, 1.7, -1.1), (0, 0, 0), width=40, height=24)
    with pytest.raises(ValueError, match="intersections: built for another camera"):
        rasterize_voxels(moved, octpath, centers, lengths, vox_fn, intersections=inter)
    bigger = make_settings((2.0, 1.7, -1.2), (0, 0, 0), width=48, height=24)
    with pytest.raises(ValueError, match="intersections: built for another camera or image size"):
        topk_contributors(bigger, octpath, centers, lengths, geos, 2, intersections=inter)
    with pytest.raises(ValueError, match=rf"intersections: built for {len(geos)} voxels, got {len(geos) - 1}"):
        rasterize_voxels(settings, octpath[1:], centers[1:], lengths[1:], vox_fn, intersections=inter)
    moved_centers = centers.clone()
    moved_centers += 0.01
    with pytest.raises(ValueError, match="intersections: built for other voxel tensors"):
        rasterize_voxels(settings, octpath, moved_centers, lengths, vox_fn, intersections=inter)
    centers_inplace = centers.clone()
    fresh = intersect_voxels(settings, octpath, centers_inplace, lengths)
    centers_inplace[0, 0] += 0.5
    with pytest.raises(ValueError, match="modified in place"):
        rasterize_voxels(settings, octpath, centers_inplace, lengths, vox_fn, intersections=fresh)
    with pytest.raises(TypeError, match="intersections: expected a TileIntersections"):
        rasterize_voxels(settings, octpath, centers, lengths, vox_fn, intersections=(1, 2))

    corner = torch.tensor([[0, 0], [3, 5]], device=device)
    sub = intersect_voxels(settings, octpath, centers, lengths, pixels=corner)
    with pytest.raises(ValueError, match="intersections: built for a pixel subset"):
        rasterize_voxels(settings, octpath, centers, lengths, vox_fn, intersections=sub)
    for other in ([[23, 39]], [[15, 15]], [[3, 5], [0, 1]]):  # another tile, the same tile, one of two
        with pytest.raises(ValueError, match="pixels: some requested pixels are not among those"):
            rasterize_voxels_sparse(settings, octpath, centers, lengths, vox_fn, torch.tensor(other, device=device),
                                    intersections=sub)
    # A subset with repeats, in another order, is fine.
    rasterize_voxels_sparse(settings, octpath, centers, lengths, vox_fn, torch.tensor([[3, 5], [3, 5]], device=device),
                            intersections=sub)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_pixels_and_k(device):
    device = device_or_skip(device)
    octpath, centers, lengths, geos, settings, vox_fn = query_case(53, device, 20, 12)

    def sparse(p):
        return rasterize_voxels_sparse(settings, octpath, centers, lengths, vox_fn, p)

    with pytest.raises(ValueError, match=r"pixels: expected \(row, col\) pairs with 0 <= row < 12 and 0 <= col < 20"):
        sparse(torch.tensor([[12, 0]], device=device))
    with pytest.raises(ValueError, match="pixels: expected"):
        sparse(torch.tensor([[0, 20]], device=device))
    with pytest.raises(ValueError, match="pixels: expected"):
        sparse(torch.tensor([[-1, 3]], device=device))
    with pytest.raises(TypeError, match="pixels: expected dtype torch.int64"):
        sparse(torch.tensor([[0, 1]], dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"pixels: expected shape \[\*, 2\]"):
        sparse(torch.tensor([0, 1], device=device))
    with pytest.raises(TypeError, match="pixels: expected a torch.Tensor"):
        sparse([[0, 1]])
    for k in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="k: expected an int >= 1"):
            topk_contributors(settings, octpath, centers, lengths, geos, k)
    with pytest.raises(ValueError, match="pixels: expected"):
        topk_contributors(settings, octpath, centers, lengths, geos, 2, pixels=torch.tensor([[0, 99]], device=device))
    with pytest.raises(ValueError, match="pixels: expected"):
        intersect_voxels(settings, octpath, centers, lengths, pixels=torch.tensor([[50, 0]], device=device))
    with pytest.raises(ValueError, match=r"geos: expected shape"):
        topk_contributors(settings, octpath, centers, lengths, geos[:, :3], 2)
