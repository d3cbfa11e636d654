"""File > Save on a Labels layer offers the plugin's writers first (provenance sidecar, spacing).

napari's save dialog lists the compatible npe2 writers (``PluginManager.iter_compatible_writers``)
and preselects the first; napari's own labels writer registers before any plugin, and npe2 sorts
writers only by "has extensions" and "how many layer types", then by registration order. So a person
saving MedSAM labels would get a plain TIFF without the provenance sidecar (reopened as an Image
layer).

No public route exists (checked on npe2 0.10.0 / napari 0.9.2): npe2 has no writer priority in
the manifest or the API (npe2 issue 129 only fixed the order *within* one plugin's manifest);
napari's ``settings.plugins.extension2writer`` is defined but never read by the save dialog;
unregistering and re-registering napari's own manifest would move its readers and commands too.
So, once the MedSAM widget is opened, this module moves the plugin's writer entries to the front
of npe2's private writer index (``PluginManager.instance()._contrib._writers``), the one private
name used, only here. If npe2's internals change, nothing breaks: the plugin's writers stay
listed (second), ``prefer_own_writers`` returns False and a debug message says so;
tests/napari/test_widget_person.py checks the real dialog's preselected filter.
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
