"""`agentcore bench`: agentcore against raw nats-py on the same server, in the same run, as ratios.

measure.py holds the measuring code (also what benchmarks/ab.py runs against two installations), run.py runs it in
interleaved blocks on each event loop and summarises, report.py prints the table, compares two saved runs and renders
a saved run as Markdown (``python -m agentcore.bench.report FILE``).
"""
