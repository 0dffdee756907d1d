"""CLIP score from a local CLIP model: a tiny CLIPModel built from a config, saved here with its processor.

The model is trained for a few dozen steps (about a second) to tell three colours apart in images and in
prompts, so that "an image agrees more with its own prompt than with another's" is a claim the model can
support; the formula itself is checked against CLIP's own feature functions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hgc_tune.errors import FidelityError, ModelLoadError, ModelNotFoundError
from hgc_tune.fidelity import PROMPT_METRICS, ClipScorer, Metric, load_clip_scorer, paired_loss_bound
from hgc_tune.fidelity._clip import clip_score, clip_scores
from hgc_tune.fidelity._registry import CONDITION_TYPES, get_metric
from hgc_tune.models._tokenizer import build_offline_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TOKENS = 77


def _scenes(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """``n`` noisy one-colour 40×40 images and their prompts, the colours in turn."""
    rng = np.random.default_rng(seed)
    images, prompts = [], []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        noisy = np.array(COLOURS[name])[None, None] + rng.normal(0.0, 25.0, (40, 40, 3))
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
        prompts.append(f"a photo of a {name} background")
    return images, prompts


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = build_offline_tokenizer(model_max_length=TOKENS)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": TOKENS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config)
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    # contrastive training as CLIP's own (padding to the batch's longest prompt, as torchmetrics does)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        images, prompts = _scenes(12, seed=step)
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
        loss = model(**inputs, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    d = tmp_path_factory.mktemp("clip")
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def scorer(clip_dir: Path) -> ClipScorer:
    return load_clip_scorer(clip_dir)


def test_loads_a_local_clip_model_by_path(scorer: ClipScorer, clip_dir: Path) -> None:
    assert isinstance(scorer.model, transformers.CLIPModel)
    assert not scorer.model.training
    assert scorer.source == str(clip_dir)
    assert scorer.model.dtype == torch.float32
    assert load_clip_scorer(str(clip_dir)).source == str(clip_dir)


def test_one_score_per_image_prompt_pair(scorer: ClipScorer) -> None:
    images, prompts = _scenes(5, seed=100)
    scores = scorer(images, prompts)
    assert scores.shape == (5,)
    assert scores.dtype == np.float64
    assert np.all((scores >= 0.0) & (scores <= 100.0))
    assert scorer([], []).shape == (0,)


def test_score_is_100_times_clamped_cosine_of_clip_features(scorer: ClipScorer, clip_dir: Path) -> None:
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    processor = transformers.CLIPProcessor.from_pretrained(clip_dir)
    images, prompts = _scenes(6, seed=101)
    shifted = prompts[1:] + prompts[:1]  # mismatched pairs: some cosines are negative, so the clamp acts
    inputs = processor(text=shifted, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_features = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
    if not isinstance(image_features, torch.Tensor):  # transformers >= 5 returns a model output
        image_features, text_features = image_features.pooler_output, text_features.pooler_output
    cos = torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)
    expected = (100.0 * cos.clamp(min=0.0)).double().numpy()
    assert (expected == 0.0).any() and (expected > 0.0).any()
    np.testing.assert_allclose(scorer(images, shifted), expected, rtol=1e-5, atol=1e-4)


def test_an_image_agrees_more_with_its_own_prompt(scorer: ClipScorer) -> None:
    images, prompts = _scenes(6, seed=102)
    own = scorer(images, prompts)
    for shift in (1, 2):
        other = scorer(images, prompts[shift:] + prompts[:shift])
        assert np.all(own > other + 10.0), (own, other)


def test_scores_are_deterministic_and_independent_of_batching(scorer: ClipScorer, clip_dir: Path) -> None:
    images, prompts = _scenes(7, seed=103)
    first = scorer(images, prompts)
    np.testing.assert_array_equal(scorer(images, prompts), first)
    np.testing.assert_array_equal(load_clip_scorer(clip_dir)(images, prompts), first)
    one_by_one = load_clip_scorer(clip_dir, batch_size=1)(images, prompts)
    np.testing.assert_allclose(one_by_one, first, rtol=1e-5, atol=1e-5)
    in_threes = load_clip_scorer(clip_dir, batch_size=3)(images, prompts)
    np.testing.assert_allclose(in_threes, first, rtol=1e-5, atol=1e-5)


def test_images_as_uint8_float_or_pil_score_the_same(scorer: ClipScorer) -> None:
    from PIL import Image

    images, prompts = _scenes(3, seed=104)
    base = scorer(images, prompts)
    np.testing.assert_array_equal(scorer([im / 255.0 for im in images], prompts), base)
    np.testing.assert_array_equal(scorer([Image.fromarray(im) for im in images], prompts), base)


def test_a_prompt_is_scored_by_its_first_77_tokens(scorer: ClipScorer) -> None:
    images, _ = _scenes(1, seed=105)
    long = "a photo of a red background " + "with a small red circle " * 20
    assert len(scorer.processor.tokenizer(long)["input_ids"]) > TOKENS
    base = scorer(images, [long])
    np.testing.assert_array_equal(scorer(images, [long + " and a blue square on green sand"]), base)


def test_bf16(clip_dir: Path) -> None:
    images, prompts = _scenes(3, seed=106)
    low = load_clip_scorer(clip_dir, dtype="bf16")
    assert low.model.dtype == torch.bfloat16
    np.testing.assert_allclose(low(images, prompts), load_clip_scorer(clip_dir)(images, prompts), atol=3.0)


# ----------------------------------------------------------------------------------------------- registry


def test_registry_entry_is_a_higher_is_better_prompt_metric() -> None:
    m = PROMPT_METRICS["clip"]
    assert (m.name, m.kind, m.higher_is_better, m.loss_mode, m.ideal) == (
        "clip",
        "prompt",
        True,
        "relative",
        None,
    )
    assert m.fn is clip_score
    assert all(m.fits(c) for c in (*CONDITION_TYPES, "pose", None))
    assert get_metric(m) is m
    assert m.loss(30.0, 29.4) == pytest.approx(0.02)


def test_registry_fn_is_the_score_of_the_embeddings(scorer: ClipScorer) -> None:
    images, prompts = _scenes(2, seed=107)
    image_embeds, text_embeds = scorer.embed_images(images), scorer.embed_prompts(prompts)
    by_fn = [PROMPT_METRICS["clip"].fn(a, b) for a, b in zip(image_embeds, text_embeds, strict=True)]
    np.testing.assert_allclose(by_fn, scorer(images, prompts), rtol=1e-12)


def test_paired_bound_of_the_clip_loss(scorer: ClipScorer) -> None:
    """The same samples clean (full compute) and washed towards gray (a policy that loses colour)."""
    images, prompts = _scenes(12, seed=108)
    washed = [(0.3 * im + 0.7 * 128).astype(np.uint8) for im in images]
    full, policy = scorer(images, prompts), scorer(washed, prompts)
    b = paired_loss_bound(full, policy, PROMPT_METRICS["clip"], confidence=0.95)
    assert b.samples == 12
    assert b.loss == pytest.approx((full.mean() - policy.mean()) / full.mean())
    assert 0.0 < b.lower < b.loss < b.upper


def test_prompt_metric_takes_no_condition_types() -> None:
    with pytest.raises(FidelityError, match=r"prompt metric 'x'.*condition_types=\['seg'\]"):
        Metric("x", clip_score, higher_is_better=True, kind="prompt", condition_types=frozenset({"seg"}))


# ---------------------------------------------------------------------------------------------- formula


def test_clip_scores_formula() -> None:
    image = [[3.0, 0.0], [0.6, 0.8], [1.0, 0.0], [0.0, 0.0]]
    text = [[1.0, 0.0], [0.0, 5.0], [-1.0, 0.1], [1.0, 0.0]]
    # scale-free cosine; a negative cosine is clamped to 0; a zero embedding scores 0 rather than NaN
    np.testing.assert_allclose(clip_scores(image, text), [100.0, 80.0, 0.0, 0.0])
    assert clip_score([0.6, 0.8], [0.8, 0.6]) == pytest.approx(96.0)


def test_clip_scores_rejects_mismatched_or_non_finite_embeddings() -> None:
    with pytest.raises(FidelityError, match=r"\(2, 2\) and \(1, 2\)"):
        clip_scores(np.ones((2, 2)), np.ones((1, 2)))
    with pytest.raises(FidelityError, match="finite"):
        clip_scores([[np.nan, 1.0]], [[1.0, 1.0]])


# ----------------------------------------------------------------------------------------------- errors


def test_count_mismatch_names_both_counts(scorer: ClipScorer) -> None:
    images, prompts = _scenes(3, seed=109)
    with pytest.raises(FidelityError, match=r"len\(images\)=3 and len\(prompts\)=2"):
        scorer(images, prompts[:2])


def test_a_prompt_must_be_a_string(scorer: ClipScorer) -> None:
    images, prompts = _scenes(2, seed=110)
    with pytest.raises(FidelityError, match=r"prompts\[1\]=None"):
        scorer(images, [prompts[0], None])  # type: ignore[list-item]


def test_an_image_must_be_an_image(scorer: ClipScorer) -> None:
    with pytest.raises(FidelityError, match=r"images\[0\]"):
        scorer([np.zeros(5)], ["a red background"])


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-clip-here"
    with pytest.raises(ModelNotFoundError, match=f"path='{missing}' does not exist"):
        load_clip_scorer(missing)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_clip_scorer(str(missing))


def test_hub_id_that_is_not_available_offline_asks_for_a_local_path() -> None:
    with pytest.raises(ModelNotFoundError, match=r"'hgc-tune-tests/no-such-clip'.*pass the local path"):
        load_clip_scorer("hgc-tune-tests/no-such-clip", local_files_only=True)


def test_a_file_is_not_a_model_directory(clip_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a file"):
        load_clip_scorer(clip_dir / "config.json")


def test_a_directory_without_config_names_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no config\.json \(found: weights\.bin\)"):
        load_clip_scorer(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="empty"):
        load_clip_scorer(empty)


def test_another_model_type_is_not_clip(tmp_path: Path) -> None:
    transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(
        tmp_path
    )
    with pytest.raises(
        ModelLoadError, match=rf"path='{tmp_path}' holds a model_type='vit' model, not a CLIP"
    ):
        load_clip_scorer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        load_clip_scorer(tmp_path)


def test_clip_weights_without_a_processor(clip_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_dir / name, tmp_path / name)
    with pytest.raises(ModelLoadError, match=r"CLIP processor .*found: config\.json, model\.safetensors"):
        load_clip_scorer(tmp_path)


def test_a_clip_processor_without_weights(clip_dir: Path, tmp_path: Path) -> None:
    for f in clip_dir.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(ModelLoadError, match="cannot load the CLIP weights"):
        load_clip_scorer(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"dtype": "fp64"}, "dtype='fp64'"), ({"batch_size": 0}, "batch_size=0")]
)
def test_bad_dtype_or_batch_size(clip_dir: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(FidelityError, match=match):
        load_clip_scorer(clip_dir, **kwargs)


def test_scorer_needs_a_clip_model_and_processor(scorer: ClipScorer) -> None:
    with pytest.raises(FidelityError, match="get_image_features, get_text_features"):
        ClipScorer(torch.nn.Linear(2, 2), scorer.processor)  # type: ignore[arg-type]
    with pytest.raises(FidelityError, match="tokenizer"):
        ClipScorer(scorer.model, scorer.processor.image_processor)  # type: ignore[arg-type]
