"""Operator tools behind the ``export-worker`` commands ``jobs``, ``replay``, ``dlq``,
``pause``/``resume``/``paused``: read the topics, plan and re-publish records.

    kafkaio.py      quiet clients, fast "is the broker there", offsets, range scans
    partitioner.py  Kafka's murmur2 partitioner (find a key's partition)
    timeparse.py    TIME (ISO 8601 or -24h) and P:O arguments
    run.py          what a run reports: outcomes, the run report, progress hooks
    states.py       the latest job states in export.jobs (the restore's reader); job filters
    lineage.py      jobs list / jobs show (export.jobs, export.status, export.files)
    predict.py      what the worker would do with a request (ingest + engine rules)
    checkpoint.py   resumable runs
    replay.py       the shared replay machinery and ``replay`` of export.requests
    dlq.py          dlq list / dlq replay
    pause.py        pause / resume / paused through the control topic
    render.py       rich tables, progress bars, JSON

Nothing here reads the environment; the CLI passes settings and options in.
"""
