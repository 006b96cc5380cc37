"""A real single-node Apache Kafka (KRaft) for the demo, tests and CI."""

from worker.embedded.broker import KAFKA_VERSION, EmbeddedKafka, fetch_jars

__all__ = ["KAFKA_VERSION", "EmbeddedKafka", "fetch_jars"]
