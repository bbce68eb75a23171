"""Load tests, benchmarks and soak for a served mambaserve (locust users, perf_analyzer, reports).

Kept import-light: importing locust monkey-patches the process with gevent, so only
`mambaserve.loadtest.locustfile` and `mambaserve.loadtest.users.*` import it (they run inside the
locust subprocess started by `mambaserve.loadtest.run`).
"""

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
"""The source checkout: deploy/, benchmarks/, checkpoints/, data/ and .cache/ live there (they are not
package data; the clients' sample clips are, see `clips.SAMPLES_MANIFEST`)."""
