"""The README is a user's guide that stays short and truthful: every link, file,
command and config key it names exists in this checkout, and the docs it sends
readers to link to headings that exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The evidence pages the README sends readers to, checked like the README.
GUIDE_PAGES = [README] + [ROOT / "docs" / f"{name}.md" for name in
                          ("results", "validation", "simulator", "pipeline", "cluster")]
MAX_README_LINES = 220


def visible_markdown(path: Path) -> str:
    """The page without HTML comments (the lead's placeholders name commands still to come)."""
    return re.sub(r"<!--.*?-->", "", path.read_text(encoding="utf-8"), flags=re.S)


def heading_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to -."""
    text = re.sub(r"`", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {heading_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def markdown_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", visible_markdown(path), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def code_spans(path: Path, languages: tuple[str, ...] = ("", "bash", "yaml")) -> list[str]:
    """Inline code spans, and the lines of fenced blocks in those languages, of the visible page."""
    text = visible_markdown(path)
    blocks = [body for lang, body in re.findall(r"```([^\n]*)\n(.*?)```", text, flags=re.S)
              if lang.strip() in languages]
    inline = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    return inline + [line for block in blocks for line in block.splitlines()]


def schema_has_key(schema: dict, dotted: str) -> bool:
    node = schema
    for part in dotted.split("."):
        while "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
    return True


def test_readme_is_a_short_guide_with_its_sections():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; keep it to {MAX_README_LINES}"
    headings = [line.lstrip("# ").strip() for line in lines if line.startswith("## ")]
    for needed in ("Two commands", "What the default run writes", "Your own data", "On a SLURM cluster",
                   "Rerunning one stage", "Where the evidence lives", "Licence", "How to cite"):
        assert needed in headings, f"README.md lost its section {needed!r}"


@pytest.mark.parametrize("page", GUIDE_PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_exists(page):
    for link in markdown_links(page):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        target_path = (page.parent / target).resolve() if target else page
        assert target_path.exists(), f"{page.name} links to {link}, which does not exist"
        if anchor and target_path.suffix == ".md":
            assert anchor in anchors_of(target_path), \
                f"{page.name} links to {link}: {target_path.name} has no heading with anchor #{anchor}"


def test_the_slug_rule_matches_githubs_for_headings_with_code_and_punctuation():
    assert heading_slug("Cross-subject training (`snakemake cross_subject`)") == \
        "cross-subject-training-snakemake-cross_subject"
    assert heading_slug("Training length on the 2,000-image study: 4,600 steps") == \
        "training-length-on-the-2000-image-study-4600-steps"


@pytest.mark.parametrize("page", GUIDE_PAGES, ids=lambda p: p.name)
def test_every_config_key_named_is_in_the_schema(page):
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text(encoding="utf-8"))
    sections = set(schema["properties"])
    named = set()
    for span in code_spans(page):
        for m in re.finditer(r"(?<![\w/.-])([a-z_]+(?:\.(?:<modality>|[a-z_]+))+)(?=[:\s)`,]|$)", span):
            key = m.group(1)
            if key.split(".")[0] in sections:
                named.add(key.replace("<modality>", "image"))
    for key in sorted(named):
        assert schema_has_key(schema, key), f"{page.name} names config key {key}, which the schema lacks"
    if page == README:
        assert {"data.source", "decoder.image", "sampling.image"} <= named


def test_every_command_named_in_the_readme_exists():
    from cortexflow.cli import build_parser

    parser = build_parser()
    stages = set()
    for action in parser._subparsers._group_actions:
        stages |= set(action.choices)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    make_targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    rules = set()
    for smk in [ROOT / "Snakefile", *(ROOT / "workflow/rules").glob("*.smk")]:
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(encoding="utf-8"), flags=re.M))

    spans = code_spans(README, languages=("bash",))
    named_stages = {m.group(1) for s in spans for m in re.finditer(r"\bcortexflow ([a-z][a-z-]+)", s)}
    named_make = {m.group(1) for s in spans for m in re.finditer(r"\bmake ([a-z-]+)", s)}
    named_rules = {m.group(1) for s in spans for m in re.finditer(r"(?:-R|--forcerun) (\w+)", s)}
    # the rules that the cluster and rerun sections name as stages
    for title in ("On a SLURM cluster", "Rerunning one stage"):
        section = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", visible_markdown(README), flags=re.M | re.S)
        assert section, f"README.md has no section {title!r}"
        named_rules |= {w for w in re.findall(r"`([a-z]+(?:_[a-z]+)*)`", section.group(1))
                        if w not in ("snakemake", "cortexflow")}
    assert named_stages and named_make and named_rules
    assert named_stages <= stages, f"README names cortexflow stages that do not exist: {named_stages - stages}"
    assert named_make <= make_targets, f"README names make targets that do not exist: {named_make - make_targets}"
    assert named_rules <= rules, f"README names rules that do not exist: {named_rules - rules}"


def test_every_checkout_file_the_readme_names_exists():
    generated = ("results/", ".venv/", "my_study", "report.html", "data/")
    named = set()
    for span in code_spans(README):
        for m in re.finditer(r"(?<![\w.-])((?:[\w.-]+/)+[\w.-]+\.(?:py|yaml|yml|txt|smk|md)|[\w-]+\.(?:txt|yml|yaml))\b", span):
            if not m.group(1).startswith(generated):
                named.add(m.group(1))
    assert "workflow/profiles/slurm/config.yaml" in named
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README names files that are not in the checkout: {missing}"


def test_the_citation_carries_the_packages_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    cite = re.search(r"```bibtex\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert cite, "README.md has no BibTeX entry"
    assert re.search(r"version\s*=\s*\{" + re.escape(version) + r"\}", cite.group(1))
    assert "the cortexflow developers" in cite.group(1)


def test_readme_tables_prints_the_results_tables_from_a_runs_parquet_files(tmp_path, capsys):
    """benchmarks/readme_tables.py (docs/results.md's tables) reads a run's two parquet files and prints
    each method's value per subject and the paired differences, marking the strongest baseline."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks/readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    values = {("dit", "01"): 0.319, ("dit", "02"): 0.307, ("nn_mean8", "01"): 0.279, ("nn_mean8", "02"): 0.275,
              ("ridge", "01"): 0.233, ("ridge", "02"): 0.236}
    pd.DataFrame([{"subject": s, "modality": "image", "method": m, "metric": "ssim", "value": v}
                  for (m, s), v in values.items()]).to_parquet(tmp_path / "summary.parquet")
    pd.DataFrame([{"subject": s, "modality": "image", "metric": "ssim", "method_a": "dit", "method_b": b,
                   "diff": d, "ci_low": lo, "ci_high": hi}
                  for s, b, d, lo, hi in [("01", "nn_mean8", 0.040, 0.020, 0.062), ("01", "ridge", 0.086, 0.069, 0.105),
                                          ("02", "nn_mean8", 0.032, -0.008, 0.056)]]).to_parquet(
        tmp_path / "comparisons.parquet")
    tables.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "## image" in out
    assert "| dit | .319 / .307 |" in out
    assert "| nn_mean8 | .279 / .275 |" in out
    assert "| sub-01 | ssim | dit − nn_mean8 (strongest) | +0.040 [+0.020, +0.062] | better |" in out
    assert "| sub-01 | ssim | dit − ridge | +0.086 [+0.069, +0.105] | better |" in out
    assert "| sub-02 | ssim | dit − nn_mean8 (strongest) | +0.032 [-0.008, +0.056] | no difference |" in out
