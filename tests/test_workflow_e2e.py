"""The whole workflow, end to end, on the tiny config (a few minutes on CPU).

From nothing (the simulated study is written by the workflow itself) to
results/tiny/summary.parquet, in a temporary copy of the repository; then a
second run must find nothing to do, and a decoder whose output is lost (a job
killed before it wrote it) must resume from its checkpoint instead of training
again. The tests run in file order and share one workflow run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexflow.data.stimuli import FAMILIES

from test_workflow_dag import TINY, copy_repo, scheduled, snakemake

pytestmark = pytest.mark.slow

SUMMARY_COLUMNS = ["subject", "modality", "method", "metric", "value", "ci_low", "ci_high", "n"]
COMPARISON_COLUMNS = ["subject", "modality", "metric", "method_a", "method_b", "diff", "ci_low", "ci_high", "n"]
# docs/contracts.md, the summary tables
METRICS = {
    "image": {"pixcorr", "ssim", "two_way_id_pixel", "two_way_id_feature", "two_way_id_hog"},
    "audio": {"mel_corr", "two_way_id"},
    "text": {"cer", "two_way_id"},
}
DECODER = {"image": "dit", "audio": "dit", "text": "decoder"}
# every baseline of issue 12 item 3, and the simulated study's noise-free linear decoder
BASELINES = {"image": {"ridge", "ridge_pt", "ridge_pixels", "nn", "nn_mean8"},
             "audio": {"ridge", "ridge_pt", "nn", "nn_mean8"},
             "text": {"retrieval", "ngram_lm", "ngram_lm_ridge"}}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    proc = snakemake(repo, "--cores", "2", "--configfile", TINY, "--workflow-profile", "workflow/profiles/default",
                     timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return repo


def test_summary_has_every_subject_modality_method_and_metric(tiny_run):
    summary = pd.read_parquet(tiny_run / "results/tiny/summary.parquet")
    assert list(summary.columns)[: len(SUMMARY_COLUMNS)] == SUMMARY_COLUMNS
    assert set(summary["modality"]) == set(METRICS)
    for modality, metrics in METRICS.items():
        rows = summary[summary["modality"] == modality]
        # the simulated study also has noise_free_linear (ridge on the noise-free responses)
        for method in (DECODER[modality], *BASELINES[modality], "chance", "noise_free_linear"):
            found = set(rows.loc[rows["method"] == method, "metric"])
            assert metrics <= found, (modality, method, metrics - found)
    finite = summary.dropna(subset=["value", "ci_low", "ci_high"])
    assert len(finite) > 0.9 * len(summary)
    assert (finite["ci_low"] <= finite["value"] + 1e-9).all() and (finite["value"] <= finite["ci_high"] + 1e-9).all()
    assert (summary["n"] > 0).all()
    # chance is chance: two-way identification of shuffled pairs sits near 0.5
    chance = summary[(summary["method"] == "chance") & summary["metric"].str.startswith("two_way_id")]
    assert np.all(np.abs(chance["value"] - 0.5) < 0.25), chance


def test_comparisons_hold_decoder_against_every_baseline(tiny_run):
    comparisons = pd.read_parquet(tiny_run / "results/tiny/comparisons.parquet")
    assert list(comparisons.columns)[: len(COMPARISON_COLUMNS)] == COMPARISON_COLUMNS
    for modality in METRICS:
        rows = comparisons[(comparisons["modality"] == modality) & (comparisons["method_a"] == DECODER[modality])]
        assert BASELINES[modality] <= set(rows["method_b"]), modality
    assert (comparisons["ci_low"] <= comparisons["ci_high"]).all()


def test_image_decoder_has_two_training_seeds_and_categories(tiny_run):
    results = tiny_run / "results/tiny"
    items = pd.read_parquet(results / "metrics/sub-01_image_items.parquet")
    assert set(items.loc[items["method"] == "dit", "seed"]) == {0, 1}
    assert items.loc[items["method"] == "nn", "seed"].isna().all()
    # two seeds' decoders are different networks: their reconstructions differ
    a, b = (np.load(results / f"recon/sub-01_image_seed{k}.npz") for k in (0, 1))
    assert not np.allclose(a["dit"], b["dit"]) and np.array_equal(a["ridge"], b["ridge"])
    summary = pd.read_parquet(results / "summary.parquet")
    dit = items[(items["method"] == "dit") & (items["metric"] == "ssim")]
    row = summary[(summary["modality"] == "image") & (summary["method"] == "dit") & (summary["metric"] == "ssim")]
    assert row["value"].iloc[0] == pytest.approx(dit.groupby("seed")["score"].mean().mean())
    by_category = pd.read_parquet(results / "summary_by_category.parquet")
    stimuli = pd.read_csv(tiny_run / "data/tiny/bids/stimuli/stimuli.tsv", sep="\t")
    test_ids = set(np.load(results / "recon/sub-01_image_seed0.npz")["ids"].astype(str))
    expected = set(stimuli.loc[stimuli["stimulus_id"].isin(test_ids), "category"])
    image = by_category[(by_category["modality"] == "image") & (by_category["grouping"] == "category")]
    assert set(image["category"]) == expected
    # the per-family rows (docs/analysis-plan.md) name the families of the test images
    families = by_category[(by_category["modality"] == "image") & (by_category["grouping"] == "family")]
    sources = stimuli.loc[stimuli["stimulus_id"].isin(test_ids), "source"].str.split(":").str[0]
    assert set(families["category"]) == {FAMILIES[s] for s in sources}
    assert (image.loc[image["baseline"] != "", "method"].isin(["dit", "dit_mean2"])).all()
    markdown = (results / "summary.md").read_text()
    for section in ("## Training seeds", "## By stimulus category", "## Noise ceiling (NSD's definition)"):
        assert section in markdown


def test_report_files_exist(tiny_run):
    results = tiny_run / "results/tiny"
    markdown = (results / "summary.md").read_text()
    assert "ridge" in markdown
    figures = sorted((results / "figures").glob("*.png"))
    names = {f.name for f in figures}
    assert {"metrics.png", "by_category.png"} <= names and {f"sub-01_{m}.png" for m in METRICS} <= names
    for figure in figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for log in ("simulate_study.log", "summarize.log"):
        assert (results / "logs" / log).stat().st_size > 0


# docs/progress-and-qc.md: the QC figures and the loss curves, in results/tiny/
QC_FIGURES = ["qc/sub-01_rois.png", "qc/sub-01_ncsnr.png", "qc/sub-01_motion.png",
              "qc/sub-01_task-images_run-01_design.png", "qc/training_curves.png"]
CURVES = ["models/vae_image_curve.parquet", "models/vae_audio_curve.parquet",
          "models/sub-01_image_decoder_seed0_curve.parquet", "models/sub-01_image_decoder_seed1_curve.parquet",
          "models/sub-01_audio_decoder_seed0_curve.parquet", "models/sub-01_text_decoder_seed0_curve.parquet"]


def test_every_model_has_its_loss_curve(tiny_run):
    results = tiny_run / "results/tiny"
    for name in CURVES:
        curve = pd.read_parquet(results / name)
        assert list(curve.columns) == ["step", "loss", "lr", "grad_norm", "elapsed_s"], name
        # the tiny models train 30 steps and log every step (fewer than 100 steps)
        assert curve["step"].tolist() == list(range(1, 31)), name
        assert np.isfinite(curve["loss"]).all() and (np.diff(curve["elapsed_s"]) >= 0).all(), name
    # the image decoder's two seeds train in one job (train_decoder_seeds), each logged as its own run
    log = (results / "logs/train_decoder/sub-01_image_seeds.log").read_text()
    for seed in (0, 1):
        assert f"sub-01_image_decoder_seed{seed}: step 30/30 (100%)  loss " in log and " ETA 0:00:00" in log
    log = (results / "logs/train_decoder/sub-01_audio_seed0.log").read_text()
    assert "sub-01_audio_decoder_seed0: step 30/30 (100%)  loss " in log


def test_report_holds_the_qc_figures_and_the_training_curves(tiny_run):
    import zipfile

    snakemake(tiny_run, "--cores", "1", "--configfile", TINY, "--report", "report.zip", timeout=300)
    with zipfile.ZipFile(tiny_run / "report.zip") as archive:
        names = archive.namelist()
        text = "\n".join(archive.read(n).decode("utf-8", "replace") for n in names
                         if n.endswith((".html", ".js", ".json", ".rst")))
        for figure in QC_FIGURES:
            found = [n for n in names if n.endswith(figure.rsplit("/", 1)[1])]
            assert found, (figure, names[:50])
            assert archive.read(found[0])[:8] == b"\x89PNG\r\n\x1a\n", found[0]
    for caption in ("over nilearn's bundled MNI152 template", "Noise-ceiling SNR (ncsnr", "framewise displacement",
                    "The design matrix of the study's first run", "Training loss of every model"):
        assert caption in text, caption
    for category in ("Quality control", "Regions of interest", "Noise ceiling", "Head motion", "Design matrix",
                     "Metrics", "Reconstructions"):
        assert category in text, category


def test_second_run_reruns_nothing(tiny_run):
    proc = snakemake(tiny_run, "--cores", "2", "--configfile", TINY, "--dry-run")
    assert scheduled(proc.stdout) == {}, proc.stdout[-3000:]


def test_lost_image_seed_is_rebuilt_from_the_ensemble_checkpoint(tiny_run):
    """One image seed's decoder lost: its train_decoder_seeds job runs again, resumes the finished
    ensemble from its last checkpoint (no training) and writes every seed's model as before."""
    import torch

    models = tiny_run / "results/tiny/models"
    before = {k: torch.load(models / f"sub-01_image_decoder_seed{k}.pt", weights_only=False)["state_dict"]
              for k in (0, 1)}
    (models / "sub-01_image_decoder_seed1.pt").unlink()
    proc = snakemake(tiny_run, "results/tiny/models/sub-01_image_decoder_seed1.pt", "--cores", "2",
                     "--configfile", TINY)
    assert scheduled(proc.stdout + proc.stderr) == {"train_decoder_seeds": 1}
    log = (tiny_run / "results/tiny/logs/train_decoder/sub-01_image_seeds.log").read_text()
    assert "resumed" in log and "at step 30" in log
    for k, weights in before.items():
        after = torch.load(models / f"sub-01_image_decoder_seed{k}.pt", weights_only=False)["state_dict"]
        assert after.keys() == weights.keys() and all(torch.equal(after[n], weights[n]) for n in weights), k


def test_lost_decoder_resumes_from_its_checkpoint(tiny_run):
    decoder = "results/tiny/models/sub-01_text_decoder_seed0.pt"
    log = tiny_run / "results/tiny/logs/train_decoder/sub-01_text_seed0.log"
    assert "resumed" not in log.read_text()  # the first run trained from scratch
    (tiny_run / decoder).unlink()
    curve = tiny_run / "results/tiny/models/sub-01_text_decoder_seed0_curve.parquet"
    before = pd.read_parquet(curve)
    proc = snakemake(tiny_run, decoder, "--cores", "2", "--configfile", TINY)
    assert scheduled(proc.stdout + proc.stderr) == {"train_decoder": 1}
    assert "resumed" in log.read_text() and (tiny_run / decoder).exists()
    pd.testing.assert_frame_equal(pd.read_parquet(curve), before)  # the resumed job kept its curve
