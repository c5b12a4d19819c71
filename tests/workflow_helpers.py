"""Helpers for the end-to-end workflow tests: copy the repository and finished workdirs, run
Snakemake in a workdir, and read which jobs a dry run would schedule.

Snakemake always runs as a subprocess of this interpreter (`python -m snakemake`) with
`--directory <workdir>`, so a test never writes into the checkout it tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import yaml

from cellseg.common.images import read_image

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = Path("tests") / "configs" / "tiny.yaml"
# What a repository copy leaves out: environments, run outputs and caches.
REPO_IGNORE = shutil.ignore_patterns(
    ".venv",
    ".git",
    "results",
    "logs",
    "resources",
    ".snakemake",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
)

# The tiny run's few training steps leave low scores: a low score threshold for the cells point
# gives the segment tests cells to compare.
LOW_CELLS = {"tune": {"cells": {"score_thresholds": [0.05]}}}
# `segment` settings that split `write_region_image`'s image into 4 regions of 2 x 2 blocks.
FOUR_REGIONS = {"block_size": 64, "margin": 24, "region_blocks": 2}

# One job in a dry run's listing: `rule NAME:` or `localrule NAME:`, then indented fields.
_JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):\s*$")
_JOB_FIELD = re.compile(r"^\s+(\w+): (.*)$")
# The `Job stats:` table: `rule_name   count`, closed by `total   N`.
_STATS_ROW = re.compile(r"^(\w+)\s+(\d+)\s*$")

Job = tuple[str, str]  # (rule, "key=value, key=value" wildcards; "" when none)


def copy_repo(dest: Path, repo: Path = REPO) -> Path:
    """A copy of the checkout's sources (no venv, results, logs or .git) at `dest`."""
    shutil.copytree(repo, dest, ignore=REPO_IGNORE, symlinks=True)
    return dest


def _copy_or_link(src: str, dst: str) -> str:
    """copy2 (data and timestamps); large model files are hard-linked to save disk and time."""
    if src.endswith(".pt"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


def copy_workdir(src: Path, dest: Path) -> Path:
    """A copy of a finished workdir that Snakemake sees as up to date: outputs with their
    timestamps, `.snakemake/metadata` with the recorded params and code, symlinks (outputs
    taken from the output cache) kept as links. For dry runs: `.pt` files are hard links. Not
    `.snakemake/locks`: a dry run of another test may hold one in `src` at that moment."""
    shutil.copytree(src, dest, symlinks=True, copy_function=_copy_or_link, ignore=shutil.ignore_patterns("locks"))
    return dest


def write_config(path: Path, data: dict) -> Path:
    """An extra config file (nested overrides keep their types, unlike `--config`)."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def snakemake_command(
    workdir: Path,
    *args: str,
    repo: Path = REPO,
    configs: tuple[Path, ...] | list[Path] = (),
    cores: int = 2,
    tiny: bool = True,
) -> list[str]:
    """The `snakemake` command line that `snakemake` runs, for tests that start it themselves."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(repo / "config.yaml"),
        *([str(repo / TINY_CONFIG)] if tiny else []),
        *[str(c) for c in configs],
        "--cores",
        str(cores),
        *args,
    ]


def snakemake(
    workdir: Path,
    *args: str,
    repo: Path = REPO,
    configs: tuple[Path, ...] | list[Path] = (),
    env: dict | None = None,
    cores: int = 2,
    check: bool = True,
    timeout: float = 1800,
    tiny: bool = True,
) -> subprocess.CompletedProcess:
    """Run `snakemake` on `repo`'s Snakefile in `workdir`, with config.yaml, the tiny preset
    (unless `tiny` is false: the full demo) and `configs` (later files override earlier ones).
    Returns the finished process with stdout and stderr merged into `.stdout`; raises
    AssertionError with the log if `check` fails."""
    command = snakemake_command(workdir, *args, repo=repo, configs=configs, cores=cores, tiny=tiny)
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(command)}\n{proc.stdout[-8000:]}"
        )
    return proc


