"""Masks from every source, conventions, --invert, --exclude, detector masks (no Redis)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import h5py
import hdf5plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from framestats.errors import MaskError, OptionError
from framestats.inputs import masks

SHAPE = (6, 5)


def save_h5(path, name, array, **kw):
    with h5py.File(path, "a") as f:
        f.create_dataset(name, data=array, **kw)
    return str(path)


@pytest.fixture
def region(tmp_path):
    labels = np.zeros(SHAPE, np.int32)
    labels[:3] = 1
    labels[3:, :2] = 2
    labels[5, 4] = 3
    np.save(tmp_path / "labels.npy", labels)
    return labels, str(tmp_path / "labels.npy")


def test_h5_mask_by_path_and_the_only_2d_dataset(tmp_path, region):
    labels, _ = region
    path = save_h5(tmp_path / "m.h5", "/masks/roi", labels.astype(np.uint8))
    save_h5(tmp_path / "m.h5", "/masks/stack", np.zeros((2, *SHAPE)))
    a = masks.load(f"{path}:/masks/roi")
    assert a.dataset == "/masks/roi" and a.sha256_of == "array"
    np.testing.assert_array_equal(a.array, labels)
    assert a.sha256 == hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest()
    b = masks.load(path)  # only one 2-D dataset in the file
    assert b.dataset == "/masks/roi"
    built = masks.build(f"{path}:/masks/roi", SHAPE)
    np.testing.assert_array_equal(built.labels, labels)
    assert built.n_regions == 3
    assert built.records[0]["dataset"] == "/masks/roi"
    assert built.records[0]["sha256"] == a.sha256


_LOAD_IN_FRESH_PROCESS = """
import sys
from framestats.inputs import masks
a = masks.load(sys.argv[1])
print(int(a.array.astype("int64").sum()), "hdf5plugin" in sys.modules)
"""


@pytest.mark.parametrize("virtual", [False, True])
def test_compressed_h5_mask_loads_with_its_filter(tmp_path, region, virtual):
    """A Bitshuffle-LZ4 mask loads (hdf5plugin registered for it), also a virtual one,
    whose layout does not name its source's filter."""
    labels, _ = region
    kw = dict(hdf5plugin.Bitshuffle(cname="lz4"), chunks=SHAPE)
    if virtual:
        save_h5(tmp_path / "src.h5", "/m", labels.astype(np.uint16), **kw)
        layout = h5py.VirtualLayout(shape=SHAPE, dtype=np.uint16)
        layout[:] = h5py.VirtualSource("src.h5", "/m", shape=SHAPE)
        with h5py.File(tmp_path / "m.h5", "w") as f:
            f.create_virtual_dataset("/m", layout, fillvalue=0)
    else:
        save_h5(tmp_path / "m.h5", "/m", labels.astype(np.uint16), **kw)
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, f"{tmp_path / 'm.h5'}:/m"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == [str(int(labels.sum())), "True"]


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("{d}/none.h5:/x", "mask file not found"),
        ("{d}/m.h5:/nope", "dataset /nope not found in mask file"),
        ("{d}/m.h5:/grp", "is a group"),
        ("{d}/two.h5", "several 2-D datasets"),
        ("{d}/labels.npy:/x", "not an HDF5 file"),
        ("{d}/m.txt", "must be a .npy array, an HDF5 dataset"),
    ],
)
def test_h5_mask_errors(tmp_path, region, spec, expect):
    save_h5(tmp_path / "m.h5", "/grp/a", np.ones(SHAPE, bool))
    save_h5(tmp_path / "two.h5", "/a", np.ones(SHAPE, bool))
    save_h5(tmp_path / "two.h5", "/b", np.ones(SHAPE, bool))
    (tmp_path / "m.txt").write_text("1")
    with pytest.raises(MaskError, match=expect):
        masks.load(spec.format(d=tmp_path))


def test_nexus_convention_ignores_informational_upper_bits(tmp_path):
    pm = np.zeros(SHAPE, np.uint32)
    pm[0, 0] = 1  # gap
    pm[0, 1] = 1 << 4  # noisy
    pm[1, 0] = 1 << 20  # informational only: still good
    pm[1, 1] = 1 << 31  # virtual pixel tag: still good
    pm[2, 2] = (1 << 31) | (1 << 1)  # tagged and dead: bad
    path = save_h5(tmp_path / "pm.h5", "/pixel_mask", pm)
    built = masks.build(f"{path}:/pixel_mask", SHAPE, convention="nexus")
    expected = ((pm & 0xFFFF) == 0).astype(np.int32)
    np.testing.assert_array_equal(built.labels, expected)
    assert built.n_regions == 1
    assert built.labels[1, 0] == 1 and built.labels[1, 1] == 1
    assert built.records[0]["convention"] == "nexus"
    # --invert then selects exactly the bad pixels.
    inv = masks.build(f"{path}:/pixel_mask", SHAPE, convention="nexus", invert=True)
    np.testing.assert_array_equal(inv.labels, 1 - expected)


