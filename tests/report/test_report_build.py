"""End to end: a tiny profile, a real short search, the report folder, its page and the CLI."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hgc_tune.errors import ReportError
from hgc_tune.policy import full_compute_policy, load_policy
from hgc_tune.profile import Profile, profile_pipeline
from hgc_tune.report import build_report
from hgc_tune.report._build import FIGURES, INDEX_FILE, SUMMARY_FILE
from hgc_tune.report._samples import generate_policy_images

STEPS = 4
SCRIPT_PROMPT = "a red square <script>alert(1)</script>"
EVIL_NAME = '<img src=x onerror="alert(1)">'
FIXTURE_PARETO = Path(__file__).parents[1] / "search" / "fixtures" / "tiny-seg.pareto.json"
PROFILE_FIGURES = {"similarity_unet", "similarity_controlnet", "attention_drift", "controlnet_residuals"}
VOID = {"meta", "img", "br", "hr", "link", "input", "source"}


@dataclass
class Shape:
    prompt: str
    colour: tuple[int, int, int]
    seed: int | None = None
    negative_prompt: str | None = None

    def condition_image(self) -> Image.Image:
        array = np.zeros((64, 64, 3), dtype=np.uint8)
        array[12:44, 20:52] = self.colour
        return Image.fromarray(array)


class PageParser(HTMLParser):
    """Collects tags, image sources and the title, and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.title = ""
        self._in_title = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        self.text.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert not parser.errors, parser.errors
    assert not parser.stack, f"unclosed elements {parser.stack}"
    return parser


@pytest.fixture(scope="module")
def profile_dir(tiny_pipe, tmp_path_factory) -> Path:
    samples = [Shape(SCRIPT_PROMPT, (220, 40, 40)), Shape('a blue disc & "friends"', (40, 40, 220), seed=7)]
    folder = tmp_path_factory.mktemp("runs") / "tiny-seg"
    profile = profile_pipeline(
        tiny_pipe, samples, num_steps=STEPS, progress=False, model_name="tiny", condition_type="seg"
    )
    profile.save(folder)
    return folder


@pytest.fixture(scope="module")
def searched(tiny_pipe, profile_dir, tmp_path_factory) -> dict[str, Path]:
    """A policy and its Pareto file from a real (short) search on the profile."""
    from hgc_tune.search import SearchConfig, search_policy, write_search_outputs

    # Full compute (no generation), two peers and one sampled trial, each scored on one sample: the least
    # that still gives peers, a front and a chosen trial.
    config = SearchConfig(
        budget=0.05,
        n_trials=4,
        startup_trials=4,
        peers=("deepcache-n3-b0", "cnwin-k2-drop"),
        calibration_samples=1,
        check_reference=False,
        confidence=0,  # one sample cannot bound a loss: the point estimate
    )
    result = search_policy(profile_dir, tiny_pipe, config, progress=False)
    assert result.ok, result.message
    written = write_search_outputs(result, tmp_path_factory.mktemp("policies") / "tiny-seg.json")
    return {"policy": written["policy"], "pareto": written["pareto"]}


def test_full_report_has_every_figure_and_a_well_formed_escaped_page(
    tiny_pipe, profile_dir, searched, tmp_path
):
    out = tmp_path / "report"
    result = build_report(
        profile_dir, out, policy=searched["policy"], pareto=searched["pareto"], samples=1, pipe=tiny_pipe
    )

    assert list(result.figures) == list(FIGURES), "every figure, in page order"
    assert result.files[-1] == out / INDEX_FILE, "index.html is written last"
    assert all(path.is_file() for path in result.files)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "no temporary files left"
    for name, path in result.figures.items():
        assert path.stat().st_size < 300_000, name
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert max(image.size) <= 3000, name

    page = parse_page(out / INDEX_FILE)
    assert "tiny" in page.title and "seg" in page.title
    assert page.tags.count("table") >= 3
    sources = [image["src"] for image in page.images]
    assert sorted(sources) == sorted(FIGURES[name].file for name in result.figures)
    assert all((out / src).is_file() for src in sources)
    assert all(not src.startswith(("http", "/", "data:")) for src in sources), "relative files only"
    assert "script" not in page.tags
    html_text = (out / INDEX_FILE).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<script" not in html_text
    assert SCRIPT_PROMPT in "".join(page.text), "the prompt reads as text"

    policy = load_policy(searched["policy"]).select("seg")
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary == json.loads(json.dumps(result.summary))
    for convention in ("paper", "complete"):
        # MACs computed by the report from the profile's table agree with the search's provenance
        assert summary["macs"][convention]["policy"] == pytest.approx(
            policy.provenance.macs[convention]["policy"]
        )
        assert summary["macs"][convention]["full"] == pytest.approx(
            policy.provenance.macs[convention]["full"]
        )
    assert (
        summary["policy"]["fidelity"]["calibration"]["loss"] == policy.provenance.fidelity["calibration_loss"]
    )
    assert summary["pareto"]["chosen"]["number"] == policy.provenance.trial
    assert summary["model"]["steps"] == STEPS
    assert summary["model"]["fingerprint"] == Profile.load(profile_dir).fingerprint
    assert summary["samples"]["prompts"][0] == SCRIPT_PROMPT
    assert len(summary["samples"]["psnr_db"]) == 1
    assert result.notes == []


