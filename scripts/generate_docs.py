"""Write the generated pages of docs/ (`make docs`, `make dag`).

    python scripts/generate_docs.py [config] [rulegraph] [--check]

`config` writes config.yaml and docs/config.md from the schema (cellseg.workflow.generated_docs
`config_yaml`, `config_reference`); `rulegraph` writes
docs/rulegraph.dot (`snakemake --rulegraph` on the default config, normalised), from which
`make dag` renders docs/rulegraph.svg with Graphviz. No page named: both. `--check` writes
nothing and exits 1 when a page differs from what would be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cellseg.workflow.generated_docs import config_reference, config_yaml, run_rulegraph  # noqa: E402

PAGES = {
    "config": [(Path("config.yaml"), config_yaml), (Path("docs") / "config.md", config_reference)],
    "rulegraph": [(Path("docs") / "rulegraph.dot", run_rulegraph)],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", metavar="page", help=f"any of {', '.join(PAGES)} (default: all)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.pages) - set(PAGES))
    if unknown:
        parser.error(f"unknown page(s) {', '.join(unknown)}; choose from {', '.join(PAGES)}")
    stale = []
    for path, generate in (page for name in args.pages or list(PAGES) for page in PAGES[name]):
        text = generate(ROOT)
        target = ROOT / path
        current = target.read_text() if target.exists() else None
        if args.check:
            if current != text:
                stale.append(str(path))
        elif current != text:
            target.write_text(text)
            print(f"wrote {path}")
        else:
            print(f"{path} is up to date")
    if stale:
        print(f"stale: {', '.join(stale)}; run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
