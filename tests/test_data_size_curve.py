"""benchmarks/data_size_curve.py (docs/analysis-plan.md, section 7) on a tiny study.

The workflow builds the tiny study only as far as the script reads it (datasets,
image VAE and latents: no decoder, sample or evaluation of the study itself), with
the plan's retrieval tuning (nn_k / nn_source auto) and unit resampling; sub-01's
dataset is copied as sub-02 (the script reads nothing else of a subject), so the
two-subject path runs without simulating a second subject. Then the script runs
on it with a decoder of a few steps, and again to check that it resumes.
The statement is tested on hand-made tables whose answer is known.
"""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from test_workflow_dag import REPO, TINY, copy_repo, snakemake

spec = importlib.util.spec_from_file_location("data_size_curve", REPO / "benchmarks" / "data_size_curve.py")
dsc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dsc)

SIZES = [15, 100]  # 100: more than the tiny study's 43 fit-fold trials, so all of them (two sizes keep it fast;
# test_fit_order_gives_nested_subsets_of_fit_trials checks more sizes without training)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """A copy of the repo whose tiny study has image datasets (sub-01, sub-02), VAE and latents."""
    repo = copy_repo(tmp_path_factory.mktemp("datasize") / "repo")
    config = yaml.safe_load((REPO / TINY).read_text())
    config["data"] = {"modalities": ["image"]}
    config["vae"]["image"]["steps"] = 10
    config["baseline"] = {"nn_k": "auto", "nn_source": "auto"}
    config["evaluation"]["resample_by"] = "unit"
    (repo / "datasize.yaml").write_text(yaml.safe_dump(config))
    results = repo / "results" / "tiny"
    snakemake(repo, "--cores", "1", "--configfile", "datasize.yaml", "--",
              "results/tiny/dataset/sub-01/image", "results/tiny/latents/image.npz", "results/tiny/models/vae_image.pt",
              timeout=400)
    shutil.copytree(results / "dataset" / "sub-01", results / "dataset" / "sub-02")
    return repo


@pytest.fixture(scope="module")
def curve(tiny_study):
    out = tiny_study / "results" / "tiny" / "data_size"
    argv = ["--results", str(tiny_study / "results" / "tiny"), "--config", str(tiny_study / "datasize.yaml"),
            "--sizes", *map(str, SIZES), "--threads", "1", "--decoder-params", '{"steps": 4}']
    table = dsc.main(argv)
    return tiny_study, out, table, argv


def _work(out, subject, size):
    (folder,) = (out / "work").glob(f"sub-{subject}_n{size:04d}_*")
    return folder


@pytest.mark.slow
def test_subsets_are_nested_fit_trials_and_the_baselines_are_refitted_on_them(curve):
    from cortexflow.models.baselines import load_baselines

    repo, out, table, _ = curve
    train = pd.read_parquet(repo / "results/tiny/dataset/sub-01/image/train.parquet")
    fit_ids = set(train.loc[train["fold"] == "train", "stimulus_id"].astype(str))
    val_ids = set(train.loc[train["fold"] == "val", "stimulus_id"].astype(str))
    for subject in ("01", "02"):
        order = pd.read_parquet(out / f"sub-{subject}_fit_order.parquet")
        assert sorted(order["train_row"]) == sorted(np.flatnonzero(train["fold"] == "train"))  # a permutation
        previous: set[str] = set()
        for size in SIZES:
            work = _work(out, subject, size)
            ids = pd.read_parquet(work / "dataset" / "train.parquet")["stimulus_id"].astype(str).tolist()
            assert len(ids) == min(size, len(fit_ids))
            assert ids == order["stimulus_id"].tolist()[:size]  # the permutation's first N
            assert set(ids) <= fit_ids and previous <= set(ids)  # fit trials only, nested
            previous = set(ids)
            # the baselines (nn_mean<k> among them) were fitted on exactly this subset
            assert sorted(load_baselines(work / "baselines.npz").training_ids) == sorted(set(ids))
            # the decoded items are the validation fold, whatever the size
            test = pd.read_parquet(work / "dataset" / "test.parquet")["stimulus_id"].astype(str)
            assert set(test) == val_ids
        assert previous == fit_ids  # the size above the fit trials took them all


