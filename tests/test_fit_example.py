"""examples/fit_voxels.py: recovering the demo scene from its images through our gradients."""
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
