"""Host time of the CUDA path's steps (CPU wall clock, GPU idle): where a frame's Python and
C++ time goes, for the frames whose GPU work is short (small scenes, sparse pixels).

    python bench/bench_host.py [--scene R1.5M] [--pixels 20736] [--frames] [--label NAME]
    python bench/bench_host.py --gaps --scene R6M    # where an unprofiled dense frame's GPU waits
    python bench/bench_host.py --ab BASE/cuda/svraster_cuda --scene R6M   # two builds, one process

Each row is the mean over repeated calls; "+ sync" rows include waiting for the GPU.
`--frames` times whole frames through the public API only (300 sparse, 100 dense), so that
two builds can be compared in alternating processes (gpu_check.sh HOST_AB=N): the host time
of one process can differ from another's by 10%, so compare over several rounds.
`--ab PATH` loads a second build of the package (PATH: its package directory, built in place)
as `svraster_base` beside this one and times whole frames of both in one process, alternating
in short blocks (ABBA), so that the host's speed, which differs between processes by up to 2x
and drifts within one, weighs on both alike; the rows are medians over the blocks.
`--gaps` splits unprofiled dense forwards (8 orbit views) at the two extension calls, with host
clocks and CUDA events at each boundary (see `gaps`)."""
import statistics
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_scene, orbit_settings, patch_pixels, random_pixels  # noqa: E402

from svraster_cuda import cuda_backend, renderer, validation  # noqa: E402


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


class _Probe:
    """Stands in for the extension module: a CUDA event and a host clock reading before and
    after each of the calls a frame makes (the backward's too)."""
    CALLS = ("rasterize_preprocess", "rasterize_voxels", "rasterize_voxels_autograd")

    def __init__(self, module):
        self.module, self.marks = module, {}

    def mark(self, name):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.marks[name] = (time.perf_counter(), event)

    def __getattr__(self, name):
        fn = getattr(self.module, name)
        if name not in self.CALLS:
            return fn

        def call(*args, **kwargs):
            self.mark(f"{name} in")
            out = fn(*args, **kwargs)
            self.mark(f"{name} out")
            return out
        return call


def gaps(scene_name, repeat=20, n_pixels=0, backward=False):
    """Medians over views and repeats, in us from the frame's start, of where an unprofiled
    dense forward (no_grad, as bench_cuda.py times it) spends host time and where its GPU
    waits (`n_pixels`: a fresh sparse forward of that many random pixels instead; `backward`:
    a training step, the forward in grad mode, the loss color.sum() + T.sum() and its
    backward). An event recorded on an idle stream completes at about the host's time of
    recording, on a busy one when the work queued before it ends: "GPU idle before the render"
    is the event before the render call minus the one after the preprocess call (which
    completes when the binning's last kernel ends), where the host had not yet reached the
    render's launch."""
    scene = make_scene(scene_name, "cuda")
    params = {"geos": scene["geos"].requires_grad_(backward), "rgbs": scene["rgbs"].requires_grad_(backward),
              "subdiv_p": torch.zeros(len(scene["geos"]), 1, device="cuda", requires_grad=backward)}
    voxels = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    probe = _Probe(cuda_backend._load())
    cuda_backend._C = probe
    pixels = random_pixels(n_pixels, 1920, 1080, torch.Generator().manual_seed(0))
    rows = {}
    try:
        for settings in orbit_settings(scene_name, 8, 1920, 1080, "cpu"):
            for i in range(repeat + 3):
                torch.cuda.synchronize()
                probe.marks = {}
                for p in params.values():
                    p.grad = None
                probe.mark("start")
                with torch.set_grad_enabled(backward):
                    if n_pixels:
                        out = renderer.rasterize_voxels_sparse(settings, *voxels, lambda *a: params, pixels)
                    else:
                        out = renderer.rasterize_voxels(settings, *voxels, lambda *a: params)
                if backward:
                    loss = out[0].sum() + out[3].sum()
                    probe.mark("backward")
                    loss.backward()
                probe.mark("end")
                torch.cuda.synchronize()
                if i < 3:
                    continue
                host = {k: (t - probe.marks["start"][0]) * 1e6 for k, (t, _) in probe.marks.items()}
                gpu = {k: probe.marks["start"][1].elapsed_time(e) * 1e3 for k, (_, e) in probe.marks.items()}
                render = "rasterize_voxels_autograd" if backward else "rasterize_voxels"
                spans = {
                    "host: Python before the preprocess call": host["rasterize_preprocess in"],
                    "host: preprocess call (its device read included)":
                        host["rasterize_preprocess out"] - host["rasterize_preprocess in"],
                    "host: Python between the calls (vox_fn, checks)":
                        host[f"{render} in"] - host["rasterize_preprocess out"],
                    "host: render call": host[f"{render} out"] - host[f"{render} in"],
                }
                if backward:
                    # The backward runs inside the extension, called by autograd's engine.
                    spans.update({
                        "host: from the render call to backward() (loss)": host["backward"] - host[f"{render} out"],
                        "host: backward() (autograd's engine and the backward call)": host["end"] - host["backward"],
                        "GPU: render call's end to backward()'s": gpu["end"] - gpu[f"{render} out"],
                    })
                spans.update({
                    "host: the whole call": host["end"],
                    "GPU: binning's last kernel ends": gpu["rasterize_preprocess out"],
                    "GPU: idle before the render": gpu[f"{render} in"] - gpu["rasterize_preprocess out"],
                    "GPU: frame (events)": gpu["end"],
                })
                for k, v in spans.items():
                    rows.setdefault(k, []).append(v)
    finally:
        cuda_backend._C = probe.module
    kind = f"fresh sparse forward of {n_pixels} pixels" if n_pixels else "dense forward"
    kind += " + backward" if backward else ""
    print(f"| {scene_name} 1920x1080 {kind}, unprofiled | median us |")
    print("|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {statistics.median(v):.1f} |")
    if not n_pixels and not backward:
        gpu_timeline(scene_name, voxels, params)


