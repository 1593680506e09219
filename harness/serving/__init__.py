"""MP-Rec serving: path-selection policies, an open-loop simulator, and live serving under LoadGen.

    python -m harness.serving experiment_name=mprec target_ms=10        # simulate every policy
    python -m harness.serving serving=mprec_headline                    # the two-device headline study
    python -m harness.serving live.enabled=true                         # also serve for real (LoadGen)

- `config`: the typed config; `profiles`: what a path's latency and accuracy look like to a policy;
- `policies`: static, size threshold, MP-Rec (with slack), MP-Rec with splitting; `simulator`: the
  open-loop queueing simulation; `sizes`: query-size distributions;
- `study`: every policy over the same profiles, max load, the headline; `run`: a study from recorded
  runs, written and recorded (tag mprec.kind=serving);
- `live`: LoadGen's Server scenario against real adapters; `live_paths`: rebuild the measured paths here.
docs/serving.md.
"""

from harness.serving.config import ServingConfig
from harness.serving.run import load_serving_config, run_serving

__all__ = ["ServingConfig", "load_serving_config", "run_serving"]
