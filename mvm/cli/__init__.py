"""mvmctl, the command line on top of the engine."""


def main() -> None:
    raise SystemExit(0)
