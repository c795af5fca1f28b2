"""photo-pipeline queue workers: Laravel jobs from RabbitMQ, processed in Python."""
