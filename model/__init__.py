"""Everything inference needs (`mambaserve.model`): the network, checkpoint I/O, tokenizer, features,
search, the compiled decode step and the in-process `Recognizer`. Imports the contract and the kernels.

MKL's strict conditional numerical reproducibility is switched on here (unless the environment says
otherwise): without it MKL picks a different kernel for a one-row product than for a many-row one on
AVX-512 machines, so a sequence's last bits would depend on what else shares its batch. MKL reads the
setting at its first call, so importing this package before any MKL work is enough.
"""

import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
