"""CUDA rasterizer benchmark: the issue's procedural scenes at 1920x1080 over 8 orbit views.

    python bench/bench_cuda.py [--scenes O1.4M,O6M,R1.5M,R6M] [--json out.json]
    python bench/bench_cuda.py --scenes O6M,R6M --sparse    # sparse pixels, top-K, reuse
    python bench/bench_cuda.py --scenes O6M,R6M --steady 50  # training steps back to back
    python bench/bench_cuda.py --scenes R6M --gpu-only       # each view's GPU time, host hidden
    python bench/bench_cuda.py --scenes R6M --gpu-only --sparse  # sparse frames' GPU time

Per scene: median over views of the median of repeated runs (CUDA events) of the forward
(`rasterize_voxels`, preprocess and sort included), of forward+backward, and of the forward's
render alone (`intersections=` reused from intersect_voxels), and the peak GPU memory of the
forward and forward+backward (torch.cuda.max_memory_allocated, scene tensors included).
A forward+backward is a training step's: the parameters' gradients are set to None first, as
`optimizer.zero_grad()` does by default (no accumulation kernels; no gradients resident
during the forward). The "frame" memory is the peak minus what was allocated before the call."""
import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_scene, orbit_settings, patch_pixels, random_pixels  # noqa: E402

from svraster_cuda.renderer import rasterize_voxels  # noqa: E402


def time_ms(fn, repeat, sleep_cycles=0):
    """Median of `repeat` calls of fn between two CUDA events. With `sleep_cycles`, the start
    event waits behind a sleeping kernel (4M cycles: about 2 ms) while the host runs ahead to
    the frame's first launch and beyond: the time is then the GPU's, from the frame's first
    kernel on (the waits on the frame's device read included), free of the Python and launch
    time before it, which moves between processes (bench_host.py --gaps)."""
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if sleep_cycles:
            torch.cuda._sleep(sleep_cycles)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gpu_ms(fn, repeat):
    return time_ms(fn, repeat, sleep_cycles=4_000_000)


def gpu_only(name, width, height, views, repeat):
    """Per view: the forward's and the reused-intersections render's GPU time (gpu_ms), and
    the forward's wall time (time_ms) for comparison."""
    from svraster_cuda.renderer import intersect_voxels
    scene, params = scene_and_params(name)
    forward, forward_backward = make_step(name, scene, params)
    voxels = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    print(f"| {name} view | forward ms (events) | forward GPU ms | render GPU ms (reused intersections) |")
    print("|---|---|---|---|")
    rows = []
    for i, s in enumerate(orbit_settings(name, views, width, height, "cpu")):
        for _ in range(2):
            forward_backward(s)
        timed = time_ms(lambda: forward(s), repeat), gpu_ms(lambda: forward(s), repeat)
        inter = intersect_voxels(s, *voxels)  # after the fresh frames: it holds the frame graph's arena
        rows.append((*timed, gpu_ms(partial(forward, s, inter), repeat)))
        del inter
        print(f"| {i} | {rows[-1][0]:.3f} | {rows[-1][1]:.3f} | {rows[-1][2]:.3f} |")
    medians = [statistics.median(r[k] for r in rows) for k in range(3)]
    print(f"| {name} median | {medians[0]:.3f} | {medians[1]:.3f} | {medians[2]:.3f} |")


