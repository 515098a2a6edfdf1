"""The ingester: verify Wazza webhooks, publish the raw bytes to Kafka, answer after the ack."""
