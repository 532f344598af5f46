"""The examples: fit_voxels.py recovers the demo scene from its images through our gradients;
lift_labels.py lifts 2D labels onto voxels with top-K contributors."""
import re
import subprocess
import sys

from helpers import REPO


def test_tiny_fit_converges_and_renders(tmp_path):
    out = tmp_path / "fit"
    r = subprocess.run([sys.executable, "examples/fit_voxels.py", "--res", "32", "--views", "6", "--steps", "150",
                        "--device", "cpu", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"PSNR (-?[\d.]+) -> (-?[\d.]+) dB", last)
    assert m, last
    start, end = float(m.group(1)), float(m.group(2))
    assert end - start >= 8 and end > 24, last
    r = subprocess.run([sys.executable, "render.py", str(out), "--rgb_only", "--device", "cpu"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(list((out / "test" / "ours_150" / "renders").glob("*.png"))) == 2
    assert len(list((out / "train" / "ours_150" / "renders").glob("*.png"))) == 4


def test_lift_labels_example():
    """examples/lift_labels.py: top-K label lifting agrees with a held-out view's label map."""
    r = subprocess.run([sys.executable, "examples/lift_labels.py", "--views", "6", "--size", "64", "48"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = re.search(r"(\d+) of (\d+) voxels labelled \((\d+) as 1\).* on ([\d.]+)% of covered pixels", r.stdout)
    assert m, r.stdout
    labelled, total, ones, agree = int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4))
    assert 0 < ones < labelled < total and agree >= 70, r.stdout
