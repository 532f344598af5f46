"""Reference (PyTorch, CPU) renderer: forward and forward+backward time and peak memory.

    python bench/bench_reference.py [--scene R300k] [--width 640 --height 480] [--json out.json]
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_scene, orbit_settings  # noqa: E402

from svraster_cuda.renderer import rasterize_voxels  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scene", default="R300k")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--json")
    args = ap.parse_args()
    scene = make_scene(args.scene, "cpu")
    settings = orbit_settings(args.scene, 1, args.width, args.height, "cpu", need_depth=True, lambda_dist=0.1)[0]
    geos = scene["geos"].requires_grad_()
    rgbs = scene["rgbs"].requires_grad_()
    subdiv = torch.zeros(len(geos), 1, requires_grad=True)

    def vox_fn(idx, cam_pos, mode):
        return {"geos": geos, "rgbs": rgbs, "subdiv_p": subdiv}

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.no_grad():
        out = rasterize_voxels(settings, scene["octpath"], scene["vox_centers"], scene["vox_lengths"], vox_fn)
    t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = rasterize_voxels(settings, scene["octpath"], scene["vox_centers"], scene["vox_lengths"], vox_fn)
    (out[0].sum() + out[1][0].sum()).backward()
    t_both = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {"scene": args.scene, "voxels": len(geos), "resolution": f"{args.width}x{args.height}",
              "threads": torch.get_num_threads(), "forward_s": round(t_fwd, 2), "forward_backward_s": round(t_both, 2),
              "peak_rss_gb": round(peak, 2), "rss_before_gb": round(rss0 / 2**20, 2),
              "coverage": round(float((out[3] < 1).float().mean()), 3)}
    print("| scene | voxels | resolution | forward s | fwd+bwd s | peak RSS GB |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.scene} | {len(geos)} | {result['resolution']} | {t_fwd:.2f} | {t_both:.2f} | {peak:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
