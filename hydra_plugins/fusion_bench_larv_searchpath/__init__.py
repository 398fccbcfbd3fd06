"""Hydra SearchPathPlugin that makes fusion-bench-larv's configs visible to ``fusion_bench``.

FusionBench has no plugin mechanism. Hydra discovers every ``SearchPathPlugin`` in the
``hydra_plugins`` namespace package, so installing this package is enough: every
``fusion_bench`` call (from any directory, editable or not) then finds ``method=larv_*``,
``modelpool=clip-vit-*`` and ``modelpool=tinyclip_synth*``.

What it does to the search path:

- FusionBench's own config folder is the primary one (the usual case): our package
  ``pkg://fusion_bench_larv_config`` goes in FRONT of it. Its names do not clash with
  FusionBench's except ``fabric_model_fusion.yaml``, which is FusionBench's primary config with
  ``modelpool`` moved after ``taskpool`` in the defaults list, so that a model-pool alias can
  select its task pool (Hydra lets a config override only groups listed before it).
- Any other primary folder (this repository's ``config/``, which is the same package, or a
  user's own ``config/``): our package and FusionBench's (``pkg://fusion_bench_config``) are
  APPENDED, so the user's primary config keeps priority and FusionBench's groups stay
  reachable (the ``fusion_bench`` CLI drops FusionBench's folder when ``$CWD/config`` exists).

Importing this module also registers the ``${larv.job_log_dir:...}`` resolver that our primary
config's ``path.log_dir`` uses (:mod:`fusion_bench_larv.runs.sweep`), so that it exists before any
config is resolved, including ``fusion_bench --cfg job --resolve``.
"""

import os
from importlib.util import find_spec

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

import fusion_bench_larv.runs.sweep  # noqa: F401  (registers the larv.job_log_dir resolver)

LARV_CONFIG_PACKAGE = "pkg://fusion_bench_larv_config"
FUSION_BENCH_CONFIG_PACKAGE = "pkg://fusion_bench_config"


def _fusion_bench_config_dir():
    spec = find_spec("fusion_bench_config")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def _is_fusion_bench_primary(search_path: ConfigSearchPath) -> bool:
    fusion_bench_dir = _fusion_bench_config_dir()
    for element in search_path.get_path():
        if element.provider == "main" and element.path is not None:
            path = element.path
            if path.startswith("pkg://"):
                return path == FUSION_BENCH_CONFIG_PACKAGE
            # file paths may be given with or without the "file://" scheme
            if path.startswith("file://"):
                path = path[len("file://") :]
            return os.path.realpath(path) == fusion_bench_dir
    return False


class FusionBenchLARVSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if _is_fusion_bench_primary(search_path):
            search_path.prepend(provider="fusion-bench-larv", path=LARV_CONFIG_PACKAGE)
        else:
            search_path.append(provider="fusion-bench-larv", path=LARV_CONFIG_PACKAGE)
            search_path.append(provider="fusion-bench", path=FUSION_BENCH_CONFIG_PACKAGE)
