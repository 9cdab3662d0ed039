"""syncd: Postgres logical replication to durable shape logs, served in Electric's protocol."""

# The shape core decides, before any of this package's modules is imported, whether its compiled
# modules may run (shapes.compiled): some of them are in this package.
import shapes  # noqa: F401
