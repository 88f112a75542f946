"""Which test items are independent: stimulus families and resampling units.

The bootstrap of ``bootstrap.py`` treats its items as independent draws. Test
crops cut from one source photo are not: they share the photo's content and
its response statistics, so resampling them one by one understates the
uncertainty of any claim about photos (docs/analysis-plan.md, section 4). This
module reads each test item's family and unit from the stimuli table
(``source`` column: ``photo:<name>`` for a crop, ``digit:<i>``, ``lfw_face:<i>``,
``deadleaves:<k>`` ... for an item that is its own unit) and gives the draws
that respect them. Stimuli tables without a ``source`` column (most real
studies) make every item its own unit, and the draws are today's item draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow.data.stimuli import image_units
from cortexflow.errors import CortexflowInputError
from cortexflow.evaluation.bootstrap import bootstrap_indices, cluster_bootstrap_counts

#: ``resample_unit`` labels: every item its own unit; crops resampled by source photo (one family);
#: units resampled within each family (pooled rows of a study with photo crops).
ITEM, SOURCE_PHOTO, FAMILY_UNIT = "item", "source_photo", "family+unit"


@dataclass(frozen=True)
class ItemUnits:
    """Per test item (in ``items`` order): its family, its resampling unit, its distractor group."""

    items: np.ndarray
    family: np.ndarray
    unit: np.ndarray
    group: np.ndarray  # two_way_id_within_category's distractor group: the family, or a photo's category

    @classmethod
    def independent(cls, items) -> "ItemUnits":
        """Every item its own unit, one family: no grouping known."""
        items = np.asarray(items).astype(str)
        return cls(items, np.full(len(items), ITEM), items.copy(), np.full(len(items), ITEM))

    @property
    def clustered(self) -> bool:
        """True if some unit holds more than one item."""
        return len(np.unique(self.unit)) < len(self.unit)

    @property
    def resample_unit(self) -> str:
        if not self.clustered:
            return ITEM
        return SOURCE_PHOTO if len(np.unique(self.family)) == 1 else FAMILY_UNIT

    @property
    def has_groups(self) -> bool:
        return bool(np.any(self.group != ITEM))

    def subset(self, items) -> "ItemUnits":
        """The same facts for ``items`` (a subset, in the given order)."""
        position = {item: n for n, item in enumerate(self.items)}
        items = np.asarray(items).astype(str)
        missing = [i for i in items if i not in position]
        if missing:
            raise CortexflowInputError(f"{len(missing)} test items have no row in the stimuli table "
                                       f"(e.g. {missing[:3]})", fix="pass the stimuli.tsv of the study evaluated")
        rows = [position[i] for i in items]
        return ItemUnits(items, self.family[rows], self.unit[rows], self.group[rows])

    def draws(self, n_boot: int, seed: int) -> dict[str, np.ndarray]:
        """Keyword arguments for ``hierarchical_bootstrap``: item ``indices`` if every item is its own
        unit (the item bootstrap, unchanged), else cluster ``weights`` stratified by family."""
        if not self.clustered:
            return {"indices": bootstrap_indices(len(self.items), n_boot, seed)}
        return {"weights": cluster_bootstrap_counts(self.unit, strata=self.family, n_boot=n_boot, seed=seed)}


def item_units_from_table(table: pd.DataFrame, items, *, source: str | Path | None = None) -> ItemUnits:
    """Families, units and distractor groups of ``items`` from a stimuli table (``stimulus_id``,
    optional ``source`` and ``category``)."""
    items = np.asarray(items).astype(str)
    if "stimulus_id" not in table.columns:
        raise CortexflowInputError("stimuli table has no stimulus_id column", path=source)
    if "source" not in table.columns:
        return ItemUnits.independent(items)
    rows = table.assign(stimulus_id=table["stimulus_id"].astype(str)).set_index("stimulus_id")
    missing = [i for i in items if i not in rows.index]
    if missing:
        raise CortexflowInputError(f"{len(missing)} test items have no row in the stimuli table (e.g. {missing[:3]})",
                                   path=source, fix="pass the stimuli.tsv of the study evaluated")
    sources = [s if isinstance(s, str) else None for s in rows.loc[items, "source"]]
    family, unit = image_units(list(items), sources)
    category = (rows.loc[items, "category"].fillna("").astype(str).to_numpy() if "category" in rows.columns
                else np.full(len(items), ""))
    group = [f"photo:{c}" if f == "photo" else f for f, c in zip(family, category)]
    return ItemUnits(items, np.asarray(family), np.asarray(unit), np.asarray(group))


def load_item_units(stimuli: str | Path | None, items) -> ItemUnits:
    """``item_units_from_table`` of a stimuli.tsv; every item independent without one."""
    if stimuli is None:
        return ItemUnits.independent(items)
    path = Path(stimuli)
    if not path.is_file():
        raise CortexflowInputError("stimuli table not found", path=path, fix="pass the study's stimuli/stimuli.tsv")
    return item_units_from_table(pd.read_csv(path, sep="\t", dtype=str), items, source=path)
