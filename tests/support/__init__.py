"""What the tests (and the benches) use to run real services: MariaDB, RabbitMQ, consumers,
the face API, a fake Nominatim, and helpers that read the database."""
