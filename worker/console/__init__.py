"""``export-worker console``: the operators' web console.

``follow`` reads the topics into ``index`` (SQLite); ``app`` serves the pages from it
and acts through ``worker.ops``; ``auth`` decides who may act; ``fleet`` adds the
consumer lag and the workers' ``/metrics``.
"""
