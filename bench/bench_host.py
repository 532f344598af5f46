"""Host time of the CUDA path's steps (CPU wall clock, GPU idle): where a frame's Python and
C++ time goes, for the frames whose GPU work is short (small scenes, sparse pixels).

    python bench/bench_host.py [--scene R1.5M] [--pixels 20736] [--frames] [--label NAME]

Each row is the mean over repeated calls; "+ sync" rows include waiting for the GPU.
`--frames` times whole frames through the public API only (300 sparse, 100 dense), so that
two builds can be compared in alternating processes (gpu_check.sh HOST_AB=N): the host time
of one process can differ from another's by 10%, so compare over several rounds."""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_scene, orbit_settings  # noqa: E402

from svraster_cuda import renderer, validation  # noqa: E402


def mean_us(fn, repeat):
    for _ in range(min(20, repeat)):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / repeat * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scene", default="R1.5M")
    ap.add_argument("--pixels", type=int, default=20736, help="requested pixels of the sparse rows (1%% of 1080p)")
    ap.add_argument("--frames", action="store_true", help="whole frames only, through the public API")
    ap.add_argument("--label", default="", help="printed in the table's heading (e.g. base, tree)")
    args = ap.parse_args()

    scene = make_scene(args.scene, "cuda")
    settings = orbit_settings(args.scene, 1, 1920, 1080, "cpu")[0]
    voxels = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    device = scene["vox_centers"].device
    params = {"geos": scene["geos"], "rgbs": scene["rgbs"],
              "subdiv_p": torch.zeros(len(scene["geos"]), 1, device=device)}
    gen = torch.Generator().manual_seed(0)
    pixels = torch.stack([torch.randint(0, settings.image_height, (args.pixels,), generator=gen),
                          torch.randint(0, settings.image_width, (args.pixels,), generator=gen)], 1).to(device)
    dense = renderer.intersect_voxels(settings, *voxels)
    sparse = renderer.intersect_voxels(settings, *voxels, pixels=pixels)

    def frame(**kw):
        with torch.no_grad():
            if "pixels" in kw:
                renderer.rasterize_voxels_sparse(settings, *voxels, lambda *a: params, **kw)
            else:
                renderer.rasterize_voxels(settings, *voxels, lambda *a: params, **kw)
        torch.cuda.synchronize()

    def layout():  # of reused intersections: the pixels are checked (one read) and laid out
        sparse.impl.pixel_layout(settings, sparse.state, pixels, torch.float32, device, verify=True)
        torch.cuda.synchronize()

    frames = [
        ("forward + sync", frame, 100),
        ("forward, reused intersections + sync", lambda: frame(intersections=dense), 100),
        ("sparse forward + sync", lambda: frame(pixels=pixels), 300),
        ("sparse forward, reused intersections + sync", lambda: frame(pixels=pixels, intersections=sparse), 300),
    ]
    steps = [
        ("validation.check_voxels", lambda: validation.check_voxels(*voxels), 1000),
        ("validation.check_settings (with camera_args)", lambda: validation.check_settings(settings, device), 1000),
        ("validation.camera_args", lambda: validation.camera_args(settings), 1000),
        ("renderer._check_inputs", lambda: renderer._check_inputs(settings, *voxels), 1000),
        ("renderer._camera_position", lambda: renderer._camera_position(settings, dense, device), 1000),
        ("validation.check_vox_params", lambda: validation.check_vox_params(params, len(params["geos"]), device), 1000),
        ("pixel_layout of reused intersections + sync", layout, 100),
    ]
    heading = " ".join(x for x in (args.label, args.scene, f"{settings.image_width}x{settings.image_height},") if x)
    print(f"| {heading} {args.pixels} sparse pixels | host us |")
    print("|---|---|")
    for name, fn, repeat in frames if args.frames else steps + frames:
        print(f"| {name} | {mean_us(fn, repeat):.1f} |")


if __name__ == "__main__":
    main()
