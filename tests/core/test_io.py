"""read_image / write_labels: round trips keep spacing and affine; bad files raise ImageError."""

from __future__ import annotations

import os
import warnings

import nibabel as nib
import numpy as np
import pytest
import tifffile

from medsam_core.errors import ImageError, OutputError
from medsam_core.io import ImageMeta, check_labels, label_dtype, read_image, write_labels


def volume(shape=(5, 12, 16), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, size=shape).astype(np.uint16)


def labels_like(shape):
    lab = np.zeros(shape, np.int64)
    lab[..., 2:6, 3:9] = 1
    lab[..., 7:10, 10:14] = 2
    return lab


# -- TIFF ----------------------------------------------------------------------------------------
def test_imagej_tiff_spacing_round_trip(tmp_path):
    img = volume()
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, img, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"})
    data, meta = read_image(src)
    np.testing.assert_array_equal(data, img)
    assert meta.axes == "ZYX"
    assert meta.spacing == pytest.approx((2.0, 0.5, 0.25))
    assert meta.unit == "um"
    assert meta.shape == img.shape

    out = write_labels(tmp_path / "lab.tif", labels_like(img.shape), meta)
    lab, lmeta = read_image(out)
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, labels_like(img.shape))
    assert lmeta.spacing == pytest.approx(meta.spacing)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert tif.pages[0].compression == 8  # zlib / deflate


def test_ome_tiff_physical_size(tmp_path):
    img = volume((3, 8, 10))
    src = tmp_path / "img.ome.tif"
    tifffile.imwrite(src, img, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4,
                                                    "PhysicalSizeZ": 1.5})
    _, meta = read_image(src)
    assert meta.spacing == pytest.approx((1.5, 0.4, 0.3))


