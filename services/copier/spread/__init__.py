"""Spreading a signal over a copier group's replicas.

The replica that takes a signal (`WorkPlanner`) publishes one `WorkItem` per shard of the group's
followers to the WORK stream (`copytrade.work.<group>.<shard>`, Nats-Msg-Id "<signal>:<shard>")
and acks the signal once every item is stored. Each shard has its own durable consumer with one
item in hand at a time, so a shard's items run in signal order on whichever replica pulls them.
Every replica (`WorkRunner`) pulls the shards it owns (`replicas.py`) and runs each item through
the same executor as the direct path: claim -> place -> record, ack when the results are stored.
A replica that dies leaves its item unacked: after ack_wait it is redelivered to the shard's new
owner, whose claims recover what was already placed.
"""
