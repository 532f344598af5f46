"""Where a render kernel's time goes, line by line: Nsight Compute's source counters (warp stall
samples and executed instructions per CUDA source line, from the -lineinfo build), for one
benchmark scene. Run on the device (gpu_check.sh NCU_SOURCE=1):

    python3 scripts/ncu_source.py --kernel render_backward --scene R6M [--top 40]
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


def source_page(report, view):
    """The rows of ncu's source page as dicts (each with its '_file'); the CSV lists one header
    per source file, after a 'File Name' row."""
    out = subprocess.run(["ncu", "--import", report, "--page", "source", "--csv", "--print-source", view],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"ncu --print-source {view} failed: {out.stderr.strip()[-500:]}")
        return []
    rows, header, file = [], None, ""
    for row in csv.reader(io.StringIO(out.stdout)):
        if not row:
            continue
        if row[0] in ("File Name", "Kernel Name"):
            file, header = (row[1] if len(row) > 1 else ""), None
        elif header is None:
            header = row if len(row) > 2 else None  # ncu's preamble lines are not a header
        else:
            rows.append(dict(zip(header, row), _file=Path(file).name))
    if not rows:
        print(f"== {view}: no rows; ncu printed:\n{out.stdout[:1500]}")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="render_backward")
    ap.add_argument("--scene", default="R6M")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_cuda.py"
    with tempfile.TemporaryDirectory() as tmp:
        report = str(Path(tmp) / "source")
        subprocess.run(["ncu", "--kernel-name", f"regex:{args.kernel}", "--launch-skip", "2", "--launch-count", "1",
                        "--section", "SourceCounters", "--section", "WarpStateStats", "--import-source", "yes",
                        "-o", report, sys.executable, str(bench), "--scenes", args.scene, "--views", "1",
                        "--repeat", "1"], check=True, capture_output=True)
        for view in ("cuda", "sass"):
            rows = source_page(report + ".ncu-rep", view)
            if not rows:
                continue
            columns = [c for c in rows[0].keys() if c != "_file"]
            stall = next((c for c in columns if c and c.startswith("Warp Stall Sampling (All")), None)
            executed = next((c for c in columns if c and c.startswith("Instructions Executed")), None)
            text = next((c for c in columns if c in ("Source", "Source Line")), columns[1])
            where = next((c for c in columns if c in ("#", "Line", "Address")), columns[0])
            if stall is None:
                print(f"== {view}: no stall column among {columns}; first rows: {rows[:3]}")
                continue
            total = sum(number(r[stall]) for r in rows) or 1.0
            total_exec = sum(number(r[executed]) for r in rows) if executed else 0.0
            print(f"== {args.kernel} {args.scene}, {view} view: {len(rows)} lines, {total:.0f} stall samples, "
                  f"{total_exec:.3g} warp instructions; top {args.top} by samples (share, samples, instructions)")
            for r in sorted(rows, key=lambda r: -number(r[stall]))[:args.top]:
                inst = number(r[executed]) if executed else 0.0
                print(f"{100 * number(r[stall]) / total:5.1f}% {number(r[stall]):8.0f} {inst:12.0f}  "
                      f"{r['_file'][:12]}:{r[where]:<6} {r[text].strip()[:100]}")
            other = [c for c in columns if c and (c.startswith("stall_") or "Stall" in c)]
            print(f"   (stall columns: {', '.join(other[:30])})")


if __name__ == "__main__":
    main()
