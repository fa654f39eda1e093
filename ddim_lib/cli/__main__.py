"""``python -m ddim_lib.cli``: the ``ddim`` command."""
import sys

from . import main

sys.exit(main())
