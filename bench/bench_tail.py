"""How much of the forward render kernel is the walk of the longest tile lists: its GPU time
(torch profiler) for the whole image, then with every list but the k longest emptied (the
dense path, split tiles and all), and for the pixels of the k longest tiles rendered as
requested pixels (a path without the split, whose walk is slower), view 0 at 1080p. A k of one
taking about the whole image's time means the kernel waits on one list's walk (docs/design.md,
session 12).

    python bench/bench_tail.py [O6M R6M]
"""
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_scene, orbit_settings  # noqa: E402

from svraster_cuda import meta, renderer  # noqa: E402


def kernel_us(fn, name="render_forward", repeat=5):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
    times = [e.device_time for e in prof.events() if name in e.name and e.device_type.name == "CUDA"]
    return sum(times) / max(len(times), 1)


for scene_name in sys.argv[1:] or ["O6M", "R6M"]:
    scene = make_scene(scene_name, "cuda")
    s = orbit_settings(scene_name, 8, 1920, 1080, "cpu")[0]
    vox = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    params = {"geos": scene["geos"], "rgbs": scene["rgbs"],
              "subdiv_p": torch.zeros(len(scene["geos"]), 1, device="cuda")}
    inter = renderer.intersect_voxels(s, *vox)
    ranges = inter.state.ranges.long()
    lengths = (ranges[:, 1] - ranges[:, 0]).cpu()
    order = torch.argsort(lengths, descending=True)
    tiles_x = (s.image_width + meta.TILE_SIZE - 1) // meta.TILE_SIZE
    with torch.no_grad():
        whole = kernel_us(lambda: renderer.rasterize_voxels(s, *vox, lambda *a: params, intersections=inter))
        print(f"{scene_name}: whole image render_forward {whole:.1f} us; longest lists {lengths[order[:8]].tolist()}")
        ranges_int = inter.state.ranges
        for k in (1, 4, 32, 256, 2048):
            tiles = order[:k]
            keep = torch.zeros(len(lengths), dtype=torch.bool)
            keep[tiles] = True
            only_k = renderer.TileIntersections(
                inter.impl, inter.state._replace(ranges=torch.where(keep[:, None].cuda(), ranges_int, 0)),
                inter.in_view, inter.camera, inter.voxels)
            dense = kernel_us(lambda: renderer.rasterize_voxels(s, *vox, lambda *a: params, intersections=only_k))
            ty, tx = tiles // tiles_x, tiles % tiles_x
            yy, xx = torch.meshgrid(torch.arange(meta.TILE_SIZE), torch.arange(meta.TILE_SIZE), indexing="ij")
            rows = (ty[:, None] * meta.TILE_SIZE + yy.reshape(1, -1)).reshape(-1)
            cols = (tx[:, None] * meta.TILE_SIZE + xx.reshape(1, -1)).reshape(-1)
            inside = (rows < s.image_height) & (cols < s.image_width)
            pixels = torch.stack([rows[inside], cols[inside]], 1).cuda()
            sparse = kernel_us(lambda: renderer.rasterize_voxels_sparse(s, *vox, lambda *a: params, pixels,
                                                                         intersections=inter))
            print(f"  {k} longest tiles ({lengths[tiles].sum().item()} entries): render_forward {dense:.1f} us "
                  f"(other lists emptied), {sparse:.1f} us (their pixels requested)")
