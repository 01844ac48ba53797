"""``python -m kvmlab.fake``: the same program as the ``kvmlab-fake-kvm`` script."""

from __future__ import annotations

import sys

from kvmlab.fake import main

if __name__ == "__main__":
    sys.exit(main())
