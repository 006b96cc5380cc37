"""Old name of ``worker.result_store``: removed once runtime imports result_store."""

from __future__ import annotations

from worker.result_store import FileResultStore, ResultStore, S3ResultStore, StoredArtifact, result_store_from_url

__all__ = ["FileResultStore", "ResultStore", "S3ResultStore", "StoredArtifact", "result_store_from_url"]