def test_plain_tiff_without_spacing_is_unit_spacing_and_rgb_channels_last(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (10, 12, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    data, meta = read_image(tmp_path / "rgb.tif")
    assert data.shape == (10, 12, 3) and meta.axes == "YXC"
    assert meta.spacing == (1.0, 1.0) and meta.shape == (10, 12)


def test_uint32_labels_keep_spacing(tmp_path):
    lab = np.zeros((2, 6, 7), np.int64)
    lab[0, 1, 1] = 70_000
    meta = ImageMeta(spacing=(3.0, 0.5, 0.5), axes="ZYX", unit="um")
    out = write_labels(tmp_path / "big.tif", lab, meta)
    back, bmeta = read_image(out)
    assert back.dtype == np.uint32 and back[0, 1, 1] == 70_000
    assert bmeta.spacing == pytest.approx((3.0, 0.5, 0.5))


@pytest.mark.parametrize("unit", ["um", "mm", ""])
def test_nifti_labels_keep_the_unit(tmp_path, unit):
    """Labels of a micrometre TIFF saved as NIfTI got the unit "unknown": 0.26 um read back as 0.26
    with no unit (other viewers take mm)."""
    lab = np.zeros((2, 6, 7), np.uint8)
    lab[0, 1, 1] = 3
    out = write_labels(tmp_path / "lab.nii.gz", lab, ImageMeta(spacing=(0.29, 0.26, 0.26), axes="ZYX", unit=unit))
    back, meta = read_image(out)
    assert meta.unit == unit and meta.spacing == pytest.approx((0.29, 0.26, 0.26))
    np.testing.assert_array_equal(back, lab)


def test_a_file_of_several_image_series_says_only_the_first_is_read(tmp_path):
    p = tmp_path / "positions.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(np.full((48, 48), 3, np.uint8))
        tw.write(np.full((64, 64), 5, np.uint8))  # a second position
    with pytest.warns(UserWarning, match="holds 2 image series; only the first is read"):
        data, _ = read_image(p)
    assert data.shape == (48, 48)
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tw:  # a smaller second series: a thumbnail
        tw.write(np.full((64, 64), 3, np.uint8))
        tw.write(np.full((16, 16), 5, np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "thumb.tif")[0].shape == (64, 64)


def test_label_dtype_is_smallest_unsigned():
    assert label_dtype(np.array([0, 255])) == np.uint8
    assert label_dtype(np.array([0, 256])) == np.uint16
    assert label_dtype(np.array([0, 65536])) == np.uint32
    assert check_labels(np.ones((3, 3), bool)).dtype == np.uint8
    with pytest.raises(ImageError, match=">= 0"):
        check_labels(-np.ones((3, 3), int))
    with pytest.raises(ImageError, match="whole numbers"):
        check_labels(np.full((3, 3), 0.5))


# -- NIfTI ---------------------------------------------------------------------------------------
def oblique_affine():
    zooms = np.array([0.8, 0.8, 3.0])  # x, y, z in mm
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(zooms) @ np.diag([-1, 1, 1])  # a flip too
    aff[:3, 3] = [10.0, -20.0, 35.5]
    return aff


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
def test_nifti_round_trip_keeps_affine_and_orientation(tmp_path, name):
    xyz = volume((16, 12, 5))  # nibabel order (x, y, z)
    aff = oblique_affine()
    nib.save(nib.Nifti1Image(xyz, aff), tmp_path / name)
    data, meta = read_image(tmp_path / name)
    assert data.shape == (5, 12, 16) and meta.axes == "ZYX"
    np.testing.assert_array_equal(data, xyz.T)
    assert meta.spacing == pytest.approx((3.0, 0.8, 0.8))
    np.testing.assert_allclose(meta.affine, aff)

    lab = labels_like(data.shape)
    out = write_labels(tmp_path / ("lab" + name[3:]), lab, meta)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    assert back.get_data_dtype() == np.uint8
    # In the file's own (x, y, z) order the labels sit on the same voxels as the image.
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), lab.T)
    assert back.header.get_intent()[0] == "label"


def test_nifti_labels_via_meta_dict_and_without_meta(tmp_path):
    nib.save(nib.Nifti1Image(volume((8, 6, 4)), oblique_affine()), tmp_path / "a.nii.gz")
    data, meta = read_image(tmp_path / "a.nii.gz")
    out = write_labels(tmp_path / "l.nii.gz", labels_like(data.shape), meta.to_dict())
    np.testing.assert_allclose(nib.load(out).affine, oblique_affine(), atol=1e-5)
    plain = write_labels(tmp_path / "p.nii.gz", labels_like((3, 10, 12)),
                         ImageMeta(spacing=(2.0, 0.5, 0.25), axes="ZYX"))
    np.testing.assert_allclose(np.diag(nib.load(plain).affine), [0.25, 0.5, 2.0, 1.0])


def test_2d_nifti_labels_keep_their_spacing_on_the_right_axes(tmp_path):
    """2D (Y, X) labels with spacing (0.5, 0.25) are x = 0.25, y = 0.5 in the file, and read back so."""
    lab = labels_like((12, 10))
    out = write_labels(tmp_path / "l2.nii.gz", lab, ImageMeta(spacing=(0.5, 0.25), axes="YX"))
    img = nib.load(out)
    assert img.shape == (10, 12, 1) and img.header.get_zooms()[:2] == (0.25, 0.5)
    data, meta = read_image(out)
    np.testing.assert_array_equal(data, lab)
    assert meta.spacing == (0.5, 0.25)


def test_nifti_with_one_time_point_reads_as_a_volume(tmp_path):
    vol = volume((8, 6, 4))
    nib.save(nib.Nifti1Image(vol[..., None], oblique_affine()), tmp_path / "t1.nii.gz")  # (x, y, z, 1)
    data, meta = read_image(tmp_path / "t1.nii.gz")
    np.testing.assert_array_equal(data, vol.T)
    assert meta.axes == "ZYX" and len(meta.spacing) == 3


def test_labels_must_match_image_shape(tmp_path):
    meta = ImageMeta(spacing=(1.0, 1.0), axes="YX", shape=(10, 10))
    with pytest.raises(ImageError, match="do not match"):
        write_labels(tmp_path / "x.tif", np.zeros((9, 10), np.uint8), meta)
    assert not list(tmp_path.iterdir())


# -- other formats, errors, atomicity -----------------------------------------------------------
def test_npz_and_png(tmp_path):
    np.savez(tmp_path / "a.npz", image=volume((3, 8, 8)), spacing=np.array([2.0, 0.5, 0.5]))
    data, meta = read_image(tmp_path / "a.npz")
    assert data.shape == (3, 8, 8) and meta.spacing == (2.0, 0.5, 0.5)
    from skimage import io as skio

    img = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
    skio.imsave(tmp_path / "a.png", img, check_contrast=False)
    data, meta = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(data, img)
    assert meta.axes == "YX"


def test_npz_colour_picture_is_not_a_three_slice_stack(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 30, 3)).astype(np.uint8)
    np.savez(tmp_path / "rgb.npz", image=rgb)
    data, meta = read_image(tmp_path / "rgb.npz")
    assert data.shape == (40, 30, 3) and meta.axes == "YXC" and meta.spacing == (1.0, 1.0)
    np.savez(tmp_path / "vol.npz", image=rgb, spacing=np.array([2.0, 0.5, 0.5]))  # said to be a volume
    assert read_image(tmp_path / "vol.npz")[1].axes == "ZYX"


