"""`python -m mtdnn.export RUN_DIR task=NAME out=DIR [format=...]`: see `mtdnn.export`."""

from __future__ import annotations

import sys

from mtdnn.core.commands import argv, cli_errors, parse_args
from mtdnn.export import ExportConfig, export


@cli_errors
def main() -> None:
    out = export(parse_args(ExportConfig, argv("run_dir")))
    print(f"wrote {out}")
    sys.exit(0)


if __name__ == "__main__":
    main()
