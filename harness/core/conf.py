"""The Hydra config tree (`conf/`), the only place defaults live, and composing it outside an app."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def config_dir() -> Path:
    """The Hydra config tree: `harness/conf` inside an installed wheel, else `conf/` of the checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Hydra config tree (config.yaml) in {package / 'conf'} or {package.parent / 'conf'}"
    )


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose the config tree outside a Hydra app (tests, benchmarks, notebooks, studies after a sweep)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app: its search path is ours
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
