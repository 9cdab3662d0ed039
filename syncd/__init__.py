"""syncd: Postgres logical replication to durable shape logs, served in Electric's protocol."""
