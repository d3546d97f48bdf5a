"""The streams runtime: the engine hosted by faust agents on Kafka, state projected to MongoDB."""
