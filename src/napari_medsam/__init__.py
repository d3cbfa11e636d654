"""napari-medsam: box-prompt segmentation with MedSAM-family models in napari."""

__version__ = "0.1.0"
