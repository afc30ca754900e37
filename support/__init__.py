"""Helpers the tests, the demo and the benchmarks share: a real nats-server, a local stack of
services. Development only: never imported by services/ or shared/."""
