"""Benchmarks: ``python -m agentcore.bench <name>`` runs ``agentcore.bench.<name>.main(argv)``.

Each benchmark prints one JSON object per figure and measures its peer in the same run
(see the project's BENCHMARKS.md for the figures and targets).
"""
