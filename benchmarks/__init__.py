"""The benchmark harness of metaopt (not part of the installed package).

Layout:

* :mod:`benchmarks.settings` -- :class:`~benchmarks.settings.BenchSettings` (what a run measures), the presets and
  the command line generated from the dataclass;
* :mod:`benchmarks.baseline` -- TorchOpt-style reference implementations of the meta-iteration and their checks
  against metaopt (identical math on common random numbers; a statistical check for the as-written example);
* :mod:`benchmarks.flops` -- the analytic FLOP count of a meta-iteration and the machine's matmul rate;
* :mod:`benchmarks.harness` -- timing, memory measurement in child processes (Unix) and the run loop;
* :mod:`benchmarks.report` -- stamp (git commit, device, threads, versions), targets, markdown and JSON;
* ``benchmarks/run.py`` -- the entry point: ``python benchmarks/run.py [--quick] [--out DIR] ...``.
"""