@pytest.mark.parametrize("name", ["bad.tif", "bad.nii.gz", "bad.png", "bad.npz"])
def test_corrupt_file_raises_image_error(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"this is not an image file at all" * 4)
    with pytest.raises(ImageError, match="cannot read"):
        read_image(p)


def test_truncated_tiff_raises_image_error(tmp_path):
    p = tmp_path / "t.tif"
    tifffile.imwrite(p, volume((4, 32, 32)), photometric="minisblack", compression="zlib")
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ImageError):
        read_image(p)


def test_a_truncated_imagej_stack_is_refused_not_read_as_one_slice(tmp_path):
    """Fiji writes a stack's page directories at the end: cut short, tifffile read plane 0 alone
    (a 2D image, with only a log line), and `segment` then asked for 2D boxes."""
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, volume((16, 64, 64)), imagej=True, metadata={"axes": "ZYX"})
    assert read_image(p)[0].shape == (16, 64, 64)
    whole = p.read_bytes()
    for keep in (0.5, 0.9):  # (at 99 % only ImageJ's trailing metadata is cut: the planes are all there)
        p.write_bytes(whole[: int(len(whole) * keep)])
        with pytest.raises(ImageError, match="an ImageJ stack of 16 images, but only 1 could be read|truncated"):
            read_image(p)
    folder = tmp_path / "data"  # a folder without a suffix: said "unsupported file type"
    folder.mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        read_image(folder)


@pytest.mark.parametrize("compression", ["lzw", "jpeg"])
def test_lzw_and_jpeg_tiffs_open(tmp_path, compression):
    """LZW (Fiji, instruments) and JPEG (slides) TIFFs need imagecodecs, which was no dependency:
    none opened, and the refusal asked whether the file was complete."""
    image = (np.arange(64 * 80) % 251).astype(np.uint8).reshape(64, 80)
    p = tmp_path / f"{compression}.tif"
    tifffile.imwrite(p, image, compression=compression)
    data, _ = read_image(p)
    if compression == "lzw":
        np.testing.assert_array_equal(data, image)  # lossless
    else:
        assert data.shape == image.shape and np.abs(data.astype(int) - image).mean() < 8


def test_a_missing_codec_is_named_not_blamed_on_the_file(tmp_path, monkeypatch):
    import medsam_core.io as mio

    def no_codec(path):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(mio, "_read_tiff", no_codec)
    (tmp_path / "x.tif").write_bytes(b"II*\x00")
    with pytest.raises(ImageError, match="The file is fine; install the codecs with `pip install imagecodecs`"):
        read_image(tmp_path / "x.tif")


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "a.xyz").write_text("x")
    with pytest.raises(ImageError, match="unsupported"):
        read_image(tmp_path / "a.xyz")
    with pytest.raises(ImageError, match=".tif"):
        write_labels(tmp_path / "out.png", np.zeros((4, 4), np.uint8))


def test_failed_write_leaves_existing_file_untouched(tmp_path, monkeypatch):
    target = tmp_path / "lab.tif"
    target.write_bytes(b"previous content")

    def broken(*args, **kwargs):
        with open(args[0], "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    # a MedSAM error (the CLI: exit 2 and one line), not a raw OSError ("[Errno 28]", exit 1)
    with pytest.raises(OutputError, match="disk full .the existing file is unchanged.; free some space"):
        write_labels(target, np.ones((4, 4), np.uint8))
    assert target.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["lab.tif"]  # no temp file left behind


def test_bad_labels_write_nothing(tmp_path):
    target = tmp_path / "lab.nii.gz"
    with pytest.raises(ImageError):
        write_labels(target, np.full((4, 4), -1))
    assert not target.exists() and not list(tmp_path.iterdir())


def test_written_labels_have_ordinary_permissions(tmp_path):
    """Atomic writes go through a temp file; the result must not be owner-only (0600)."""
    import os

    from medsam_core.io import write_labels

    old = os.umask(0o022)
    try:
        path = tmp_path / "labels.tif"
        write_labels(path, np.ones((4, 4), np.uint8))
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
