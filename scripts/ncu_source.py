"""Where a kernel's time goes, instruction by instruction: Nsight Compute's source
counters (warp stall samples and executed instructions per SASS line), for one benchmark scene.
(ncu's CUDA-line view of the same report printed no metric columns for this build.)
Run on the device (gpu_check.sh NCU_SOURCE=1):

    python3 scripts/ncu_source.py --kernel render_backward --scene R6M [--top 40]
    python3 scripts/ncu_source.py --kernel preprocess --scene R6M --sparse   # a 1%-sparse frame's
"""
import argparse
import csv
import io
import subprocess
import sys
import tempfile
from pathlib import Path


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def sass_page(report):
    """The rows of ncu's SASS source page as dicts; the CSV starts with a 'Kernel Name' row."""
    out = subprocess.run(["ncu", "--import", report, "--page", "source", "--csv", "--print-source", "sass"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"ncu --print-source sass failed: {out.stderr.strip()[-500:]}")
        return []
    rows, header = [], None
    for row in csv.reader(io.StringIO(out.stdout)):
        if not row or row[0] == "Kernel Name":
            continue
        if header is None:
            header = row
        else:
            rows.append(dict(zip(header, row)))
    if not rows:
        print(f"no rows; ncu printed:\n{out.stdout[:1500]}")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="render_backward")
    ap.add_argument("--scene", default="R6M")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--view", type=int, default=0, help="which of bench_cuda.py's 8 orbit views")
    ap.add_argument("--sparse", action="store_true",
                    help="the kernel in a fresh 1%%-sparse frame (bench_cuda.py --sparse --profile; view 0)")
    args = ap.parse_args()
    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_cuda.py"
    # The third launch: the dense frames' warm-up (or, sparse, the dense intersections built
    # first) before it.
    frames = ["--sparse", "--profile"] if args.sparse else ["--views", "8", "--only-view", str(args.view), "--repeat", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        report = str(Path(tmp) / "source")
        subprocess.run(["ncu", "--kernel-name", f"regex:{args.kernel}", "--launch-skip", "2", "--launch-count", "1",
                        "--section", "SourceCounters", "--section", "WarpStateStats", "--section", "SpeedOfLight",
                        "--section", "Occupancy", "--section", "LaunchStats", "-o", report,
                        sys.executable, str(bench), "--scenes", args.scene, *frames],
                       check=True, capture_output=True)
        details = subprocess.run(["ncu", "--import", report + ".ncu-rep", "--page", "details"],
                                 capture_output=True, text=True).stdout
        keys = ("Duration", "Registers Per Thread", "Achieved Occupancy", "Theoretical Occupancy", "Block Limit",
                "Compute (SM) Throughput", "Memory Throughput", "Grid Size", "Block Size")
        for line in details.splitlines():
            if any(k in line for k in keys):
                print(line.strip())
        rows = sass_page(report + ".ncu-rep")
        if not rows:
            return
        columns = list(rows[0].keys())
        stall = next((c for c in columns if c.startswith("Warp Stall Sampling (All")), None)
        executed = next((c for c in columns if c.startswith("Instructions Executed")), None)
        if stall is None or executed is None:
            print(f"no stall or instruction column among {columns}")
            return
        text = next((c for c in columns if c == "Source"), columns[1])
        total = sum(number(r[stall]) for r in rows) or 1.0
        print(f"== {args.kernel} {args.scene} view {args.view}: {len(rows)} SASS lines, {total:.0f} stall samples, "
              f"{sum(number(r[executed]) for r in rows):.3g} warp instructions; top {args.top} by samples "
              f"(share, samples, executions)")
        for r in sorted(rows, key=lambda r: -number(r[stall]))[:args.top]:
            print(f"{100 * number(r[stall]) / total:5.1f}% {number(r[stall]):8.0f} {number(r[executed]):12.0f}  "
                  f"{r[text].strip()[:100]}")
        # Lines executed equally often mostly form one basic block (or blocks run together):
        # their samples and instructions summed, and the block's first and last line.
        blocks = {}
        for i, r in enumerate(rows):
            b = blocks.setdefault(number(r[executed]), [0.0, 0, i, i])
            b[0] += number(r[stall])
            b[1] += 1
            b[3] = i
        print("== by execution count (share of samples, lines, executions x lines, first .. last line)")
        for count, (samples, lines, first, last) in sorted(blocks.items(), key=lambda kv: -kv[1][0])[:args.top]:
            print(f"{100 * samples / total:5.1f}% {lines:4d} x {count:10.0f}  {rows[first][text].strip()[:45]} .. "
                  f"{rows[last][text].strip()[:45]}")


if __name__ == "__main__":
    main()
