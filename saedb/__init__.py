"""saedb: SAE embeddings of text corpora, stored and analysed in DuckDB.

    import saedb
    store = saedb.open("demo.duckdb")
    store.sql("SELECT * FROM diff('computers', 'people') LIMIT 10")

This package never imports torch; ingestion (``store.ingest``) loads the ``ingest`` package,
which needs the ``ingest`` extra.
"""

from saedb.errors import SaedbError
from saedb.store import SaeRecord, Store, open

__all__ = ["SaeRecord", "SaedbError", "Store", "open", "__version__"]
__version__ = "0.1.0"