def bench_scene(name, width, height, views, repeat, only_view=None):
    t0 = time.time()
    scene, params = scene_and_params(name)
    built = time.time() - t0
    forward, forward_backward = make_step(name, scene, params)
    cams = orbit_settings(name, views, width, height, "cpu")
    if only_view is not None:
        cams = cams[only_view:only_view + 1]

    from svraster_cuda.renderer import intersect_voxels
    voxels = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    fwd, both, render, coverage, entries = [], [], [], [], []
    for s in cams:
        for _ in range(2):
            forward_backward(s)
        fwd.append(time_ms(lambda: forward(s), repeat))
        both.append(time_ms(lambda: forward_backward(s), repeat))
        coverage.append(float((forward(s)[3] < 0.5).float().mean()))
        inter = intersect_voxels(s, *voxels)
        entries.append(inter.state.entries.numel())
        render.append(time_ms(partial(forward, s, inter), repeat))
        del inter
    # Peak GPU memory of a frame: the scene's tensors (resident) plus what the frame allocates
    # (the backward's gradients included); the largest over the views.
    peak = {True: 0.0, False: 0.0}
    frame = {True: 0.0, False: 0.0}
    for s in cams:
        for fn, is_fwd in ((forward, True), (forward_backward, False)):
            clear_grads(params)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn(s)
            torch.cuda.synchronize()
            top = torch.cuda.max_memory_allocated()
            peak[is_fwd] = max(peak[is_fwd], top / 2**30)
            frame[is_fwd] = max(frame[is_fwd], (top - before) / 2**30)
    clear_grads(params)
    resident = torch.cuda.memory_allocated() / 2**30
    return {"scene": name, "voxels": len(params["geos"]), "forward_ms": statistics.median(fwd),
            "forward_backward_ms": statistics.median(both), "render_ms": statistics.median(render),
            "peak_fwd_gb": peak[True], "peak_fwd_bwd_gb": peak[False], "frame_fwd_gb": frame[True],
            "frame_fwd_bwd_gb": frame[False], "resident_gb": resident, "entries": statistics.median(entries),
            "coverage": statistics.mean(coverage), "build_s": built}


def clear_grads(params):
    for p in params.values():
        p.grad = None


