"""``python -m ember.serve REPOSITORY``: the same as ``ember serve``."""
import sys

from ember.serve.cli import main

sys.exit(main())
