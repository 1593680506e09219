"""`python -m harness.analysis experiment_name=<name> [parent_run_id=<sweep>] [targets_ms=[1,10]] ...`"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from harness.analysis import load_analysis_config, run_analysis
from harness.core.conf import config_dir
from harness.core.errors import ConfigError
from harness.core.overrides import refuse_unknown_keys


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="analysis")
def main(cfg: DictConfig) -> None:
    try:
        run_analysis(load_analysis_config(cfg))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    refuse_unknown_keys(sys.argv[1:], "analysis")
    main()
