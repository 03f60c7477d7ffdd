"""Rebuild the README images in docs/ from a finished demo run (plots, report and scatter screenshots).

    gradiend demo --steps 30 --eval-steps 10 --experiment-dir runs/demo30
    python scripts/build_docs_images.py runs/demo30 --out docs

Needs matplotlib, plotly (scatter) and a Chromium binary (screenshots); images are palette PNGs
to keep the repository small.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from gradiend import plots
from gradiend.report import write_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--hide-scrollbars"]


def shrink(path: Path, width: int | None = None) -> None:
    """Palette-quantise (and optionally downscale) a PNG in place."""
    image = Image.open(path).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def screenshot(browser: str, url: str, out: Path, size: str, wait_ms: int = 0) -> None:
    extra = [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
    subprocess.run([browser, *CHROMIUM_FLAGS, *extra, f"--window-size={size}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment_dir")
    parser.add_argument("--out", default="docs")
    ns = parser.parse_args()
    exp, out = Path(ns.experiment_dir), Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    images = [plots.plot_training_convergence(exp, out / "training_convergence.png", dpi=80),
              plots.plot_encoder_distributions(exp, output=out / "encoder_analysis_split_test.png", dpi=80),
              plots.plot_probability_shifts(exp, "3SG", output=out / "decoder_probability_shifts_3SG.png", dpi=80)]
    for image in images:
        shrink(Path(image))
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if browser is None:
        raise SystemExit("No Chromium found: the report and scatter screenshots need it")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(write_report(exp, Path(tmp) / "report.html"))
        screenshot(browser, report.resolve().as_uri(), out / "report.png", "1200,1500")
        scatter = Path(plots.plot_encoder_scatter(exp, output=Path(tmp) / "scatter.html", max_points=600,
                                                  height=420))
        screenshot(browser, scatter.resolve().as_uri(), out / "encoder_scatter.png", "1000,440", wait_ms=5000)
    shrink(out / "report.png", width=900)
    shrink(out / "encoder_scatter.png", width=900)
    for path in sorted(out.glob("*.png")):
        print(f"{path} {path.stat().st_size / 1000:.0f} kB")


if __name__ == "__main__":
    main()
