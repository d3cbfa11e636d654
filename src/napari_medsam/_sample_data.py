"""npe2 sample data: the real DSB2018 nuclei crop shipped in medsam_core (see its sample_data/README.md)."""

from __future__ import annotations


def nuclei_sample() -> list[tuple]:
    """[(image (256, 256) uint16, {"name": "nuclei (DSB2018)"}, "image")]."""
    from medsam_core.samples import nuclei

    s = nuclei()
    return [(s.image, {"name": "nuclei (DSB2018)"}, "image")]


def nuclei_sample_with_reference() -> list[tuple]:
    """The nuclei image plus its 25 manual reference labels (for checking results by eye)."""
    from medsam_core.samples import nuclei

    s = nuclei()
    return [
        (s.image, {"name": "nuclei (DSB2018)"}, "image"),
        (s.labels, {"name": "nuclei reference labels", "opacity": 0.4}, "labels"),
    ]
