"""The engine settings' one definition (virnucpro.settings) against what cannot be derived from it: the config
schema, config/config.yaml, config/README.md and README.md's option table; and what is derived, end to end."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import yaml

from virnucpro import settings
from virnucpro.cli import build_parser
from virnucpro.commands.embed import embed_config
from virnucpro.pipeline.runner import EmbedConfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _schema_disagreements() -> list[str]:
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    engine = schema["properties"]["engine"]["properties"]
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())["engine"]
    wanted = {s.name: s for s in settings.SETTINGS if s.workflow}
    out = [f"schema engine.{k}: no such setting in virnucpro.settings" for k in sorted(set(engine) - set(wanted))]
    out += [f"config.yaml engine.{k}: no such setting" for k in sorted(set(config) - set(wanted))]
    for name, s in wanted.items():
        prop = engine.get(name)
        if prop is None:
            out.append(f"schema: engine.{name} missing")
            continue
        if not prop.get("description"):
            out.append(f"schema: engine.{name} has no description")
        nullable = [SCHEMA_TYPES[s.kind], "null"] if s.default is None else None  # an optional value
        if prop.get("type") not in (SCHEMA_TYPES[s.kind], nullable):
            out.append(f"schema: engine.{name} type {prop.get('type')!r}, setting kind {s.kind.__name__}")
        if s.choices and prop.get("enum") != list(s.choices):
            out.append(f"schema: engine.{name} enum {prop.get('enum')} != choices {list(s.choices)}")
        if "default" not in prop or config.get(name, object()) != prop["default"]:
            out.append(f"engine.{name}: schema default {prop.get('default')!r}, config.yaml {config.get(name)!r}")
    return out


def _shown_default(s: settings.Setting) -> str | None:
    """How README.md's table shows the default (None: it explains it in words)."""
    if s.kind is bool:
        return "off"
    if s.default is None:
        return None
    return f"{s.default:g}" if s.kind is float else str(s.default)


def _readme_disagreements() -> list[str]:
    engine_row = next(
        line for line in (ROOT / "config/README.md").read_text().splitlines() if line.startswith("| `engine` |")
    )
    out = [
        f"config/README.md: engine row lacks `{s.name}`"
        for s in settings.SETTINGS
        if s.workflow and f"`{s.name}`" not in engine_row
    ]
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `--")]
    for s in settings.SETTINGS:
        row = next((r for r in rows if re.search(rf"`{re.escape(s.flag)}[ `]", r.split("|")[1])), None)
        if row is None:
            out.append(f"README.md: no option table row for {s.flag}")
            continue
        shown = _shown_default(s)
        if shown is not None and not re.search(rf"(?<![\w.-]){re.escape(shown)}(?![\w.])", row.split("|")[2]):
            out.append(f"README.md: {s.flag} default cell {row.split('|')[2].strip()!r} lacks {shown!r}")
    return out


def test_schema_config_and_readmes_agree_with_the_settings():
    problems = _schema_disagreements() + _readme_disagreements()
    assert not problems, "\n".join(problems)


def test_settings_reach_the_cli_embedconfig_and_workflow_options():
    assert all(s.default is False for s in settings.SETTINGS if s.kind is bool)  # a flag can only turn one on
    names = [f.name for f in fields(EmbedConfig)]
    assert names[2 : 2 + len(settings.SETTINGS)] == [s.name for s in settings.SETTINGS]
    parser = build_parser()
    defaults = embed_config(parser.parse_args(["embed", "in.faa", "-o", "out"]))
    assert defaults == EmbedConfig(fasta=Path("in.faa"), outdir=Path("out"))
    # the workflow's job options parse back to the config's values, and an on/off setting is its flag alone
    engine = yaml.safe_load((ROOT / "config/config.yaml").read_text())["engine"] | {"exact_gelu": True}
    argv = [str(x) for pair in settings.job_options(engine) for x in pair if x is not None]
    parsed = embed_config(parser.parse_args(["embed", "in.faa", "-o", "out", *argv]))
    for s in settings.SETTINGS:
        if s.workflow == settings.OPTION:
            assert getattr(parsed, s.name) == engine[s.name], s.name
    assert set(settings.KNOBS) == {
        "num_workers",
        "prefetch_factor",
        "token_budget",
        "buffer_size",
        "checkpoint_every",
        "world_size",
        "precision",  # sweeps.precision: recommended only through the accuracy gate (report.accuracy)
    }


def test_the_schema_knows_the_models_and_precisions_the_engine_knows():
    """A mistyped model.name is refused when the workflow starts, not by a job after results were cleared."""
    from virnucpro.models.weights import ARCHITECTURES

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["properties"]["model"]["properties"]["name"]["enum"] == ["", *ARCHITECTURES]
    # and every precision the engine runs: a recommended fp8 snippet must be usable as a --configfile
    assert schema["properties"]["model"]["properties"]["precision"]["enum"] == list(
        settings.BY_NAME["precision"].choices
    )
