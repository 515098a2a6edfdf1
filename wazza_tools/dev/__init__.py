"""The system run locally: the dev stack, the local brokers (Apache Kafka, Tansu), topics."""
