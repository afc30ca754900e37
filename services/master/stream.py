"""The venue's private stream wakes the master's watchers: a fill or an order change reported on
the master account is read at once, not at the next poll (within the venue's push and one
read, where polling waits up to its interval). A fill the stream gives whole is handed to the
fill watcher, which publishes it without a read once that is safe (services.master.streamed);
otherwise the watchers stay the readers and the stream only says when
(`shared.exchange.port.Streaming`). While its subscription is confirmed and open, the
watchers' polls are only the fallback for what a reconnect may miss (every STREAMED_POLL_S), so
the account's rate-limit budget stays whole for the reads the stream wakes; before it is
subscribed, while it reconnects, or once it cannot start, they poll at their own pace."""

from __future__ import annotations

import logging

from services.master.order_watch import OrderWatcher
from services.master.watcher import FillWatcher, never
from shared.errors import CopytradeError
from shared.exchange.port import Fill, Streaming

log = logging.getLogger("copytrade.master.stream")


async def relay(account: Streaming, fills: FillWatcher, orders: OrderWatcher) -> None:
    """Wake the watchers on every change the stream reports, for as long as it runs."""
    fills.streamed = orders.streamed = lambda: account.subscribed  # polls slow while it is
    try:
        async for activity in account.activity():
            if isinstance(activity, Fill):
                fills.take(activity)  # published from the stream where it can be
            elif activity == "fill":
                fills.wake()
                orders.wake()  # a fill may change a resting order
            else:
                orders.wake()
    except CopytradeError as exc:
        log.warning("event=private_stream_unavailable error=%s: polling only", type(exc).__name__)
    except Exception:  # a bug: logged with its trace; the polls go on
        log.exception("event=private_stream_error: polling only")
    finally:
        fills.streamed = orders.streamed = never
