"""`python -m harness.serving [serving=mprec_headline] [target_ms=10] [live.enabled=true] ...`"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from harness.core.conf import config_dir
from harness.core.overrides import refuse_unknown_keys
from harness.serving.run import main_cli


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="serving")
def main(cfg: DictConfig) -> None:
    code = main_cli(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    refuse_unknown_keys(sys.argv[1:], "serving")
    main()
