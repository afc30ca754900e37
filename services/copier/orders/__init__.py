"""Mirroring a master's resting orders (a subscription's `orders: {mode: orders}`): each master
limit, stop-loss or take-profit order becomes one linked resting order per follower, amended and
cancelled with it, in the order a master event meets it:

mirroring -> the copier's door: an order event, a master fill offered, the background sweep
events    -> new / amend / cancel, per follower
sizing    -> the follower's size (the sizer, through an internal signal) and the venue's tick
sides     -> when one side filled first: chase or cancel, keep or unwind; no fill copied twice
intents   -> a written intent carried out (place, cancel-then-place), by whoever finds it
sweep     -> orphans cancelled, linked fills applied to the ledger once, intents resumed
links     -> one KV record per (follower, master order): the follower order and its story
room      -> what they share: policy, ledger, outcomes, the venue steps on linked orders
"""
