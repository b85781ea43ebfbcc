"""``python -m app.batch``: the old name of ``python -m batch``, kept for one release."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from batch.__main__ import main

    print("note: 'python -m app.batch' is now 'python -m batch'", file=sys.stderr)
    sys.exit(main())
