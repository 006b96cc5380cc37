"""``python -m worker.embedded``: fetch the Apache Kafka jars into the cache (once)."""

from worker.embedded.broker import KAFKA_VERSION, BrokerError, fetch_jars

if __name__ == "__main__":
    try:
        libs = fetch_jars(KAFKA_VERSION)
    except BrokerError as exc:
        raise SystemExit(str(exc)) from None
    print(f"Apache Kafka {KAFKA_VERSION} jars: {libs}")
