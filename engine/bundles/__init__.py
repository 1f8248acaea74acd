"""Runtime bundles: the runtime and its dependencies as wheels, per device target, signed.

``build_bundles`` writes them (`engine runtime bundle`); ``list_bundles`` reads
what a directory of bundles holds (`engine serve`). The bundle format and its
verification live in ``states.bundle``, shared with the device side.
"""

from engine.bundles.build import BuildOptions, BuiltBundle, build_bundles
from engine.bundles.catalog import BundleSummary, bundle_file, list_bundles
from engine.bundles.targets import Target, TargetError, local_target, parse_target

__all__ = [
    "BuildOptions",
    "BuiltBundle",
    "BundleSummary",
    "Target",
    "TargetError",
    "build_bundles",
    "bundle_file",
    "list_bundles",
    "local_target",
    "parse_target",
]
