"""Copying one signal for a set of followers, in the order it happens:

figures  -> each follower's account figures (cached, read with retries)
sizing   -> one sizer request per 1,000 followers: an order or a skip each
policy   -> the one gate every order passes (kill switch, state, equity limits, caps, dry-run)
claims   -> (signal, follower) claimed in JetStream KV before the order: exactly once
execute  -> claim -> place -> record, concurrently under the replica's limit
results  -> every outcome built and stored in the RESULTS stream
"""
