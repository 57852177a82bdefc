from __future__ import annotations

from ci_compress.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
