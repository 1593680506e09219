"""The torch-free contract every other layer builds on (docs/architecture.md).

- `errors`: `ConfigError`, the one exception for a config value that cannot work; it carries the key.
- `schema`: the typed run configuration (`RunConfig` and its sections, `TrackingConfig`) and `typed`,
  which turns a YAML node into its dataclass and checks it, naming the key of any error.
- `conf`: where the Hydra config tree is (the one place defaults live) and `compose` for code.
- `spec`: the framework-neutral workload spec (`WorkloadSpec`, the Criteo shapes).
- `keys`: a run's identity (`run_key`) and its trained model's (`quality_key`).
- `zipf`: the bounded Zipf law ids follow (the generator samples it, the cost model integrates it).
- `host`: this machine's CPU and memory, read from /proc and sysconf.

Nothing here imports torch, mlflow or another layer of the harness.
"""