def test_unknown_convention_is_an_option_error(region):
    with pytest.raises(OptionError, match="--mask-convention 'foo'"):
        masks.build(region[1], SHAPE, convention="foo")


def test_invert_boolean_and_refuses_labels(tmp_path, region):
    m = np.zeros(SHAPE, bool)
    m[2:4, 1:3] = True
    np.save(tmp_path / "b.npy", m)
    built = masks.build(str(tmp_path / "b.npy"), SHAPE, invert=True)
    np.testing.assert_array_equal(built.labels, (~m).astype(np.int32))
    with pytest.raises(MaskError, match="--invert needs a boolean mask"):
        masks.build(region[1], SHAPE, invert=True)


def test_exclude_removes_bad_pixels_and_keeps_region_numbers(tmp_path, region):
    labels, spec = region
    bad = np.zeros(SHAPE, bool)
    bad[0, :] = True
    bad[5, 4] = True  # the only pixel of region 3
    np.save(tmp_path / "bad.npy", bad)
    pm = np.zeros(SHAPE, np.uint32)
    pm[4, 0] = 8
    pm[4, 1] = 1 << 16  # informational: stays
    path = save_h5(tmp_path / "pm.h5", "/pm", pm)
    built = masks.build(spec, SHAPE, exclude=(str(tmp_path / "bad.npy"), f"{path}:/pm"))
    expected = labels.copy()
    expected[bad] = 0
    expected[4, 0] = 0
    np.testing.assert_array_equal(built.labels, expected)
    assert built.n_regions == 3, "region 3 stays a (now empty) column"
    roles = [r["role"] for r in built.records]
    assert roles == ["regions", "exclude", "exclude", "combined"]
    assert built.records[1]["removed"] == int((bad & (labels > 0)).sum())
    assert built.records[2]["bad_pixels"] == 1
    assert (
        built.records[-1]["sha256"] == hashlib.sha256(expected.astype("<i4").tobytes()).hexdigest()
    )


def test_exclude_errors(tmp_path, region):
    np.save(tmp_path / "w.npy", np.zeros((5, 6), bool))
    with pytest.raises(MaskError, match=r"shape \(5, 6\) but frames are \(6, 5\)"):
        masks.build(region[1], SHAPE, exclude=(str(tmp_path / "w.npy"),))
    with pytest.raises(MaskError, match="mask file not found"):
        masks.build(region[1], SHAPE, exclude=(str(tmp_path / "none.npy"),))
    np.save(tmp_path / "all.npy", np.ones(SHAPE, bool))
    with pytest.raises(MaskError, match="selects no pixel once bad pixels are excluded"):
        masks.build(region[1], SHAPE, exclude=(str(tmp_path / "all.npy"),))


def test_detector_mask_errors_name_the_master(tmp_path, region):
    path = save_h5(tmp_path / "master.h5", "/pm", np.zeros((3, 3), np.uint32))
    with pytest.raises(MaskError, match="detector pixel mask.*--no-detector-mask"):
        masks.build(region[1], SHAPE, detector=((path, "/pm"),))


def test_label_images_png_and_tiff(tmp_path):
    from PIL import Image

    labels = np.zeros(SHAPE, np.uint16)
    labels[1:3, 1:4] = 7
    labels[4, :] = 300
    Image.fromarray(labels).save(tmp_path / "l.png")
    Image.fromarray(labels.astype(np.int32)).save(tmp_path / "l.tif")
    Image.fromarray(labels.astype(np.uint8) > 0).save(tmp_path / "b.png")
    for name in ("l.png", "l.tif"):
        built = masks.build(str(tmp_path / name), SHAPE)
        np.testing.assert_array_equal(built.labels, labels)
        assert built.n_regions == 300
        assert built.records[0]["sha256_of"] == "file"
    built = masks.build(str(tmp_path / "b.png"), SHAPE)
    np.testing.assert_array_equal(built.labels, (labels > 0).astype(np.int32))
    Image.fromarray(np.zeros((*SHAPE, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(MaskError, match="is RGB; expected a single-channel"):
        masks.load(str(tmp_path / "rgb.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MaskError, match="not a readable image"):
        masks.load(str(tmp_path / "bad.png"))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint32, SHAPE, elements=st.integers(0, 2**32 - 1)))
def test_bad_pixels_follow_the_nexus_rule(pm):
    bad = masks.bad_pixels(pm, "pm")
    expected = np.array([[(int(v) & 0xFFFF) != 0 for v in row] for row in pm])
    np.testing.assert_array_equal(bad, expected)
