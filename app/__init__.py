"""The HTTP service: validation, tenants, job records, the queue, storage and metrics."""
