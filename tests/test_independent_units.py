"""Intervals over independent units, within-category identification, and the per-family statements
(docs/analysis-plan.md, sections 4-6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexflow.evaluation import metrics as M
from cortexflow.evaluation.bootstrap import bootstrap_indices, cluster_bootstrap_counts, hierarchical_bootstrap
from cortexflow.evaluation.evaluate import EvaluationConfig, compare_methods
from cortexflow.evaluation.summary import category_table, family_statements
from cortexflow.evaluation.units import FAMILY_UNIT, ITEM, SOURCE_PHOTO, item_units_from_table


def _stimuli(n_photos=4, crops=10, n_digits=30):
    rows = []
    for p in range(n_photos):
        for c in range(crops):
            rows.append({"stimulus_id": f"p{p}c{c}", "source": f"photo:ph{p}", "category": ["scene", "object"][p % 2]})
    for d in range(n_digits):
        rows.append({"stimulus_id": f"d{d:02d}", "source": f"digit:{d}", "category": "digit"})
    return pd.DataFrame(rows)


def test_units_families_and_groups_come_from_the_stimuli_table():
    table = _stimuli()
    units = item_units_from_table(table, table["stimulus_id"])
    assert units.resample_unit == FAMILY_UNIT and units.clustered
    assert set(units.unit[:10]) == {"photo:ph0"} and len(set(units.unit[40:])) == 30  # digits: their own units
    assert list(units.group[[0, 10, 40]]) == ["photo:scene", "photo:object", "digit"]
    assert units.subset([f"p1c{c}" for c in range(10)]).resample_unit == SOURCE_PHOTO
    assert units.subset(["d00", "d01"]).resample_unit == ITEM
    # a real study's table without a source column: every item independent, today's item draws
    plain = item_units_from_table(table.drop(columns="source"), table["stimulus_id"])
    assert plain.resample_unit == ITEM and not plain.has_groups
    assert np.array_equal(plain.draws(50, 3)["indices"], bootstrap_indices(len(table), 50, 3))


def test_cluster_draws_keep_strata_and_resample_whole_units():
    units = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 2 + [f"i{k}" for k in range(8)])
    strata = np.array(["photo"] * 12 + ["digit"] * 8)
    counts = cluster_bootstrap_counts(units, strata=strata, n_boot=400, seed=1)
    assert counts.shape == (400, 20) and counts.min() >= 0
    assert np.all(counts[:, 12:].sum(axis=1) == 8)  # singleton units: the stratum keeps its size
    assert np.all(counts[:, :12].sum(axis=1) > 0)  # a stratum is never lost
    # a unit drawn k times contributes k x its size in items
    per_unit = np.stack([counts[:, :5].sum(1), counts[:, 5:10].sum(1), counts[:, 10:12].sum(1)], axis=1)
    assert np.all(per_unit % np.array([5, 5, 2]) == 0)
    assert np.array_equal(counts, cluster_bootstrap_counts(units, strata=strata, n_boot=400, seed=1))


def test_weights_equal_to_index_draws_give_the_same_bootstrap():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 25))
    idx = bootstrap_indices(25, 300, 4)
    counts = np.zeros((300, 25), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(300), 25), idx.ravel()), 1)
    a = hierarchical_bootstrap(scores, indices=idx, seed=4)
    b = hierarchical_bootstrap(scores, weights=counts, seed=4)
    assert a.value == b.value and a.ci_low == pytest.approx(b.ci_low) and a.ci_high == pytest.approx(b.ci_high)


def test_crops_of_one_photo_widen_the_interval_as_they_should():
    # 6 photos x 20 crops: each photo shifts all its crops' scores together (they are not independent)
    rng = np.random.default_rng(2)
    photo_effect = np.repeat(rng.normal(0, 1.0, 6), 20)
    scores = photo_effect + rng.normal(0, 0.2, 120)
    units = np.repeat([f"ph{k}" for k in range(6)], 20)
    by_item = hierarchical_bootstrap(scores, indices=bootstrap_indices(120, 2000, 0))
    by_photo = hierarchical_bootstrap(scores, weights=cluster_bootstrap_counts(units, n_boot=2000, seed=0))
    width = lambda r: r.ci_high - r.ci_low  # noqa: E731
    assert width(by_photo) > 3 * width(by_item)  # ~sqrt(20) for a photo-dominated spread
    # a 95% interval by photo covers the true mean (0) far more often than one by item would: check on
    # many simulated studies that the item interval undercovers and the photo interval does not
    cover_item = cover_photo = 0
    for trial in range(60):
        r = np.random.default_rng(100 + trial)
        s = np.repeat(r.normal(0, 1.0, 6), 20) + r.normal(0, 0.2, 120)
        i = hierarchical_bootstrap(s, indices=bootstrap_indices(120, 300, trial))
        p = hierarchical_bootstrap(s, weights=cluster_bootstrap_counts(units, n_boot=300, seed=trial))
        cover_item += i.ci_low <= 0 <= i.ci_high
        cover_photo += p.ci_low <= 0 <= p.ci_high
    assert cover_item < 30 and cover_photo > 42


def test_within_category_identification_ignores_distractors_of_other_groups():
    # predictions that tell the groups apart perfectly but nothing within a group
    groups = np.array(["digit"] * 4 + ["face"] * 4)
    corr = np.where(groups[:, None] == groups[None, :], 0.5, -0.5)
    np.fill_diagonal(corr, 0.5)
    assert np.allclose(M.two_way_identification(corr), (4 + 0.5 * 3) / 7)  # flattered by the other group
    assert np.allclose(M.two_way_identification_within(corr, groups), 0.5)  # chance within the group
    corr2 = corr.copy()
    np.fill_diagonal(corr2, 0.9)
    assert np.allclose(M.two_way_identification_within(corr2, groups), 1.0)
    # an item alone in its group is compared with every other item
    alone = np.array(["a", "b", "b", "b"])
    c = np.eye(4)
    assert M.two_way_identification_within(c, alone)[0] == 1.0


def _items(stimuli: pd.DataFrame, dit_gain: dict[str, float], seed: int = 0) -> pd.DataFrame:
    """Per-item SSIM of a decoder (2 seeds) and two baselines; the decoder's lead per family."""
    rng = np.random.default_rng(seed)
    ids = stimuli["stimulus_id"].to_numpy()
    family = np.where(stimuli["source"].str.startswith("photo"), "photo", "digit")
    base = rng.normal(0.4, 0.05, len(ids))
    frames = []
    for method, offset, seeds in (("dit", None, (0, 1)), ("ridge", -0.01, (None,)), ("nn_mean8", 0.0, (None,))):
        for s in seeds:
            gain = np.array([dit_gain[f] for f in family]) if offset is None else offset
            score = base + gain + rng.normal(0, 0.01, len(ids))
            frames.append(pd.DataFrame({"method": method, "metric": "ssim", "item": ids, "score": score,
                                        "seed": pd.array([s] * len(ids), dtype="Int64")}))
    return pd.concat(frames, ignore_index=True)


