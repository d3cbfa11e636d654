"""Second-opinion 3D cases: other structures of the two MRI brains, built from the Debian package.

The 3D walk's defaults were chosen on ``../shared/data``'s two MRI files (colin27: pallidum, amygdala,
parahippocampal gyrus; macaque: 8 NeuroMaps regions). Whether they hold for structures nobody tuned
on is a separate question. This script cuts *other* labelled structures out of the same public
atlases, so that ``bench_3d.py --cases colin27-other macaque-other`` can answer it. These cases are
for checking only: a default is chosen on the dev files and then read here, never tuned here.

* ``colin27-other``: Colin27 T1 (``ch2.nii.gz``) with AAL's caudate, putamen, thalamus and
  hippocampus, left and right (AAL ids 71, 72, 73, 74, 77, 78, 37, 38 relabelled 1..8).
* ``macaque-other``: INIA19 T1 with NeuroMaps ids 8, 1008, 10, 1010, 37, 1037, 45, 1045 (the four
  lowest-numbered left/right pairs of 6k-19k voxels that the dev file does not use).

Same orientation, dtype and spacing as the dev files (checked: the dev files' image and labels are
reproduced exactly from the same sources). Input: the templates folder of Debian's
``mricron-data`` (``apt-get download mricron-data && dpkg-deb -x mricron-data_*.deb x``, then
``x/usr/share/mricron/templates``); output: two ``.npz`` files in ``--out``.

    python make_check_volumes.py /tmp/mricron/x/usr/share/mricron/templates --out /tmp/medsam_check_volumes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEV = HERE.parent.parent / "shared" / "data"  # ../shared/data beside the repo

COLIN_OTHER = {71: "Caudate_L", 72: "Caudate_R", 73: "Putamen_L", 74: "Putamen_R",
               77: "Thalamus_L", 78: "Thalamus_R", 37: "Hippocampus_L", 38: "Hippocampus_R"}
COLIN_DEV = (75, 76, 41, 42, 39, 40)  # the dev file's AAL ids, in its label order
MACAQUE_OTHER = (8, 1008, 10, 1010, 37, 1037, 45, 1045)


def as_dev_axes(array: np.ndarray) -> np.ndarray:
    """RAS (x, y, z) NIfTI voxels -> the dev files' (z, y, x) with anterior at row 0."""
    return np.ascontiguousarray(np.flip(np.transpose(array, (2, 1, 0)), 1))


def relabel(atlas: np.ndarray, ids) -> np.ndarray:
    out = np.zeros(atlas.shape, np.int32)
    for i, k in enumerate(ids):
        out[atlas == k] = i + 1
    return out


def main() -> None:
    import nibabel as nib

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("templates", type=Path, help="mricron-data's templates folder")
    ap.add_argument("--out", type=Path, default=Path("/tmp/medsam_check_volumes"))
    args = ap.parse_args()
    t = args.templates
    args.out.mkdir(parents=True, exist_ok=True)

    def read(name, dtype):
        return as_dev_axes(np.asarray(nib.load(t / name).dataobj).astype(dtype))

    colin, aal = read("ch2.nii.gz", np.uint8), read("aal.nii.gz", np.int32)
    mac, maps = read("inia19-t1-brain.nii.gz", np.float32), read("inia19-NeuroMaps.nii.gz", np.int32)
    if (DEV / "mri_t1_colin27_aal_dev.npz").exists():  # the same sources and axes as the dev files
        with np.load(DEV / "mri_t1_colin27_aal_dev.npz") as d:
            assert np.array_equal(d["image"], colin) and np.array_equal(d["labels"], relabel(aal, COLIN_DEV))
        with np.load(DEV / "mri_t1_macaque_inia19_dev.npz") as d:
            assert np.array_equal(d["image"], mac)
            assert np.array_equal(d["labels"], relabel(maps, [int(i) for i in d["label_ids"]]))
    np.savez_compressed(args.out / "mri_t1_colin27_aal_other.npz", image=colin,
                        labels=relabel(aal, COLIN_OTHER), label_names=np.array(list(COLIN_OTHER.values())),
                        spacing=np.array([1.0, 1.0, 1.0]), modality="MRI T1")
    np.savez_compressed(args.out / "mri_t1_macaque_inia19_other.npz", image=mac,
                        labels=relabel(maps, MACAQUE_OTHER), label_ids=np.array(MACAQUE_OTHER),
                        spacing=np.array([0.5, 0.5, 0.5]), modality="MRI T1")
    print("wrote", *sorted(args.out.glob("*_other.npz")))


if __name__ == "__main__":
    main()
