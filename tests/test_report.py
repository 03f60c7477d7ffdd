"""The self-contained HTML report: content, embedded images, no network, errors, headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import tiny_experiment

from gradiend.report import build_report, write_report
from gradiend.results import MissingResultError, OutputNotWritableError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.title, self.ids, self.images, self.refs, self.scripts, self._in_title = "", [], [], [], 0, False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        self._in_title = tag == "title"
        if attr.get("id"):
            self.ids.append(attr["id"])
        if tag == "img":
            self.images.append(attr["src"])
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        self.scripts += tag == "script"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False


def _parse(text: str) -> _Collect:
    parser = _Collect()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def experiment(tiny_mlm_dir, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("report_exp")
    tiny_experiment.build(tiny_mlm_dir, exp)
    return exp


def test_report_is_self_contained(experiment) -> None:
    pytest.importorskip("matplotlib")
    path = Path(write_report(experiment))
    assert path == experiment / "report.html"
    text = path.read_text(encoding="utf-8")
    doc = _parse(text)
    assert doc.title == "GRADIEND report: 3SG vs 3PL on tiny_bert0"
    assert {"configuration", "data", "training", "encoder", "decoder", "rewrite", "timings", "versions"} <= set(doc.ids)
    # three plots (convergence, encoder, probability shifts), each a valid embedded PNG
    assert len(doc.images) == 3
    for src in doc.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    # nothing is fetched: no scripts, no external references, no remote CSS
    assert doc.scripts == 0
    assert all(ref.startswith(("#", "data:")) for ref in doc.refs), doc.refs
    assert not re.search(r"url\(|@import|https?://", text.split("<body>", 1)[0])
    # the content a reader needs
    for needle in ("TrainingArguments that differ from the defaults", "encoder.layer.1.*",
                   "best validation correlation", "correlation (target classes)", "ff=-1,lr=0.01",
                   "Selected candidates", "seconds per step",
                   "transformers", "test split: 3SG", "gradiend rewrite"):
        assert needle in text, needle
    assert len(text) < 1_000_000


def test_report_without_evaluations_says_what_to_run(tiny_mlm_dir, tmp_path) -> None:
    exp = tmp_path / "trained"
    tiny_experiment.build(tiny_mlm_dir, exp, encoder=False, decoder=False)
    text = build_report(exp, plots=False, title="Only trained")
    assert _parse(text).title == "Only trained"
    assert f"gradiend evaluate {exp} --encoder" in text and f"gradiend evaluate {exp} --decoder" in text
    assert "<img" not in text


def test_report_errors(experiment, tmp_path) -> None:
    with pytest.raises(MissingResultError, match="gradiend train"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingResultError, match=r"training results .*gradiend train"):
        write_report(tmp_path / "empty")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputNotWritableError, match="--out"):
        write_report(experiment, blocker / "report.html", plots=False)


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_renders_in_headless_chromium(experiment, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    from matplotlib.image import imread

    report = Path(write_report(experiment, tmp_path / "report.html", title="Chromium check report"))
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    run = subprocess.run([browser, *CHROMIUM_FLAGS, "--hide-scrollbars", "--window-size=1200,1600",
                          f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 0.05  # not blank: text, tables and plots
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.005  # enough dark (text) pixels
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>Chromium check report</title>" in dom.stdout
    assert '<h1>Chromium check report</h1>' in dom.stdout


def test_report_shows_the_seed_runs(experiment, tmp_path) -> None:
    import json
    import shutil

    exp = tmp_path / "seeded"
    shutil.copytree(experiment, exp)
    runs = [{"seed": s, "converged": s == 1, "training_score": 0.4 + s / 10, "eval_correlation": None,
             "selection_score": 0.4 + s / 10, "best_checkpoint_global_step": 6, "seconds": 1.5, "reason": None}
            for s in (0, 1)]
    (exp / "seeds").mkdir()
    (exp / "seeds" / "seed_report.json").write_text(json.dumps(
        {"max_seeds": 2, "seeds_tried": [0, 1], "convergent_count": 1, "best_seed": 1, "runs": runs}))
    text = build_report(exp, plots=False)
    assert "seeds" in _parse(text).ids
    assert re.search(r'<tr class="selected"><td class="num">1</td><td>True</td>', text)


def test_report_hides_results_of_an_earlier_model(tiny_mlm_dir, tmp_path) -> None:
    import warnings

    from tiny_experiment import build

    trainer = build(tiny_mlm_dir, tmp_path / "exp")
    html = build_report(tmp_path / "exp", plots=False)
    assert "earlier model" not in html and "Selected candidates" in html
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.train(learning_rate=0.5)  # retrained in place: the saved evaluations are now stale
    html = build_report(tmp_path / "exp", plots=False)
    assert "These encodings belong to an earlier model" in html and "Selected candidates" not in html
    assert "The decoder evaluation belongs to an earlier model" in html
    from gradiend.results import MissingResultError, load_decoder, load_encoder_metrics, load_encodings

    for load in (load_decoder, load_encoder_metrics, load_encodings):
        with pytest.raises(MissingResultError, match=r"earlier model.*gradiend evaluate"):
            load(tmp_path / "exp")
    trainer.evaluate_encoder()
    trainer.evaluate_decoder(target_class="3SG")
    assert "earlier model" not in build_report(tmp_path / "exp", plots=False)


def test_report_is_written_beside_a_live_run_and_survives_its_temp_clean_up(experiment, monkeypatch) -> None:
    """A report needs no lock (it may be written while a run trains); when a run starting at that instant
    removes the report's unfinished temp file, the report is written again instead of failing."""
    import threading

    from gradiend import report as report_module
    from gradiend.experiment import ExperimentDir

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ExperimentDir(experiment).lock():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    real, calls = report_module.atomic_write_bytes, []

    def vanishing_once(path, data):
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file or directory", str(path) + ".tmp")
        return real(path, data)

    monkeypatch.setattr(report_module, "atomic_write_bytes", vanishing_once)
    try:
        assert held.wait(30)
        path = Path(write_report(experiment, plots=False))
    finally:
        release.set()
        holder.join()
    assert path == Path(experiment) / "report.html" and len(calls) == 2
    assert "<html" in path.read_text(encoding="utf-8")
