"""File > Save on a Labels layer offers the plugin's writers first (provenance sidecar, spacing).

napari's save dialog lists the compatible npe2 writers in registration order and preselects the
first; napari's own labels writer registers before any plugin, so a person saving MedSAM labels
would get a plain TIFF without the provenance sidecar (reopened as an Image layer). npe2 has no
public priority for writers, so once the MedSAM widget is opened its writer contributions are
moved to the front of npe2's writer index. If npe2's internals change, nothing breaks: the
plugin's writers stay listed (second), and a debug message says so.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
PLUGIN = "napari-medsam"


def prefer_own_writers() -> bool:
    """Put this plugin's writers first in npe2's writer index; True when it did."""
    try:
        from npe2 import PluginManager

        index = PluginManager.instance()._contrib._writers  # (layer type, min, max, WriterContribution)
        ours = [entry for entry in index if entry[3].command.startswith(f"{PLUGIN}.")]
        if not ours:
            return False
        rest = [entry for entry in index if not entry[3].command.startswith(f"{PLUGIN}.")]
        index[:] = ours + rest
        return True
    except Exception as exc:  # noqa: BLE001 - a preference, never a reason to fail opening the widget
        log.debug("could not put the MedSAM writers first in File > Save: %s", exc)
        return False
