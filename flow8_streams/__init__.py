"""flow8-streams: an event-sourced workflow engine; embedded on SQLite, distributed on Kafka + MongoDB."""

__version__ = "0.1.0"
