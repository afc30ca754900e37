"""The project's own error hierarchy. Vendor exceptions are translated into these at the edge.

Callers decide by class, never by message text: only `TemporaryError` is retried.
"""


class CopytradeError(Exception):
    """Base of every error copytrade raises on purpose."""

    reason_code = "error"


class ConfigError(CopytradeError):
    """A config file, environment variable or secret is missing or invalid."""

    reason_code = "config_error"


class ExchangeError(CopytradeError):
    """An exchange refused or failed a request."""

    reason_code = "exchange_error"


class TemporaryError(ExchangeError):
    """Network trouble, 5xx, timeout: retry with backoff (look the order up first)."""

    reason_code = "temporary_error"


class RateLimited(TemporaryError):
    reason_code = "rate_limited"


class InsufficientFunds(ExchangeError):
    reason_code = "insufficient_balance"


class InvalidOrder(ExchangeError):
    """The venue rejected the order itself (size, minimum, precision)."""

    reason_code = "invalid_order"


class BelowMinimum(InvalidOrder):
    reason_code = "below_exchange_minimum"


class UnsupportedSymbol(ExchangeError):
    reason_code = "unsupported_symbol"


class AuthError(ExchangeError):
    """Bad, revoked or under-privileged API key: never retried."""

    reason_code = "auth_error"