def host_ms(fn, repeat=10):
    """Median host time of one call of `fn` started on an idle GPU (waits inside included)."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def timeline(label, fn, lines):
    """One call of `fn`, timed as time_ms times it, as a merged host/GPU timeline: the host ops
    called directly inside the frame, the host's waits on the GPU, and the GPU's kernels and
    copies, in ms from the frame's start. Gaps between host ops are Python time. The header
    gives the unprofiled frame time (events) and host time of a call, and the profiled sum of
    GPU work: frame minus GPU work is time the GPU waited for the host."""
    from torch.profiler import ProfilerActivity, profile, record_function
    frame_ms, call_ms = time_ms(fn, 10), host_ms(fn)
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start_event.record()
        with record_function("frame"):
            fn()
        end_event.record()
        torch.cuda.synchronize()
    events = prof.events()
    frame = next(e for e in events if e.name == "frame")
    t0 = frame.time_range.start
    rows = []
    for e in events:
        gpu = e.device_type.name == "CUDA"
        wait = e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaEventSynchronize")
        if gpu or wait or (e.cpu_parent is not None and e.cpu_parent.name == "frame"):
            rows.append((e.time_range.start - t0, e.time_range.end - e.time_range.start,
                         "GPU " if gpu else ("wait" if wait else "host"), e.name))
    rows.sort()
    gpu_rows = [r for r in rows if r[2] == "GPU " and r[3] != "frame"]
    busy = sum(r[1] for r in gpu_rows)
    print(f"== timeline {label}: unprofiled frame {frame_ms:.3f} ms (events), host call {call_ms:.3f} ms; "
          f"GPU work {busy / 1e3:.3f} ms; profiled frame {start_event.elapsed_time(end_event):.3f} ms")
    for start, dur, kind, name in rows[:lines]:
        print(f"  {start / 1e3:7.3f} +{dur / 1e3:6.3f} {kind} {name[:80]}")


def profile_scene(name, width, height, lines=160):
    """Where one forward and one forward+backward spend host time, GPU time and memory."""
    from torch.profiler import ProfilerActivity, profile
    from svraster_cuda.renderer import intersect_voxels
    scene, params = scene_and_params(name)
    voxels = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    forward, forward_backward = make_step(name, scene, params)
    s = orbit_settings(name, 1, width, height, "cpu")[0]
    forward_backward(s)
    timeline(f"{name} forward", lambda: forward(s), lines)
    timeline(f"{name} forward, reused intersections", partial(forward, s, intersect_voxels(s, *voxels)), lines)
    timeline(f"{name} forward+backward", lambda: forward_backward(s), lines)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], profile_memory=True) as prof:
        forward_backward(s)
        torch.cuda.synchronize()
    print(f"== profile {name}")
    print(prof.key_averages().table(sort_by="self_cuda_memory_usage", row_limit=8, max_name_column_width=60))


def make_step(name, scene, params):
    def forward(s, intersections=None):
        with torch.no_grad():
            return rasterize_voxels(s, scene["octpath"], scene["vox_centers"], scene["vox_lengths"], lambda *a: params,
                                    intersections=intersections)

    def forward_backward(s):
        clear_grads(params)  # as optimizer.zero_grad() does
        color, _, _, T, _ = rasterize_voxels(s, scene["octpath"], scene["vox_centers"], scene["vox_lengths"],
                                             lambda *a: params)
        (color.sum() + T.sum()).backward()

    return forward, forward_backward


def scene_and_params(name):
    scene = make_scene(name, "cuda")
    geos = scene["geos"].requires_grad_()
    params = {"geos": geos, "rgbs": scene["rgbs"].requires_grad_(),
              "subdiv_p": torch.zeros(len(geos), 1, device="cuda", requires_grad=True)}
    return scene, params


def long_run(name, n, width, height):
    """n consecutive renders of one view, alternating forward and forward+backward: allocated
    memory and time per render at the start and at the end."""
    scene, params = scene_and_params(name)
    forward, forward_backward = make_step(name, scene, params)
    s = orbit_settings(name, 1, width, height, "cpu")[0]
    memory, times = [], []
    for i in range(n):
        times.append(time_ms(lambda: (forward_backward if i % 2 else forward)(s), 1))
        memory.append(torch.cuda.memory_allocated())
    # Forwards (even i) and training steps (odd i) apart: a median over both falls between them.
    def medians(first, last):
        return " / ".join(f"{statistics.median(times[i] for i in range(first, last) if i % 2 == kind):.2f}"
                          for kind in (0, 1))
    print(f"long run {name}, {n} renders ({width}x{height}): allocated after render 10 / {n}: "
          f"{memory[10] / 2**20:.1f} / {memory[-1] / 2**20:.1f} MB (max {max(memory[10:]) / 2**20:.1f} MB); "
          f"median ms forward / fwd+bwd, renders 10-110: {medians(10, 110)}, last 100: {medians(n - 100, n)}")


def large_images(name, sizes):
    """Forward and forward+backward time and peak memory at large resolutions."""
    scene, params = scene_and_params(name)
    forward, forward_backward = make_step(name, scene, params)
    print(f"| {name} size | forward ms | fwd+bwd ms | peak GB fwd / fwd+bwd |")
    print("|---|---|---|---|")
    for w, h in sizes:
        s = orbit_settings(name, 1, w, h, "cpu")[0]
        forward_backward(s)
        peaks = []
        for fn in (forward, forward_backward):
            clear_grads(params)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn(s)
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() / 2**30)
        print(f"| {w}x{h} | {time_ms(lambda: forward(s), 3):.2f} | {time_ms(lambda: forward_backward(s), 3):.2f} | "
              f"{peaks[0]:.2f} / {peaks[1]:.2f} |")


def sparse_queries(name, width, height, fraction=0.01, k=8, profile=False, gpu=False):
    """Random pixels (`fraction` of the image, and ten times as many) and `fraction` of the
    image in random 8x8 patches, rendered sparsely, fresh and with reused intersections, against
    the dense render; and top-K of the whole image.
    `gpu`: the forwards' GPU time (gpu_ms: the host's time before the first launch hidden)
    beside their time with events, medians of 30 calls."""
    from svraster_cuda.renderer import intersect_voxels, rasterize_voxels_sparse, topk_contributors
    scene, params = scene_and_params(name)
    forward, forward_backward = make_step(name, scene, params)
    s = orbit_settings(name, 1, width, height, "cpu")[0]
    gen = torch.Generator().manual_seed(0)

    fractions = (fraction, 10 * fraction)
    pixel_sets = [random_pixels(int(f * width * height), width, height, gen) for f in fractions]
    pixels = pixel_sets[0]
    patches = patch_pixels(int(fraction * width * height), width, height, gen)
    voxels = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    inter = intersect_voxels(s, *voxels)

    def sparse(intersections=None, backward=False, px=pixels):
        # A forward without backward runs under no_grad, as the dense forward does: in grad mode
        # it would also zero the backward's gradient buffers (0.09 ms at 6M voxels).
        clear_grads(params)
        with torch.set_grad_enabled(backward):
            color, _, _, T, _ = rasterize_voxels_sparse(s, *voxels, lambda *a: params, px,
                                                        intersections=intersections)
        if backward:
            (color.sum() + T.sum()).backward()

    rows = [("dense forward", lambda: forward(s)), ("dense fwd+bwd", lambda: forward_backward(s))]
    for f, px in zip(fractions, pixel_sets):
        rows += [(f"sparse {f:.0%} forward", lambda px=px: sparse(px=px)),
                 (f"sparse {f:.0%} fwd+bwd", lambda px=px: sparse(backward=True, px=px))]
    rows += [(f"sparse {fraction:.0%} in 8x8 patches forward", lambda: sparse(px=patches)),
             (f"sparse {fraction:.0%} in 8x8 patches fwd+bwd", lambda: sparse(backward=True, px=patches)),
             (f"sparse {fraction:.0%} forward, reused intersections", lambda: sparse(inter)),
             ("intersect_voxels (dense)", lambda: intersect_voxels(s, *voxels)),
             (f"topk k={k}, whole image, reused intersections",
              lambda: topk_contributors(s, *voxels, params["geos"], k, intersections=inter))]
    if gpu:
        print(f"| {name} {width}x{height} forward | events ms | GPU ms |")
        print("|---|---|---|")
        for label, fn in [row for row in rows if row[0].endswith("forward") or row[0].endswith("intersections")][:5]:
            fn()
            print(f"| {label} | {time_ms(fn, 30):.3f} | {gpu_ms(fn, 30):.3f} |")
        return
    if profile:
        timeline(f"{name} sparse {fraction:.0%} forward", sparse, 200)
        timeline(f"{name} sparse {fraction:.0%} in 8x8 patches forward", lambda: sparse(px=patches), 200)
        timeline(f"{name} sparse {fraction:.0%} forward, reused intersections", lambda: sparse(inter), 60)
        return
    print(f"| {name} {width}x{height}, {len(pixels)} / {len(pixel_sets[1])} random pixels, {len(patches)} in patches | ms |")
    print("|---|---|")
    for label, fn in rows:
        fn()
        print(f"| {label} | {time_ms(fn, 30):.3f} |")


def steady_state(name, width, height, steps, views=8, fraction=0.01):
    """Training steps back to back, as a training loop queues them (no synchronisation between
    steps; the orbit views in turn; each step's outputs and loss kept until the next step
    replaces them): ms per step of whole images and of ray batches (`fraction` of the image,
    new random pixels each step, rasterize_voxels_sparse), with the settings' camera matrices
    on the CPU and on the GPU (read by preprocess on the device since session 22; read back by
    the host before, which waited for the GPU's queue before a frame was queued)."""
    from svraster_cuda.renderer import rasterize_voxels_sparse
    scene, params = scene_and_params(name)
    voxels = (scene["octpath"], scene["vox_centers"], scene["vox_lengths"])
    gen = torch.Generator().manual_seed(0)
    batches = [random_pixels(int(fraction * width * height), width, height, gen) for _ in range(steps)]

    def ray_batch(s, pixels):
        clear_grads(params)
        out = rasterize_voxels_sparse(s, *voxels, lambda *a: params, pixels)
        loss = out[0].sum() + out[3].sum()
        loss.backward()
        return out, loss

    def whole_image(s):
        clear_grads(params)
        out = rasterize_voxels(s, *voxels, lambda *a: params)
        loss = out[0].sum() + out[3].sum()
        loss.backward()
        return out, loss

    print(f"| {name} {width}x{height}, {steps} steps back to back | whole image, ms per step | "
          f"{fraction:.0%} ray batch, ms per step |")
    print("|---|---|---|")
    for where in ("cpu", "cuda"):
        cams = orbit_settings(name, views, width, height, where)
        row = []
        for step in (lambda i: whole_image(cams[i % views]),
                     lambda i: ray_batch(cams[i % views], batches[i])):
            for i in range(views):
                kept = step(i)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(steps):
                kept = step(i)  # alive until the next step's replace them, as in a training loop
            end.record()
            del kept
            torch.cuda.synchronize()
            row.append(start.elapsed_time(end) / steps)
        print(f"| camera matrices on {where} | {row[0]:.2f} | {row[1]:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", default="O1.4M,O6M,R1.5M,R6M")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--only-view", type=int, help="of the --views orbit views, time this one only")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--profile", action="store_true", help="profile one view of each scene instead")
    ap.add_argument("--long", type=int, metavar="N", help="N consecutive renders of the first scene instead")
    ap.add_argument("--sizes", action="store_true", help="large images (4097x2161, 7680x4320, 16384^2) instead")
    ap.add_argument("--sparse", action="store_true", help="sparse pixels, reuse and top-K against dense instead")
    ap.add_argument("--steady", type=int, metavar="N", help="N training steps back to back per scene instead")
    ap.add_argument("--gpu-only", action="store_true", help="each view's GPU time of forward and render instead")
    args = ap.parse_args()
    if args.gpu_only and args.sparse:
        for n in args.scenes.split(","):
            sparse_queries(n, args.width, args.height, gpu=True)
        return
    if args.gpu_only:
        for n in args.scenes.split(","):
            gpu_only(n, args.width, args.height, args.views, args.repeat)
        return
    if args.steady:
        for n in args.scenes.split(","):
            steady_state(n, args.width, args.height, args.steady)
        return
    if args.sparse:
        for n in args.scenes.split(","):
            sparse_queries(n, args.width, args.height, profile=args.profile)
        return
    if args.long:
        long_run(args.scenes.split(",")[0], args.long, args.width, args.height)
        return
    if args.sizes:
        large_images(args.scenes.split(",")[0], [(1920, 1080), (4097, 2161), (7680, 4320), (16384, 16384)])
        return
    if args.profile:
        for n in args.scenes.split(","):
            profile_scene(n, args.width, args.height)
        return
    rows = [bench_scene(n, args.width, args.height, args.views, args.repeat, args.only_view)
            for n in args.scenes.split(",")]
    print(f"device: {torch.cuda.get_device_name()}, {args.width}x{args.height}, {args.views} views")
    print("| scene | voxels | entries | forward ms | fwd+bwd ms | render ms | peak GB fwd / fwd+bwd | "
          "frame GB fwd / fwd+bwd | resident GB | opaque px |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scene']} | {r['voxels'] / 1e6:.2f}M | {r['entries'] / 1e6:.2f}M | {r['forward_ms']:.2f} | "
              f"{r['forward_backward_ms']:.2f} | {r['render_ms']:.2f} | "
              f"{r['peak_fwd_gb']:.2f} / {r['peak_fwd_bwd_gb']:.2f} | "
              f"{r['frame_fwd_gb']:.2f} / {r['frame_fwd_bwd_gb']:.2f} | {r['resident_gb']:.2f} | {r['coverage']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
