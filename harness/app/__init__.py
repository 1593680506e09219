"""The application: what a user runs (docs/architecture.md).

- `cli`: the Hydra app behind `python -m harness` (`-m` sweeps, `+backend=<name>`).
- `jobs`: one Hydra job's life: resume or skip, clear stale runs, run the work (in a child process
  when isolated), write its status.
- `worker`: the child process of an isolated job.
- `sweep`: the Hydra callback around a multirun: validate every job first, one parent run, a summary,
  then the analysis (and a serving study) of the experiment.
- `console`: what the terminal shows.
"""
