"""The GPU worker: loaded pipelines with steering attached, consuming the RQ queues."""
