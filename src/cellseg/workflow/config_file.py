"""The workflow's own config file, read before Snakemake reads it.

Snakemake's error for a YAML syntax error names neither the file nor the line; this check
runs first and does. Imports no torch.
"""

from pathlib import Path

import yaml

from cellseg.common.errors import ConfigError


def check_yaml_syntax(path: str | Path) -> None:
    """Raise `ConfigError` naming `path` and the line of its first YAML syntax error; a file
    that does not exist is Snakemake's to report."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from None
