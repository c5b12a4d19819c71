"""Run named config variants of the pipeline on one dataset and tabulate their scores.

Each variant runs the whole pipeline in its own work directory (`OUT/<variant>/`), from one
snapshot of the repository's code taken when the benchmark starts (`OUT/repo/`), so that edits
made while it runs cannot change what it measures; `--keep-snapshot` runs more variants from
an earlier snapshot, adding rows to its table. All variants share one Snakemake output
cache (`OUT/cache/`, `--cache`): the split, maps and tiles are computed once, and a variant
whose training settings equal an earlier one's (a tuning-only variant, say) takes the trained
folds from the cache.

The config of a variant is `config.yaml`, then every `--config` file in order, then the
variant's overrides from the `--variants` file (a mapping of name -> overrides; sections are
merged key by key). Relative data paths in the `--config` files are resolved from the folder
the benchmark is started in, as `snakemake` would resolve them there.

Per variant it reports, on the test set (`test_scores.tsv`): the tuned ensemble's mask AP,
AP50 at 100 detections (the leaderboard's number), PQ, AJI and the `--rare-class`'s AP50@100
("tuned" is the `leaderboard` operating point, the one tuned for AP); the cells point's PQ,
bPQ, mPQ and count ratio (found / true cells: what segment counts); the validation AP50@100 of
the tuned ensemble and of the best single fold; and the wall time. The table is printed, and
written to `OUT/table.md` and `OUT/results.tsv` after each variant.

With `--class-agnostic` it reports the class-agnostic test scores instead
(`test_scores_agnostic.tsv`), as a cross-dataset benchmark needs (a model trained on one
dataset, tested on another's test set: `data.test_path`): AP50@100 and AP of each fold, of the
ensemble and of the tuned ensemble (`leaderboard` point), the spread between the folds (best
minus worst), the cells point's PQ, bPQ and count ratio, and the tuned ensemble's
class-agnostic validation AP50@100 on the training dataset.

Score tables written by code from before the two operating points (an `OUT/repo` kept with
`--keep-snapshot`) name the leaderboard point `tuned` and have no cells point: their cells
columns are empty.

    .venv/bin/python benchmarks/ablation.py \\
        --config benchmarks/ablation/consep.yaml benchmarks/ablation/cpu_budget.yaml \\
        --variants benchmarks/ablation/rare_class.yaml --rare-class class1 \\
        --out ablation/consep --cores 2 [--only baseline,all]
    .venv/bin/python benchmarks/ablation.py \\
        --config benchmarks/ablation/monuseg_to_consep.yaml benchmarks/ablation/cpu_budget.yaml \\
        --variants benchmarks/ablation/stain.yaml --class-agnostic --out ablation/monuseg_to_consep --cores 2
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "results", "logs", "resources", ".snakemake", "__pycache__", ".pytest_cache",
    "*.egg-info", "ablation",
)  # fmt: skip
DATA_PATH_KEYS = ("path", "train_json", "image_dir", "test_json", "test_image_dir", "test_gt", "test_path")


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` merged in: mappings key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_configs(paths: list[Path], start: Path) -> dict:
    """The `--config` files merged in order, with relative data paths made absolute from `start`."""
    config: dict = {}
    for path in paths:
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    data = config.get("data", {})
    for key in DATA_PATH_KEYS:
        if data.get(key) and not Path(data[key]).is_absolute():
            data[key] = str((start / data[key]).resolve())
    return config


def snapshot_repo(out: Path) -> tuple[Path, str]:
    """A copy of the checkout's code under `out/repo`, and the commit it was taken from."""
    repo = out / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(ROOT, repo, ignore=SNAPSHOT_IGNORE, symlinks=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)  # fmt: skip
    commit = (head.stdout.strip() or "unknown") + ("+uncommitted changes" if dirty.stdout.strip() else "")
    (repo / "SNAPSHOT").write_text(commit + "\n")
    return repo, commit


def run_variant(repo: Path, workdir: Path, config: dict, cache: Path, cores: int) -> float:
    """Run the pipeline for one variant; the wall time in seconds. Raises on failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "variant.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [
        str(SNAKEMAKE), "--snakefile", str(repo / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(repo / "config.yaml"), str(config_path), "--cores", str(cores), "--cache",
    ]  # fmt: skip
    start = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as log:
        # The snapshot's library, also where the venv has the checkout's installed (editable).
        pythonpath = os.pathsep.join(filter(None, [str(repo / "src"), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "SNAKEMAKE_OUTPUT_CACHE": str(cache), "PYTHONPATH": pythonpath}
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"variant in {workdir} failed (exit {proc.returncode}); see {workdir / 'snakemake.log'}")
    return seconds


def ensemble_at(table: pd.DataFrame, point: str) -> pd.Series:
    """The ensemble's row of a score table at the operating point `point` (`leaderboard`, also
    found as `tuned`, its name before the two points; `cells`); a row of NaN when absent."""
    ensemble = table[table["model"] == "ensemble"]
    for name in (point, "tuned") if point == "leaderboard" else (point,):
        rows = ensemble[ensemble["thresholds"] == name]
        if len(rows):
            return rows.iloc[0]
    return pd.Series(float("nan"), index=table.columns)


def cells_columns(test: pd.DataFrame, metrics: tuple[str, ...]) -> dict:
    """The cells point's test scores `metrics` (count_ratio as "count ratio")."""
    cells = ensemble_at(test, "cells")
    return {f"test cells {metric.replace('_', ' ')}": cells[metric] if metric in cells else float("nan")
            for metric in metrics}  # fmt: skip