@pytest.mark.slow
def test_rows_for_every_subject_size_and_pooled_with_intervals(curve):
    repo, out, table, _ = curve
    written = pd.read_parquet(out / "data_size.parquet")
    pd.testing.assert_frame_equal(written, table)
    assert list(table.columns) == dsc.COLUMNS
    assert set(table["metric"]) == {"ssim"}
    assert set(table["method"]) == {"dit", "dit_mean2"}  # tiny.yaml samples 2
    for subject in ("01", "02"):
        for size in SIZES:
            rows = table[(table["subject"] == subject) & (table["size"] == size)]
            pooled = rows[rows["family"] == dsc.POOLED]
            assert set(pooled["method"]) == {"dit", "dit_mean2"}
            assert (rows["n_trials"] == min(size, 43)).all() and (rows["n_fit_trials"] == 43).all()
            # the baseline is the retrieval baseline chosen on this subset, and named so
            fitted = dsc.load_baselines(_work(out, subject, size) / "baselines.npz")
            assert (rows["baseline"] == f"nn_mean{fitted.nn_k}").all()
            assert (rows["nn_source"] == fitted.nn_source).all()
            assert len(rows) > len(pooled)  # per-family rows too
    values = table[["value", "ci_low", "ci_high", "decoder_value", "baseline_value"]].to_numpy()
    assert np.isfinite(values).all()
    assert ((table["ci_low"] <= table["value"] + 1e-12) & (table["value"] <= table["ci_high"] + 1e-12)).all()
    # the paired difference is the decoder's mean minus the baseline's, over the same items
    assert np.allclose(table["value"], table["decoder_value"] - table["baseline_value"])
    # pooled rows count every validation item; the families partition them
    for _, rows in table.groupby(["subject", "size", "method"]):
        pooled = rows[rows["family"] == dsc.POOLED]
        assert pooled["n"].iloc[0] == rows.loc[rows["family"] != dsc.POOLED, "n"].sum()
    text = (out / "data_size.md").read_text()
    assert "**Statement.**" in text and dsc.lead_statement(table)[1] in text


@pytest.mark.slow
def test_a_second_run_reuses_every_finished_subset(curve, caplog):
    repo, out, table, argv = curve
    before = {p: p.stat().st_mtime_ns for p in (out / "work").glob("*/rows.parquet")}
    with caplog.at_level("INFO", logger="data_size_curve"):
        again = dsc.main(argv)
    assert len(before) == 2 * len(SIZES)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert caplog.text.count("done before") == 2 * len(SIZES)
    pd.testing.assert_frame_equal(again, table)


def test_fit_order_gives_nested_subsets_of_fit_trials():
    train = pd.DataFrame({"stimulus_id": [f"img-{i:03d}" for i in range(60)],
                          "fold": ["val" if i % 6 == 0 else "train" for i in range(60)]})
    order = dsc.fit_order(train, seed=0)
    fit_rows = np.flatnonzero(train["fold"] == "train")
    assert sorted(order["train_row"]) == fit_rows.tolist() and order["rank"].tolist() == list(range(50))
    assert not np.array_equal(order["train_row"], fit_rows)  # shuffled
    assert order.equals(dsc.fit_order(train, seed=0)) and not order.equals(dsc.fit_order(train, seed=1))
    subsets = [set(dsc.subset_rows(order, n)) for n in (5, 10, 25, 50, 80)]
    assert [len(s) for s in subsets] == [5, 10, 25, 50, 50]  # 80 > 50 fit trials: all of them
    assert all(a <= b for a, b in zip(subsets, subsets[1:]))
    assert subsets[-1] == set(fit_rows)


def _table(ci_lows: dict[tuple[str, int], float]) -> pd.DataFrame:
    rows = []
    for (subject, size), low in ci_lows.items():
        rows.append({"subject": subject, "size": size, "family": dsc.POOLED, "method": "dit", "value": low + 0.05,
                     "ci_low": low, "ci_high": low + 0.1})
        # rows the statement must ignore: the mean of samples, and a family
        rows.append({"subject": subject, "size": size, "family": dsc.POOLED, "method": "dit_mean8", "value": 0.5,
                     "ci_low": 0.4, "ci_high": 0.6})
        rows.append({"subject": subject, "size": size, "family": "digit", "method": "dit", "value": 0.5,
                     "ci_low": 0.4, "ci_high": 0.6})
    return pd.DataFrame(rows)


def test_statement_is_the_smallest_size_where_both_subjects_lead():
    # sub-01 leads from 500 on, sub-02 only from 1000: the answer is 1000
    table = _table({("01", 250): -0.02, ("01", 500): 0.01, ("01", 1000): 0.02, ("01", 1800): 0.03,
                    ("02", 250): -0.05, ("02", 500): -0.01, ("02", 1000): 0.001, ("02", 1800): 0.02})
    size, text = dsc.lead_statement(table)
    assert size == 1000
    assert "about 1000 trials" in text and "both subjects" in text and "Not at every" not in text


def test_statement_names_a_larger_size_that_loses_the_lead():
    table = _table({("01", 250): 0.01, ("01", 500): 0.01, ("01", 1000): 0.01,
                    ("02", 250): 0.01, ("02", 500): -0.01, ("02", 1000): 0.01})
    size, text = dsc.lead_statement(table)
    assert size == 250 and "not at 500" in text


def test_statement_when_no_size_reaches_it():
    # an interval touching zero is not above it; sub-01 alone leading is not enough
    table = _table({("01", 250): 0.0, ("01", 500): 0.02, ("01", 1000): 0.03, ("01", 1800): 0.04,
                    ("02", 250): -0.05, ("02", 500): -0.03, ("02", 1000): -0.01, ("02", 1800): 0.0})
    size, text = dsc.lead_statement(table)
    assert size is None and text.startswith("No subset reaches it")
    # the mean of samples leads everywhere in this table, but the statement is about one sample
    assert dsc.lead_statement(table, method="dit_mean8")[0] == 250
