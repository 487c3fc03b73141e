"""`python -m mtdnn.distill ...` = `python -m mtdnn.train distill=ensemble ...`."""

import sys

from mtdnn import train


def main() -> None:
    if not any(a.startswith("distill=") for a in sys.argv[1:]):
        sys.argv.insert(1, "distill=ensemble")
    train.main()


if __name__ == "__main__":
    main()
