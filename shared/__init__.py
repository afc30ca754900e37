"""Code the copytrade services share: wire schemas, config, NATS helpers, exchange port."""
