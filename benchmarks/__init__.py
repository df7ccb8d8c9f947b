"""Benchmarks, run from the repository root: ``python -m benchmarks.latency`` (latency on real
speech, see docs/latency.md), ``python -m benchmarks.tracer_overhead`` (what the tracer costs)
and ``python -m benchmarks.barge_in`` (interruptions)."""
