"""The evaluate and summarize stages on small fake recon files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cortexflow._io import save_npz
from cortexflow.cli import main as cli_main
from cortexflow.errors import CortexflowInputError
from cortexflow.evaluation.evaluate import (COMPARISON_COLUMNS, SUMMARY_COLUMNS, comparison_pairs, evaluate_stage,
                                            load_recon)
from cortexflow.evaluation.summary import summarize_stage

N = 20
PARAMS = {"n_boot": 300, "chance_permutations": 8, "figure_items": 4}
CONTRACT_METRICS = {
    "image": {"pixcorr", "ssim", "two_way_id_pixel", "two_way_id_feature", "two_way_id_hog"},
    "audio": {"mel_corr", "two_way_id"},
    "text": {"cer", "two_way_id"},
}


def smooth_images(rng, n):
    x = rng.random((n, 3, 16, 16))
    for axis in (2, 3):
        x = (x + np.roll(x, 1, axis=axis) + np.roll(x, -1, axis=axis)) / 3
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def recon_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    ids = np.array([f"stim{i:02d}" for i in range(N)])
    truth = smooth_images(rng, N)
    baselines = dict(ridge=np.clip(0.3 * truth + 0.35 + rng.normal(0, 0.1, truth.shape), 0, 1),
                     nn=np.clip(truth[::-1] + rng.normal(0, 0.1, truth.shape), 0, 1), ceiling=truth)
    # two training seeds of the decoder: the second one noisier; the baselines are the same in both files
    for k, noise in enumerate((0.25, 0.35)):
        save_npz(root / "recon" / f"sub-01_image_seed{k}.npz", ids=ids, truth=truth.astype(np.float32),
                 dit=np.clip(truth + rng.normal(0, noise, truth.shape), 0, 1),
                 dit_mean8=np.clip(truth + rng.normal(0, noise / 2.5, truth.shape), 0, 1), **baselines)
    mel = rng.normal(size=(N, 16, 24))
    save_npz(root / "recon" / "sub-01_audio_seed0.npz", ids=ids, truth=mel, dit=mel + rng.normal(size=mel.shape),
             ridge=0.5 * mel + rng.normal(size=mel.shape), ceiling=mel + 0.1 * rng.normal(size=mel.shape))
    words = "the cat sat on a mat while dogs ran across green fields under blue sky".split()
    sentences = [" ".join(rng.choice(words, 6)) + f" {i}" for i in range(N)]
    decoded = [s[:-4] + "zz" if i % 2 else s for i, s in enumerate(sentences)]
    retrieved = [sentences[(i + 1) % N] for i in range(N)]
    save_npz(root / "recon" / "sub-01_text_seed0.npz", ids=ids, truth=np.asarray(sentences, dtype=str),
             decoder=np.asarray(decoded, dtype=str), retrieval=np.asarray(retrieved, dtype=str),
             ngram_lm=np.asarray(["the cat sat on the mat"] * N, dtype=str))
    pd.DataFrame({"stimulus_id": ids, "category": ["face" if i < 8 else "scene" for i in range(N)]}).to_csv(
        root / "stimuli.tsv", sep="\t", index=False)
    # a make_dataset folder's voxels and test tables, for the ncsnr section
    folder = root / "dataset" / "sub-01" / "image"
    folder.mkdir(parents=True)
    pd.DataFrame({"region": ["V1"] * 4 + ["LOC"] * 4, "ncsnr": [0.2, 0.4, 0.6, 0.8, 0.1, 0.1, 0.3, 0.3]}).to_parquet(
        folder / "voxels.parquet")
    pd.DataFrame({"stimulus_id": ids, "n_repeats": 3}).to_parquet(folder / "test.parquet")
    return root


SEEDS = {"image": 2, "audio": 1, "text": 1}


def recons(root, modality):
    return [str(root / "recon" / f"sub-01_{modality}_seed{k}.npz") for k in range(SEEDS[modality])]


def metric_paths(root, modality):
    stem = root / "metrics" / f"sub-01_{modality}"
    return {"out_summary": f"{stem}_summary.parquet", "out_items": f"{stem}_items.parquet",
            "out_comparisons": f"{stem}_comparisons.parquet"}


@pytest.fixture(scope="module")
def evaluated(recon_files):
    for modality in ("image", "audio", "text"):
        evaluate_stage(recon=recons(recon_files, modality), subject="01", modality=modality,
                       params=PARAMS, seed=0, **metric_paths(recon_files, modality))
    return recon_files


def read(root, modality, kind):
    return pd.read_parquet(metric_paths(root, modality)[f"out_{kind}"])


def value(summary, method, metric):
    return summary[(summary.method == method) & (summary.metric == metric)].iloc[0]


def test_summary_has_the_promised_columns_methods_and_metrics(evaluated):
    for modality, methods in [("image", {"dit", "dit_mean8", "ridge", "nn", "ceiling", "chance"}),
                              ("audio", {"dit", "ridge", "ceiling", "chance"}),
                              ("text", {"decoder", "retrieval", "ngram_lm", "chance"})]:
        summary = read(evaluated, modality, "summary")
        assert list(summary.columns) == SUMMARY_COLUMNS
        assert set(summary.method) == methods
        assert CONTRACT_METRICS[modality] <= set(summary.metric)
        assert (summary.subject == "01").all() and (summary.modality == modality).all() and (summary.n == N).all()
        assert (summary.ci_low <= summary.value + 1e-12).all() and (summary.value <= summary.ci_high + 1e-12).all()
        items = read(evaluated, modality, "items")
        assert list(items.columns) == ["method", "metric", "item", "score", "seed"]
        decoder_rows = items["method"].isin(["dit", "dit_mean8", "decoder"])
        assert len(items) == (len(summary) + (SEEDS[modality] - 1) * items[decoder_rows].metric.nunique()
                              * items[decoder_rows].method.nunique()) * N
        assert set(items.loc[decoder_rows, "seed"]) == set(range(SEEDS[modality]))
        assert items.loc[~decoder_rows, "seed"].isna().all()


def test_decoder_summary_pools_training_seeds(evaluated):
    items = read(evaluated, "image", "items")
    summary = read(evaluated, "image", "summary")
    dit = items[(items.method == "dit") & (items.metric == "ssim")]
    per_seed = dit.groupby("seed")["score"].mean()
    assert len(per_seed) == 2 and per_seed[0] > per_seed[1]  # the noisier seed scores lower
    assert value(summary, "dit", "ssim").value == pytest.approx(per_seed.mean())


def test_perfect_reconstruction_scores_one_and_chance_is_half(evaluated):
    image = read(evaluated, "image", "summary")
    for metric in ("pixcorr", "ssim", "two_way_id_pixel", "two_way_id_feature", "two_way_id_hog"):
        assert value(image, "ceiling", metric).value == pytest.approx(1.0)
    for metric in ("two_way_id_pixel", "two_way_id_feature", "two_way_id_hog"):
        assert value(image, "chance", metric).value == pytest.approx(0.5, abs=0.08)
    assert abs(value(image, "chance", "pixcorr").value) < 0.05
    assert value(image, "dit_mean8", "pixcorr").value > value(image, "dit", "pixcorr").value
    audio = read(evaluated, "audio", "summary")
    assert value(audio, "chance", "two_way_id").value == pytest.approx(0.5, abs=0.08)
    assert value(audio, "ceiling", "lsd").value < value(audio, "dit", "lsd").value < value(audio, "chance", "lsd").value
    text = read(evaluated, "text", "summary")
    assert value(text, "decoder", "two_way_id").value == pytest.approx(1.0)
    assert value(text, "chance", "two_way_id").value == pytest.approx(0.5, abs=0.08)
    assert value(text, "decoder", "cer").value < value(text, "retrieval", "cer").value
    # retrieval returns the neighbour's sentence: as bad as chance on CER
    assert value(text, "retrieval", "cer").value == pytest.approx(value(text, "chance", "cer").value, abs=0.1)
    # the LM prior writes one sentence for every item: two-way identification cannot beat a coin
    assert value(text, "ngram_lm", "two_way_id").value == pytest.approx(0.5)


def test_comparisons_are_paired_differences_of_the_item_scores(evaluated):
    comparisons = read(evaluated, "image", "comparisons")
    assert list(comparisons.columns) == COMPARISON_COLUMNS
    pairs = set(zip(comparisons.method_a, comparisons.method_b))
    assert {("dit", "ridge"), ("dit", "nn"), ("dit_mean8", "ridge"), ("dit_mean8", "nn"), ("dit_mean8", "dit"),
            ("dit", "chance"), ("nn", "chance"), ("ridge", "chance")} <= pairs
    summary = read(evaluated, "image", "summary")
    row = comparisons[(comparisons.method_a == "dit_mean8") & (comparisons.method_b == "dit")
                      & (comparisons.metric == "ssim")].iloc[0]
    expected = value(summary, "dit_mean8", "ssim").value - value(summary, "dit", "ssim").value
    assert row["diff"] == pytest.approx(expected)
    assert row.ci_low > 0 and row.n == N
    text = read(evaluated, "text", "comparisons")
    assert {("decoder", "retrieval"), ("decoder", "ngram_lm")} <= set(zip(text.method_a, text.method_b))
    # against a baseline (one "seed"), the difference is the seed-pooled decoder mean minus the baseline's
    row = comparisons[(comparisons.method_a == "dit") & (comparisons.method_b == "nn")
                      & (comparisons.metric == "pixcorr")].iloc[0]
    assert row["diff"] == pytest.approx(value(summary, "dit", "pixcorr").value - value(summary, "nn", "pixcorr").value)


def test_score_tables_are_pandas_pivot_tables_in_numpy():
    """_scores_by builds each (method, metric)'s seeds x items table without pandas' pivot (it took most
    of summarize's time): the same table as pivot_table(aggfunc="first") with sorted items, including
    NaN scores (missing), a seed or item with none left out, repeated pairs (first counts) and no seed."""
    from cortexflow.evaluation.evaluate import _scores_by, _with_seed

    rng = np.random.default_rng(3)
    n = 400
    items = pd.DataFrame({"method": rng.choice(["dit", "ridge", "nn"], n), "metric": rng.choice(["ssim", "cer"], n),
                          "item": rng.choice([f"img{k:02d}" for k in range(17)] + ["b", "a10", "a9"], n),
                          "score": rng.normal(size=n),
                          "seed": pd.array(rng.choice([0, 1, 2, None], n), dtype="Int64")})
    items.loc[rng.random(n) < 0.15, "score"] = np.nan
    items.loc[(items["method"] == "nn") & (items["item"] == "b"), "score"] = np.nan  # an item with no score
    got = _scores_by(items)
    expected = {key: group.pivot_table(index="seed_key", columns="item", values="score", aggfunc="first")
                .sort_index(axis=1).to_numpy() for key, group in _with_seed(items).groupby(["method", "metric"])}
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=str(key))
    # repeated (seed, item) pairs: the first score counts, as pandas' "first"
    repeated = pd.DataFrame({"method": "dit", "metric": "ssim", "item": ["x", "x", "y"], "score": [1.0, 2.0, 3.0]})
    np.testing.assert_array_equal(_scores_by(repeated)[("dit", "ssim")], [[1.0, 3.0]])


def test_image_mosaic_puts_each_image_in_its_tile_and_white_between():
    from cortexflow.evaluation.figures import image_mosaic

    rng = np.random.default_rng(0)
    gray = rng.random((3, 1, 4, 5))
    rgb = rng.random((3, 3, 4, 5))
    canvas = image_mosaic([gray, rgb * 2 - 0.5], n=2, gap=1)  # the second row outside [0, 1]: clipped
    assert canvas.shape == (2 * 5 - 1, 2 * 6 - 1, 3)  # 2 rows x n=2 columns: the third image is left out
    for c in range(2):
        tile = canvas[0:4, c * 6: c * 6 + 5]
        np.testing.assert_allclose(tile, np.repeat(gray[c, 0][..., None], 3, axis=2), atol=1e-6)  # grey on all 3
        np.testing.assert_allclose(canvas[5:9, c * 6: c * 6 + 5], np.clip(rgb[c] * 2 - 0.5, 0, 1).transpose(1, 2, 0),
                                   atol=1e-6)
    assert (canvas[4] == 1).all() and (canvas[:, 5] == 1).all()  # the gaps are white


def test_mel_mosaic_flips_each_spectrogram_into_its_tile_with_blank_gaps():
    from cortexflow.evaluation.figures import mel_mosaic

    rng = np.random.default_rng(0)
    truth, decoded = rng.normal(size=(3, 4, 7)), rng.normal(size=(3, 4, 7))
    canvas = mel_mosaic([truth, decoded], n=2, gap=1)
    assert canvas.shape == (2 * 5 - 1, 2 * 8 - 1)  # 2 rows x n=2 columns: the third item is left out
    for c in range(2):
        # mel bin 0 at the bottom of its tile, time to the right
        np.testing.assert_allclose(canvas[0:4, c * 8: c * 8 + 7], truth[c][::-1], atol=1e-6)
        np.testing.assert_allclose(canvas[5:9, c * 8: c * 8 + 7], decoded[c][::-1], atol=1e-6)
    assert np.isnan(canvas[4]).all() and np.isnan(canvas[:, 7]).all()  # the gaps: drawn blank
    assert np.isfinite(canvas).sum() == 2 * 2 * 4 * 7


def test_comparison_pairs():
    assert comparison_pairs(["decoder", "retrieval", "ngram_lm"]) == [("decoder", "retrieval"), ("decoder", "ngram_lm")]
    assert comparison_pairs(["ridge", "chance", "dit_mean8", "dit", "nn_mean8", "ridge_pt", "noise_free_linear"]) == [
        ("dit", "ridge"), ("dit", "ridge_pt"), ("dit", "nn_mean8"), ("dit", "chance"), ("dit", "noise_free_linear"),
        ("dit_mean8", "ridge"), ("dit_mean8", "ridge_pt"), ("dit_mean8", "nn_mean8"), ("dit_mean8", "chance"),
        ("dit_mean8", "noise_free_linear"), ("dit_mean8", "dit"),
        ("ridge", "chance"), ("ridge_pt", "chance"), ("nn_mean8", "chance")]


def test_summarize_writes_tables_markdown_and_figures(evaluated):
    modalities = ("image", "audio", "text")
    out = evaluated / "summary_out"
    summarize_stage(summaries=[metric_paths(evaluated, m)["out_summary"] for m in modalities],
                    comparisons=[metric_paths(evaluated, m)["out_comparisons"] for m in modalities],
                    recons=[recons(evaluated, m)[0] for m in modalities],
                    items=[metric_paths(evaluated, m)["out_items"] for m in modalities],
                    stimuli=str(evaluated / "stimuli.tsv"), datasets=[str(evaluated / "dataset" / "sub-01" / "image")],
                    out_summary=str(out / "summary.parquet"), out_comparisons=str(out / "comparisons.parquet"),
                    out_by_category=str(out / "summary_by_category.parquet"),
                    out_markdown=str(out / "summary.md"), out_figures=str(out / "figures"), params=PARAMS,
                    sampling=json.dumps(SAMPLING))
    summary = pd.read_parquet(out / "summary.parquet")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert set(summary.modality) == set(modalities)
    assert len(summary) == sum(len(read(evaluated, m, "summary")) for m in modalities)
    assert list(pd.read_parquet(out / "comparisons.parquet").columns) == COMPARISON_COLUMNS
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["by_category.png", "metrics.png", "sub-01_audio.png", "sub-01_image.png", "sub-01_text.png"]
    assert all((out / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    md = (out / "summary.md").read_text()
    assert "## sub-01 · image (20 test items)" in md
    assert "| metric | dit | dit_mean8 | ridge | nn | chance | ceiling |" in md
    assert "dit_mean8 − dit" in md and "**significant**: dit_mean8 better" in md
    first_sentence = str(np.load(recons(evaluated, "text")[0])["truth"][0])
    assert "## sub-01 · decoded sentences" in md and first_sentence in md
    # per-seed spread: the image dit's two seeds are listed
    assert "## Training seeds" in md and "| sub-01 | image | dit | ssim | 2 |" in md
    # NSD's noise ceiling at the median ncsnr: V1 median 0.5 with 3 repeats -> 100 * 0.25 / (0.25 + 1/3)
    assert "## Noise ceiling (NSD's definition)" in md
    assert "| sub-01 | image | V1 | 4 | 0.50 [0.35, 0.65] | 42.9 | 3.0 |" in md
    assert "## Decoder against the strongest baseline of each metric" in md
    # how each modality was sampled: a reader must know that "one sample" was drawn at noise scale 0.5
    assert "image: 25 euler steps, guidance 2, 8 samples a test item, starting-noise scale 0.5: below 1" in md
    assert "audio: 10 heun steps, guidance 3, 4 samples a test item, starting-noise scale 1: samples of the " \
           "learned distribution;" in md
    assert "text: greedy decoding (temperature 0)." in md


def test_summarize_refuses_a_sampling_section_that_is_not_json(evaluated, tmp_path):
    with pytest.raises(CortexflowInputError, match="--sampling is not JSON"):
        summarize_stage(summaries=[metric_paths(evaluated, "image")["out_summary"]],
                        comparisons=[metric_paths(evaluated, "image")["out_comparisons"]], recons=[],
                        out_summary=str(tmp_path / "s.parquet"), out_comparisons=str(tmp_path / "c.parquet"),
                        out_markdown=str(tmp_path / "s.md"), out_figures=str(tmp_path / "f"), params=PARAMS,
                        sampling="{image: noise_scale=0.5}")


SAMPLING = {"image": {"num_steps": 25, "solver": "euler", "cfg_scale": 2.0, "n_samples": 8, "noise_scale": 0.5},
            "audio": {"num_steps": 10, "solver": "heun", "cfg_scale": 3.0, "n_samples": 4, "noise_scale": 1.0},
            "text": {}}  # a partial section: the workflow's defaults (greedy)


def test_summary_by_category(evaluated):
    out = evaluated / "summary_out"
    table = pd.read_parquet(out / "summary_by_category.parquet")
    assert set(table.category) == {"face", "scene"}
    items = read(evaluated, "image", "items")
    # a plain row is the mean of the category's items (over seeds for the decoder)
    faces = [f"stim{i:02d}" for i in range(8)]
    nn_face = items[(items.method == "nn") & (items.metric == "ssim") & items.item.isin(faces)].score.mean()
    row = table[(table.modality == "image") & (table.category == "face") & (table.method == "nn")
                & (table.metric == "ssim") & (table.baseline == "")].iloc[0]
    assert row.value == pytest.approx(nn_face) and row.n == 8
    # the difference rows: decoder minus the metric's strongest baseline (here ridge or nn, the better on SSIM)
    summary = read(evaluated, "image", "summary")
    best = max(("ridge", "nn"), key=lambda m: value(summary, m, "ssim").value)
    diff = table[(table.modality == "image") & (table.category == "scene") & (table.method == "dit")
                 & (table.metric == "ssim") & (table.baseline != "")].iloc[0]
    scenes = ~items.item.isin(faces)
    dit = items[(items.method == "dit") & (items.metric == "ssim") & scenes].score.mean()
    base = items[(items.method == best) & (items.metric == "ssim") & scenes].score.mean()
    assert diff.baseline == best and diff.value == pytest.approx(dit - base) and diff.ci_low <= diff.value <= diff.ci_high
    assert "## By stimulus category" in (out / "summary.md").read_text()


def test_bad_recon_files_are_rejected(tmp_path):
    ids = np.array(["a", "b", "c"])
    save_npz(tmp_path / "bad.npz", ids=ids, truth=np.zeros((3, 1, 16, 16)), dit=np.zeros((3, 1, 8, 8)))
    with pytest.raises(CortexflowInputError, match="same shape"):
        load_recon(tmp_path / "bad.npz", "image")
    with pytest.raises(CortexflowInputError, match="does not fit audio"):
        load_recon(tmp_path / "bad.npz", "audio")
    save_npz(tmp_path / "small.npz", ids=ids, truth=np.zeros((3, 1, 8, 8)), dit=np.zeros((3, 1, 8, 8)))
    with pytest.raises(CortexflowInputError, match="SSIM"):
        evaluate_stage(recon=str(tmp_path / "small.npz"), subject="01", modality="image", params={},
                       **metric_paths(tmp_path, "image"))
    np.savez(tmp_path / "obj.npz", ids=ids, truth=np.array(["x", "y", "z"], dtype=object),
             decoder=np.array(["x", "y", "z"], dtype=object))
    with pytest.raises(CortexflowInputError, match="unicode"):
        load_recon(tmp_path / "obj.npz", "text")


def test_evaluate_runs_from_the_command_line(recon_files, tmp_path, capsys, monkeypatch):
    # Only this stage's subcommand, so the test does not depend on the other stages' modules.
    import cortexflow.cli

    monkeypatch.setattr(cortexflow.cli, "STAGES", {"evaluate": cortexflow.cli.STAGES["evaluate"]})
    args = ["evaluate", "--recon", recons(recon_files, "audio")[0], "--subject", "01",
            "--modality", "audio", "--params", '{"n_boot": 100}', "--out-summary", str(tmp_path / "s.parquet"),
            "--out-items", str(tmp_path / "i.parquet"), "--out-comparisons", str(tmp_path / "c.parquet")]
    assert cli_main(args) == 0
    assert set(pd.read_parquet(tmp_path / "s.parquet").metric) == {"mel_corr", "lsd", "two_way_id"}
    args[2] = str(tmp_path / "missing.npz")
    assert cli_main(args) == 2
    assert "recon file not found" in capsys.readouterr().err


def test_unknown_parameters_are_rejected():
    from cortexflow.evaluation.evaluate import EvaluationConfig
    from cortexflow.models.ridge import RidgeConfig

    config = EvaluationConfig.from_params({"n_boot": 50, "text_features": {"n_features": 512}})
    assert config.n_boot == 50 and config.text_features.n_features == 512
    with pytest.raises(CortexflowInputError, match="n_bootstrap"):
        EvaluationConfig.from_params({"n_bootstrap": 50})
    with pytest.raises(CortexflowInputError, match="alpha_grid"):
        RidgeConfig.from_params({"alpha_grid": [1, 2]})
