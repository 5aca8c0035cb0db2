"""Studies: spec, store, executors, runner, analysis and report."""
