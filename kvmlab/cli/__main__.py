"""``python -m kvmlab.cli``: the same as the ``kvmlab`` command."""

import sys

from kvmlab.cli.app import main

sys.exit(main())
