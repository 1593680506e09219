"""Performance checks that print figures and ratios (run as `python -m benchmarks.<name>`).

These are not tests: machines are noisy, so each figure is a median over interleaved repetitions
(A B A B ...) measured side by side in one run, and each script writes its figures as JSON under
`results/benchmarks/` for comparison across commits. docs/performance.md lists the latest figures.
"""
