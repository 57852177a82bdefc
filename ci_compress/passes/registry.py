"""The pass registry: one table maps config names to pass modules.

Adding a pass: write ``passes/<name>.py`` with ``Config`` and ``apply``, add one line
here. The config loader, the JSON Schema and the contract tests all read this table.
"""

from __future__ import annotations

from ci_compress.passes import cluster, distill, lowrank, prune, quantize
from ci_compress.passes.base import PassModule

PASSES: dict[str, PassModule] = {
    "cluster": cluster,
    "distill": distill,
    "lowrank": lowrank,
    "prune": prune,
    "quantize": quantize,
}
