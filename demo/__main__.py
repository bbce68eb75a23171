"""`python -m mambaserve.demo` (what `make demo` runs)."""

import sys

from mambaserve.demo import main

sys.exit(main())
