"""The exchange port (one Protocol) and its adapters: paper, ccxt venues, Alpaca."""