def gpu_timeline(scene_name, voxels, params):
    """The GPU's activities in one forward of view 0 under a profiler that records CUDA
    activity only (no host-side op events, which slow the host several-fold): each one's start
    and length, and the idle time before it, in us."""
    from torch.profiler import ProfilerActivity, profile
    settings = orbit_settings(scene_name, 1, 1920, 1080, "cpu")[0]

    def frame():
        with torch.no_grad():
            renderer.rasterize_voxels(settings, *voxels, lambda *a: params)
        torch.cuda.synchronize()
    for _ in range(3):
        frame()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        frame()
    events = sorted((e for e in prof.events() if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    print(f"== {scene_name} view 0, GPU activities (us: start, length, idle before)")
    previous_end = events[0].time_range.start
    busy = 0.0
    for e in events:
        start, end = e.time_range.start, e.time_range.end
        print(f"  {start - events[0].time_range.start:8.1f} {end - start:7.1f} {max(0.0, start - previous_end):6.1f}  "
              f"{e.name[:70]}")
        busy += end - start
        previous_end = max(previous_end, end)
    span = previous_end - events[0].time_range.start
    print(f"  first to last: {span:.1f} us, busy {busy:.1f} us, idle {span - busy:.1f} us")


def load_base(path):
    """The package at `path` (a directory holding __init__.py and its built _C) as svraster_base."""
    import importlib.util
    path = Path(path).resolve()
    spec = importlib.util.spec_from_file_location("svraster_base", path / "__init__.py",
                                                  submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["svraster_base"] = module
    spec.loader.exec_module(module)
    import svraster_base.renderer  # noqa: F401
    import svraster_base.cuda_backend
    if not svraster_base.cuda_backend.available():
        raise SystemExit(f"--ab: no built extension in {path}")
    return sys.modules["svraster_base.renderer"]


def ab(scene_name, base_path, n_pixels, blocks=40, block=10):
    """Whole frames through the public API of the baseline (`base_path`) and of this tree, in
    one process (forwards under no_grad, as bench_cuda.py times them; fwd+bwd with the loss
    color.sum() + T.sum()): `blocks` rounds of `block` frames each, the builds' order alternating (ABBA).
    Prints the median over rounds of the mean frame's host time (with a sync), in us."""
    base = load_base(base_path)
    scene = make_scene(scene_name, "cuda")
    settings = orbit_settings(scene_name, 1, 1920, 1080, "cpu")[0]
    voxels = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    params = {"geos": scene["geos"].requires_grad_(), "rgbs": scene["rgbs"].requires_grad_(),
              "subdiv_p": torch.zeros(len(scene["geos"]), 1, device="cuda", requires_grad=True)}
    gen = torch.Generator().manual_seed(0)
    pixels = random_pixels(n_pixels, settings.image_width, settings.image_height, gen)
    patches = patch_pixels(n_pixels, settings.image_width, settings.image_height, gen)
    builds = {"base": base, "tree": renderer}

    def forward_backward(render):
        for p in params.values():
            p.grad = None  # as optimizer.zero_grad() does
        color, _, _, T, _ = render()
        (color.sum() + T.sum()).backward()
    # Each build's own settings (its RasterSettings class) and intersections.
    own = {k: r.RasterSettings(**settings._asdict()) for k, r in builds.items()}
    dense = {k: r.intersect_voxels(own[k], *voxels) for k, r in builds.items()}
    sparse = {k: r.intersect_voxels(own[k], *voxels, pixels=pixels) for k, r in builds.items()}

    def frames(k):
        r, s = builds[k], own[k]
        no_grad = torch.no_grad()  # as a decorator of each forward
        return {
            "dense forward": no_grad(lambda: r.rasterize_voxels(s, *voxels, lambda *a: params)),
            "dense fwd+bwd": lambda: forward_backward(lambda: r.rasterize_voxels(s, *voxels, lambda *a: params)),
            "sparse fwd+bwd": lambda: forward_backward(
                lambda: r.rasterize_voxels_sparse(s, *voxels, lambda *a: params, pixels)),
            "dense forward, reused intersections":
                no_grad(lambda: r.rasterize_voxels(s, *voxels, lambda *a: params, intersections=dense[k])),
            "sparse forward": no_grad(lambda: r.rasterize_voxels_sparse(s, *voxels, lambda *a: params, pixels)),
            "sparse forward, 8x8 patches":
                no_grad(lambda: r.rasterize_voxels_sparse(s, *voxels, lambda *a: params, patches)),
            "sparse forward, reused intersections": no_grad(
                lambda: r.rasterize_voxels_sparse(s, *voxels, lambda *a: params, pixels, intersections=sparse[k])),
        }
    calls = {k: frames(k) for k in builds}
    rows = {}
    for name in calls["tree"]:
        for k in builds:
            for _ in range(5):
                calls[k][name]()
        for i in range(blocks):
            for k in (("base", "tree") if i % 4 in (0, 3) else ("tree", "base")):
                fn = calls[k][name]
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(block):
                    fn()
                    torch.cuda.synchronize()
                rows.setdefault((name, k), []).append((time.perf_counter() - start) / block * 1e6)
    print(f"| {scene_name} 1920x1080, {n_pixels} sparse pixels, one process ({blocks} blocks of {block}) "
          "| base us | tree us | tree / base |")
    print("|---|---|---|---|")
    for name in calls["tree"]:
        b, t = (statistics.median(rows[(name, k)]) for k in ("base", "tree"))
        print(f"| {name} | {b:.1f} | {t:.1f} | {t / b:.3f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scene", default="R1.5M")
    ap.add_argument("--pixels", type=int, default=20736, help="requested pixels of the sparse rows (1%% of 1080p)")
    ap.add_argument("--frames", action="store_true", help="whole frames only, through the public API")
    ap.add_argument("--label", default="", help="printed in the table's heading (e.g. base, tree)")
    ap.add_argument("--gaps", action="store_true", help="host spans and GPU idle of dense forwards instead")
    ap.add_argument("--sparse", action="store_true", help="--gaps of fresh sparse forwards of --pixels pixels")
    ap.add_argument("--backward", action="store_true", help="--gaps of training steps (forward and backward)")
    ap.add_argument("--ab", metavar="PATH", help="a baseline's package directory: both builds' frames, one process")
    args = ap.parse_args()
    if args.gaps:
        return gaps(args.scene, n_pixels=args.pixels if args.sparse else 0, backward=args.backward)
    if args.ab:
        return ab(args.scene, args.ab, args.pixels)

    scene = make_scene(args.scene, "cuda")
    settings = orbit_settings(args.scene, 1, 1920, 1080, "cpu")[0]
    voxels = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    device = scene["vox_centers"].device
    params = {"geos": scene["geos"], "rgbs": scene["rgbs"],
              "subdiv_p": torch.zeros(len(scene["geos"]), 1, device=device)}
    pixels = random_pixels(args.pixels, settings.image_width, settings.image_height, torch.Generator().manual_seed(0))
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
