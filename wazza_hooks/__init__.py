"""The kernel the ingester and the consumers share: the record contract, configuration, logs,
periodic tasks and Kafka client settings. It imports nothing else of ours."""