def parse_dry_run(output: str) -> Counter[Job]:
    """The jobs a dry run (`-n`) lists, as a Counter of (rule, wildcards) pairs.

    Each job block (`rule x:` / `localrule x:` and its indented fields) gives one job; the
    count per rule is checked against Snakemake's own `Job stats:` table, so a change in the
    listing's format fails loudly instead of silently dropping jobs."""
    jobs: Counter[Job] = Counter()
    rule = None
    wildcards = ""
    lines = output.splitlines()
    for line in lines + [""]:
        header = _JOB_HEADER.match(line)
        field = _JOB_FIELD.match(line) if rule else None
        if field:
            if field.group(1) == "wildcards":
                wildcards = field.group(2).strip()
            continue
        if rule:
            jobs[(rule, wildcards)] += 1
            rule, wildcards = None, ""
        if header:
            rule = header.group(1)
    stats = _job_stats(lines)
    by_rule = Counter(name for name, _ in jobs.elements())
    if stats != dict(by_rule):
        raise AssertionError(f"dry-run job listing {dict(by_rule)} != Job stats {stats}")
    return jobs


def job_fields(output: str) -> dict[Job, dict[str, str]]:
    """The fields of each job of a dry run's listing (`reason`, `threads`, `resources`, ...),
    by (rule, wildcards)."""
    jobs, rule, fields = {}, None, {}
    for line in output.splitlines() + [""]:
        field = _JOB_FIELD.match(line) if rule else None
        if field:
            fields[field.group(1)] = field.group(2).strip()
            continue
        if rule:
            jobs[(rule, fields.get("wildcards", ""))] = fields
            rule, fields = None, {}
        header = _JOB_HEADER.match(line)
        if header:
            rule = header.group(1)
    return jobs


def job_reasons(output: str) -> dict[Job, str]:
    """The `reason:` Snakemake gives for each job of a dry run's listing, by (rule, wildcards)."""
    return {job: fields.get("reason", "") for job, fields in job_fields(output).items()}


def job_resources(fields: dict[str, str]) -> dict[str, str]:
    """A job's `resources:` field (`job_fields`) as {name: value}."""
    return dict(pair.split("=", 1) for pair in fields.get("resources", "").split(", ") if pair)


def _job_stats(lines: list[str]) -> dict[str, int]:
    """Snakemake's `Job stats:` table as {rule: count}; {} when nothing is to be done."""
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        if not any("Nothing to be done" in line for line in lines):
            raise AssertionError("dry run printed neither 'Job stats:' nor 'Nothing to be done'")
        return {}
    stats = {}
    for line in lines[start + 1 :]:
        row = _STATS_ROW.match(line.strip())
        if not row:
            continue
        if row.group(1) == "total":
            return stats
        stats[row.group(1)] = int(row.group(2))
    raise AssertionError("unterminated 'Job stats:' table")


def scheduled_jobs(workdir: Path, *targets: str, **kwargs) -> Counter[Job]:
    """The jobs `snakemake -n [targets]` would run in `workdir` (kwargs as for `snakemake`)."""
    proc = snakemake(workdir, "--dry-run", *targets, **kwargs)
    return parse_dry_run(proc.stdout)


def rule_counts(jobs: Counter[Job]) -> dict[str, int]:
    """{rule: number of jobs} of a `scheduled_jobs` result."""
    return dict(Counter(rule for rule, _ in jobs.elements()))


def wildcard_values(jobs: Counter[Job], rule: str, key: str) -> set[str]:
    """The values wildcard `key` takes over the scheduled jobs of `rule`."""
    values = set()
    for name, wildcards in jobs:
        if name != rule:
            continue
        pairs = dict(pair.split("=", 1) for pair in wildcards.split(", ") if pair)
        values.add(pairs[key])
    return values


@dataclass
class Run:
    """A finished tiny pipeline run: the repository copy it ran from, its workdir, its cache."""

    repo: Path
    workdir: Path
    cache: Path
    seconds: float

    @property
    def env(self) -> dict:
        return {"SNAKEMAKE_OUTPUT_CACHE": str(self.cache)}


def write_region_image(folder: Path, workdir: Path) -> Path:
    """tiled.tif in `folder`: 256 x 256 px (64 px TIFF tiles) of the first test image of the run
    in `workdir`, repeated; `FOUR_REGIONS` splits it into 4 regions."""
    folder.mkdir(exist_ok=True)
    test = read_image(sorted((workdir / "results" / "demo" / "test_release").glob("*.tif"))[0])
    repeat = -(-256 // min(test.shape[:2]))
    path = folder / "tiled.tif"
    tifffile.imwrite(path, np.tile(test, (repeat, repeat, 1))[:256, :256], tile=(64, 64), photometric="rgb")
    return path
