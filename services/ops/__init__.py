"""`copytrade`, the command line: runs the services and the operator tools over NATS."""
