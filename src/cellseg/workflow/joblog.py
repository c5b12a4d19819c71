"""Logging for workflow jobs: everything a job says goes to its Snakemake log file.

A bad-input error ends the job with one line naming the file or config key, on the console and
in the log, instead of a traceback; anything else keeps its traceback (in the log and on the
console) because it is a bug to report.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from cellseg.common.errors import ConfigError, DataError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def job_logging(log_path: str | Path) -> Iterator[logging.Logger]:
    """Send logging, warnings and stdout/stderr to `log_path` for the duration of a job."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console = sys.__stderr__
    with open(log_path, "a", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield logging.getLogger("cellseg")
        except (DataError, ConfigError) as error:
            message = f"ERROR: {error}"
            stream.write(message + "\n")
            print(message, file=console)
            raise SystemExit(1) from None
        except Exception:
            text = traceback.format_exc()
            stream.write(text)
            print(text, file=console)
            raise SystemExit(1) from None
        finally:
            root.removeHandler(handler)
