"""The NATS layer: names (`subjects`), the JetStream topology (`topology`), connecting
(`connect`), retries (`retry`), complete reads of a bucket (`reading`) and library fixes
(`nats_fixes`). Import the names from here."""

from shared.bus import reading as reading
from shared.bus.connect import connect as connect
from shared.bus.connect import nats_password as nats_password
from shared.bus.connect import servers as servers
from shared.bus.connect import tls_context as tls_context
from shared.bus.retry import OUTAGE_S as OUTAGE_S
from shared.bus.retry import TRANSIENT as TRANSIENT
from shared.bus.retry import WRITE_TIMEOUT_S as WRITE_TIMEOUT_S
from shared.bus.retry import Sent as Sent
from shared.bus.retry import confirm as confirm
from shared.bus.retry import retry as retry
from shared.bus.retry import retry_forever as retry_forever
from shared.bus.retry import send as send
from shared.bus.retry import transient as transient
from shared.bus.subjects import *  # noqa: F403  (every name, re-exported)
from shared.bus.topology import Buckets as Buckets
from shared.bus.topology import bucket as bucket
from shared.bus.topology import ensure_consumer as ensure_consumer
from shared.bus.topology import ensure_streams as ensure_streams
from shared.bus.topology import ensure_topology as ensure_topology
from shared.bus.topology import ensure_work_consumers as ensure_work_consumers
