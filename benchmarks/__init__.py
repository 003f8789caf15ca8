"""hybridbus benchmarks, side by side with what a user would write instead.

Run them all with `python -m benchmarks.run` (`make bench`); one group alone with
`python -m benchmarks.run codec` (or `publish`, `fanout`). Results go to
`benchmarks/results/latest.json`; `docs/benchmarks.md` explains them.

These are measurements, never pass/fail tests: targets are reported, not
asserted. Modules:

- `harness`: timing, medians, the event loop, machine facts, the table, JSON.
- `samples`: the events every benchmark uses.
- `codec`: encode/decode of a ~1 KB event vs the `cloudevents` SDK.
- `publish`: acknowledged publishes/s, 100 concurrent publishers, vs a sqlite3 baseline.
- `fanout`: one topic to 1,000 subscribers, vs one asyncio.Queue per subscriber.
- `profile`: run one benchmark case under cProfile.
"""
