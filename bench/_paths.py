"""Import fix for the bench scripts: `bench/ingest.py` is named like the `ingest` package, and a
script's own folder comes first on sys.path. Importing this module drops bench/ from sys.path
so that `import ingest` finds the package. Import it before anything from saedb or ingest."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