def test_family_statements_name_where_the_decoder_leads_and_where_it_ties():
    stimuli = _stimuli()
    items = _items(stimuli, {"digit": 0.08, "photo": 0.0})
    units = item_units_from_table(stimuli, np.sort(stimuli["stimulus_id"]))
    config = EvaluationConfig(n_boot=500)
    families = dict(zip(units.items, units.family))
    best = pd.DataFrame({"subject": ["01"], "modality": ["image"], "metric": ["ssim"], "baseline": ["nn_mean8"]})
    table = category_table(items, families, best, subject="01", modality="image", config=config, units=units,
                           grouping="family")
    assert set(table.loc[table.baseline != "", "baseline"]) == {"ridge", "nn_mean8"}  # every baseline
    photo = table[(table.category == "photo")]
    assert set(photo["resample_unit"]) == {SOURCE_PHOTO} and set(table[table.category == "digit"]["resample_unit"]) == {ITEM}
    verdicts = family_statements(table).set_index("family")["verdict"]
    assert verdicts["digit"] == "leads" and verdicts["photo"] == "ties"
    # the comparisons' resample_unit: the pooled rows resample units within each family
    comparisons = compare_methods(items, subject="01", modality="image", config=config, units=units)
    assert set(comparisons["resample_unit"]) == {FAMILY_UNIT}
    assert set(compare_methods(items, subject="01", modality="image", config=config)["resample_unit"]) == {ITEM}


def test_closeness_is_one_for_the_simulators_own_space_and_near_zero_for_an_unrelated_one():
    from cortexflow.evaluation.closeness import representational_closeness

    rng = np.random.default_rng(0)
    code = rng.normal(size=(40, 30))
    assert representational_closeness(code, code) == pytest.approx(1.0)
    assert representational_closeness(code @ rng.normal(size=(30, 30)) * 0.1 + code, code) > 0.5
    assert abs(representational_closeness(rng.normal(size=(40, 30)), code)) < 0.15


def test_the_replication_count_finds_the_statement_that_changed():
    """benchmarks/family_headline.py --replication: two runs' verdicts side by side, per statement."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "family_headline.py"
    spec = importlib.util.spec_from_file_location("family_headline", path)
    headline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headline)

    stimuli = _stimuli()
    units = item_units_from_table(stimuli, np.sort(stimuli["stimulus_id"]))
    families = dict(zip(units.items, units.family))
    best = pd.DataFrame({"subject": ["01"], "modality": ["image"], "metric": ["ssim"], "baseline": ["nn_mean8"]})

    def run(gains, seed):
        return category_table(_items(stimuli, gains, seed=seed), families, best, subject="01", modality="image",
                              config=EvaluationConfig(n_boot=500), units=units, grouping="family")

    study = run({"digit": 0.08, "photo": 0.0}, seed=0)
    same = headline.statement_agreement(study, run({"digit": 0.08, "photo": 0.0}, seed=1))
    assert len(same) == 2 and same["agrees"].all()  # digit leads, photo ties, in both
    changed = headline.statement_agreement(study, run({"digit": 0.08, "photo": -0.08}, seed=1))
    differ = changed[~changed["agrees"]]
    assert list(differ["family"]) == ["photo"]
    assert (differ["statement_study"].item(), differ["statement_replication"].item()) == ("ties", "trails")
    lines = headline.agreement_lines(changed)
    assert "| all | 2 | 1 |" in lines and any(line.startswith("- photo, ssim") for line in lines)