def variant_row(name: str, workdir: Path, seconds: float, rare_class: str) -> dict:
    """One table row from a finished variant's score tables."""
    test = pd.read_csv(workdir / "results" / "evaluate" / "test_scores.tsv", sep="\t")
    val = pd.read_csv(workdir / "results" / "evaluate" / "scores.tsv", sep="\t")
    tuned, val_tuned = ensemble_at(test, "leaderboard"), ensemble_at(val, "leaderboard")
    val_folds = val[val["model"].str.startswith("fold")]
    test_folds = test[test["model"].str.startswith("fold")]
    return {
        "variant": name,
        "test AP": tuned["AP"],
        "test AP50@100": tuned["AP50@100"],
        "test PQ": tuned["PQ"],
        "test AJI": tuned["AJI"],
        f"test {rare_class} AP50@100": tuned[f"AP50@100_{rare_class}"],
        "test folds AP50@100": " / ".join(f"{v:.3f}" for v in test_folds["AP50@100"]),
        "val AP50@100": val_tuned["AP50@100"],
        "val best fold AP50@100": val_folds["AP50@100"].max(),
        **cells_columns(test, ("PQ", "bPQ", "mPQ", "count_ratio")),
        "wall min": seconds / 60,
    }


def agnostic_row(name: str, workdir: Path, seconds: float) -> dict:
    """One table row from a finished variant's class-agnostic score tables."""
    test = pd.read_csv(workdir / "results" / "evaluate" / "test_scores_agnostic.tsv", sep="\t")
    val = pd.read_csv(workdir / "results" / "evaluate" / "scores_agnostic.tsv", sep="\t")
    default, tuned = ensemble_at(test, "default"), ensemble_at(test, "leaderboard")
    folds = test[test["model"].str.startswith("fold")]
    row = {"variant": name}
    for metric in ("AP50@100", "AP"):
        row[f"test ensemble {metric}"] = default[metric]
        row[f"test tuned {metric}"] = tuned[metric]
        row[f"test folds {metric}"] = " / ".join(f"{v:.3f}" for v in folds[metric])
        row[f"fold spread {metric}"] = folds[metric].max() - folds[metric].min()
    # class-agnostic mPQ equals bPQ
    row.update(cells_columns(test, ("PQ", "bPQ", "count_ratio")))
    return {**row, "val tuned AP50@100": ensemble_at(val, "leaderboard")["AP50@100"], "wall min": seconds / 60}


def markdown(rows: list[dict]) -> str:
    table = pd.DataFrame(rows)
    header = "| " + " | ".join(table.columns) + " |"
    lines = [header, "|" + " --- |" * len(table.columns)]
    for _, row in table.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float) and key != "wall min" else
                 f"{v:.1f}" if isinstance(v, float) else str(v) for key, v in row.items()]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", type=Path, required=True, help="dataset and budget override files")
    parser.add_argument("--variants", type=Path, required=True, help="YAML: variant name -> config overrides")
    parser.add_argument("--only", default=None, help="comma-separated variants to run (default: all, in file order)")
    parser.add_argument("--rare-class", default="class1", help="class whose AP50@100 gets its own column")
    parser.add_argument(
        "--class-agnostic", action="store_true",
        help="report class-agnostic test scores per fold and ensemble, and the fold spread (cross-dataset runs)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("ablation"), help="work directories, cache and table")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--keep-snapshot", action="store_true",
        help="reuse OUT/repo from an earlier run (its cache entries stay valid) instead of a new snapshot",
    )  # fmt: skip
    args = parser.parse_args()

    variants = yaml.safe_load(args.variants.read_text())
    names = args.only.split(",") if args.only else list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        parser.error(f"--only: unknown variants {unknown}; {args.variants} defines {list(variants)}")
    base = load_configs(args.config, Path.cwd())
    out = args.out.resolve()
    (out / "cache").mkdir(parents=True, exist_ok=True)
    if args.keep_snapshot:
        repo, commit = out / "repo", (out / "repo" / "SNAPSHOT").read_text().strip()
    else:
        repo, commit = snapshot_repo(out)
    print(f"code: {commit}; configs: {', '.join(map(str, args.config))}; variants: {args.variants}", flush=True)
    rows = [] if not args.keep_snapshot or not (out / "results.tsv").exists() else \
        pd.read_csv(out / "results.tsv", sep="\t").query("variant not in @names").to_dict("records")
    for name in names:
        seconds = run_variant(repo, out / name, merge(base, variants[name]), out / "cache", args.cores)
        if args.class_agnostic:
            rows.append(agnostic_row(name, out / name, seconds))
        else:
            rows.append(variant_row(name, out / name, seconds, args.rare_class))
        table = markdown(rows)
        (out / "table.md").write_text(f"code: {commit}\n\n{table}\n")
        pd.DataFrame(rows).to_csv(out / "results.tsv", sep="\t", index=False)
        print(f"{name}: done in {seconds / 60:.1f} min\n{table}\n", flush=True)


if __name__ == "__main__":
    main()
