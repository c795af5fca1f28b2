"""The queue runtime: the consumer loop, its delivery rules, the broker, locks and leases, dedup
rows, failure records, idle tasks and metrics."""
