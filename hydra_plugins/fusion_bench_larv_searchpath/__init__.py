"""Hydra SearchPathPlugin that makes fusion-bench-larv's configs visible to ``fusion_bench``.

FusionBench has no plugin mechanism. Hydra discovers every ``SearchPathPlugin`` in the
``hydra_plugins`` namespace package, so installing this package is enough: every
``fusion_bench`` call (from any directory, editable or not) then finds ``method=larv_*``,
``modelpool=clip-vit-*`` and ``modelpool=tinyclip_synth*``.

Two entries are appended (appended paths lose name clashes, and our names do not clash):

- ``pkg://fusion_bench_larv_config``: our configs (the repository's ``config/`` folder).
- ``pkg://fusion_bench_config``: FusionBench's own configs. The ``fusion_bench`` CLI takes
  ``$CWD/config`` as its primary config dir when it exists (e.g. in this repository's root);
  FusionBench's configs are then not on the search path at all, so we add them back. When
  FusionBench's folder is already primary the duplicate entry is harmless.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

LARV_CONFIG_PACKAGE = "pkg://fusion_bench_larv_config"
FUSION_BENCH_CONFIG_PACKAGE = "pkg://fusion_bench_config"


class FusionBenchLARVSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="fusion-bench-larv", path=LARV_CONFIG_PACKAGE)
        search_path.append(provider="fusion-bench", path=FUSION_BENCH_CONFIG_PACKAGE)
