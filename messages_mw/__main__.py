"""``python -m messages_mw serve``: the same command as ``messages-mw``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