def test_all_compute_policy_reproduces_the_profile_references(tiny_pipe, profile_dir, tmp_path):
    profile = Profile.load(profile_dir)
    from hgc_tune.policy import target_for_pipeline

    target = target_for_pipeline(tiny_pipe, num_steps=STEPS, condition_type="seg", model="tiny")
    policy = full_compute_policy(target, name=EVIL_NAME)
    images = generate_policy_images(tiny_pipe, profile, policy, [1])
    np.testing.assert_array_equal(images, profile.reference_images[1:])

    out = tmp_path / "report"
    result = build_report(profile, out, policy=policy, samples=1, pipe=tiny_pipe)
    # identical to the reference (sample 0, with the profile's base seed): PSNR at its cap
    assert result.summary["samples"]["psnr_db"] == [60.0]
    assert result.summary["macs"]["paper"]["reduction"] == 0.0
    page = parse_page(out / INDEX_FILE)
    assert all(image["src"] in {f.name for f in out.glob("*.png")} for image in page.images)
    assert all("onerror" not in image for image in page.images)
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in (out / INDEX_FILE).read_text(encoding="utf-8")
    assert "tradeoff" not in result.figures
    assert any("--pareto" in note for note in result.notes)


def test_profile_only_report_with_a_pareto_file_needs_no_pipeline(profile_dir, tmp_path):
    out = tmp_path / "report"
    result = build_report(profile_dir, out, pareto=FIXTURE_PARETO, samples=1)
    assert set(result.figures) == PROFILE_FIGURES | {"tradeoff", "samples"}
    assert any("--policy" in note for note in result.notes)
    assert result.summary["policy"] is None
    assert set(result.summary["macs"]["paper"]) == {"full"}
    assert result.summary["pareto"]["chosen"]["number"] == 4
    page = parse_page(out / INDEX_FILE)
    assert {image["src"] for image in page.images} == {path.name for path in result.figures.values()}

    empty = build_report(profile_dir, tmp_path / "bare", samples=0)
    assert set(empty.figures) == PROFILE_FIGURES
    assert any("--samples 0" in note for note in empty.notes)


def test_policy_that_does_not_fit_the_profile_is_refused(profile_dir, tiny_target, tmp_path):
    with pytest.raises(ReportError, match="made for 5 steps"):
        build_report(profile_dir, tmp_path / "r", policy=full_compute_policy(tiny_target(num_steps=5)))
    other = dataclasses.replace(tiny_target(num_steps=STEPS), fingerprint="ffffffffffffffff")
    with pytest.raises(ReportError, match="fingerprint"):
        build_report(profile_dir, tmp_path / "r", policy=full_compute_policy(other))
    with pytest.raises(ReportError, match="samples"):
        build_report(profile_dir, tmp_path / "r", samples=-1)
    assert not (tmp_path / "r").exists(), "nothing written for refused input"


def test_cli_report_json(profile_dir, searched, tmp_path, capsys):
    from hgc_tune.cli import main

    out = tmp_path / "cli-report"
    argv = ["report", "--profile", str(profile_dir), "--policy", str(searched["policy"])]
    argv += ["--pareto", str(searched["pareto"]), "--samples", "1", "--out", str(out), "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["index"] == str(out / INDEX_FILE)
    assert set(payload["figures"]) == set(FIGURES)
    assert all(Path(path).is_file() for path in payload["files"])
    assert payload["summary"]["profile"] == str(profile_dir)

    assert main(["report", "--profile", str(profile_dir), "--samples", "-1", "--out", str(out)]) == 2
    assert "`--samples` must be an integer in [0, " in capsys.readouterr().err
    # the report is there: writing it again takes --overwrite
    again = ["report", "--profile", str(profile_dir), "--samples", "0", "--out", str(out)]
    assert main(again) == 2
    assert "index.html' (a report) already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0


def test_every_written_file_is_0644_and_no_temporary_file_is_left(profile_dir, searched, tmp_path):
    result = build_report(
        profile_dir, tmp_path / "report", policy=searched["policy"], pareto=searched["pareto"], samples=1
    )
    written = [*result.files, searched["policy"], searched["pareto"]]
    assert {str(path): oct(Path(path).stat().st_mode & 0o777) for path in written} == {
        str(path): "0o644" for path in written
    }
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        Path(p).name for p in result.files
    )


def test_report_splits_the_savings_by_mechanism(tiny_pipe, profile_dir, tmp_path):
    from hgc_tune.models._blocks import cacheable_module_keys
    from hgc_tune.policy import GuidanceWindow, peer_policy, target_for_pipeline

    target = target_for_pipeline(tiny_pipe, num_steps=STEPS, condition_type="seg", model="tiny")
    cached = peer_policy("deepcache-n2-b0", target, cacheable_module_keys(tiny_pipe))
    policy = dataclasses.replace(cached, guidance=GuidanceWindow(cfg_until=2))
    result = build_report(profile_dir, tmp_path / "report", policy=policy, samples=0)
    for convention in ("paper", "complete"):
        split = result.summary["savings_by_mechanism"][convention]
        assert split["order"][0] == "guidance_window"
        assert sum(split["macs"].values()) == split["saved"], "each skipped MAC counted once"
        assert split["reduction"]["total"] == pytest.approx(result.summary["macs"][convention]["reduction"])
        assert split["macs"]["guidance_window"] > 0 and split["macs"]["unet_blocks"] > 0
        assert split["macs"]["cross_attention"] == split["macs"]["controlnet_window"] == 0
    text = (tmp_path / "report" / INDEX_FILE).read_text(encoding="utf-8")
    assert "Where the savings come from" in text and "guidance window" in text
    assert parse_page(tmp_path / "report" / INDEX_FILE).tags.count("table") >= 4

    bare = build_report(profile_dir, tmp_path / "bare", samples=0)
    assert bare.summary["savings_by_mechanism"] is None
    assert "Where the savings come from" not in (tmp_path / "bare" / INDEX_FILE).read_text(encoding="utf-8")
