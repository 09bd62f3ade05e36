"""The output layout: the flat paths readers know, and a NeXus file viewers understand.

silx's own NXdata validator (``silx.io.nxdata``) follows ``default`` from the root;
h5web's rules for the default plot are restated in ``h5web_default`` from its source.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
from silx.io import nxdata  # a test dependency: the viewers' own validator

from framestats import __version__
from framestats.result import Result
from tests.support.outputs import finalized, make_spec
from worker import output

ALL = ("sum", "mean", "count", "min", "max", "std")


def h5web_default(f: h5py.File) -> tuple[str, str, list[int | str]]:
    """(NXdata path, visualization, dimension mapping) of h5web's default view.

    From h5web's source (packages/app/src/vis-packs/nexus): ``getNxDefaultPath`` follows
    ``default`` (absolute, or relative to the group; without one, the first NXdata, else
    NXentry, else NXprocess child); ``getSupportedNxVis`` picks the line plot
    (NxSpectrum) for ``interpretation="spectrum"``, a heatmap for other 2-D signals;
    its dimension mapping puts the last dimension on x (``initDimMapping``) unless the
    NXdata's ``default_slice`` moves it (``applyDefaultSlice``).
    """

    def attr(obj: h5py.HLObject, name: str):
        value = obj.attrs.get(name)
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, np.ndarray):
            return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
        return value

    group: h5py.Group = f
    seen = set()
    while not (attr(group, "NX_class") == "NXdata" and "signal" in group.attrs):
        assert group.name not in seen, "default chain loops"
        seen.add(group.name)
        target = attr(group, "default")
        if target:
            path = target if target.startswith("/") else f"{group.name.rstrip('/')}/{target}"
        else:
            children = [g for g in group.values() if isinstance(g, h5py.Group)]
            for cls in ("NXdata", "NXentry", "NXprocess"):
                found = [g for g in children if attr(g, "NX_class") == cls]
                if found:
                    path = found[0].name
                    break
            else:
                raise AssertionError(f"h5web finds nothing to show below {group.name}")
        group = f[path]
    signal = group[attr(group, "signal")]
    interpretation = attr(signal, "interpretation")
    if interpretation == "spectrum":
        vis = "line"
    elif interpretation == "image" or signal.ndim >= 2:
        vis = "heatmap"
    else:
        vis = "line"
    mapping: list[int | str] = [0] * (signal.ndim - 1) + ["x"]
    if vis == "line" and "default_slice" in group.attrs:
        dslice = attr(group, "default_slice")
        if len(dslice) == signal.ndim and dslice.count(".") == 1:
            mapping = ["x" if v == "." else int(v) for v in dslice]
    return group.name, vis, mapping


def test_flat_paths_and_attributes_stay(tmp_path):
    spec = make_spec(tmp_path, stats=ALL)
    values = finalized(tmp_path, spec)
    with h5py.File(spec.output, "r") as f:
        assert set(f["results"]) == {*ALL, "pixel_count", "frame_index"}
        for s in ALL:
            assert f["results"][s].dtype == np.float64
            assert f["results"][s][()].tobytes() == values[s].tobytes()
        np.testing.assert_array_equal(f["results/pixel_count"][()], values["pixel_count"])
        np.testing.assert_array_equal(f["results/frame_index"][()], np.arange(4, 16))
        assert f["results"].attrs["statistics"] == ",".join(ALL)
        attrs = dict(f.attrs)
    for key in ("job_id", "input_files", "dataset", "mask_path", "mask_sha256", "masks",
                "statistics", "chunk_frames", "n_chunks", "options", "version",
                "start_time", "end_time", "devices", "workers"):  # fmt: skip
        assert key in attrs, key
    assert attrs["job_id"] == spec.job_id and attrs["chunk_frames"] == 6
    assert json.loads(attrs["input_files"]) == list(spec.inputs)


def test_silx_finds_valid_nxdata_by_default(tmp_path):
    spec = make_spec(tmp_path, stats=ALL)
    values = finalized(tmp_path, spec)
    with h5py.File(spec.output, "r") as f:
        assert nxdata.is_NXroot_with_default_NXdata(f)
        found = nxdata.get_default(f)
        assert found is not None and found.is_valid, found and found.issues
        assert found.group.name == "/entry/mean"
        assert found.signal_name == "mean"
        np.testing.assert_array_equal(found.signal[()], values["mean"])
        assert [a.name for a in found.axes] == ["/entry/mean/frame_index", "/entry/mean/region"]
        np.testing.assert_array_equal(found.axes[0][()], np.arange(4, 16))
        np.testing.assert_array_equal(found.axes[1][()], [1, 2, 3])
        assert found.interpretation == "spectrum" and found.is_curve
        for s in ALL:  # every statistic has a valid NXdata of its own
            assert nxdata.is_valid_nxdata(f["entry"][s]), nxdata.NXdata(f["entry"][s]).issues


def test_nxdata_links_are_hard_links_not_copies(tmp_path):
    spec = make_spec(tmp_path)
    finalized(tmp_path, spec)
    with h5py.File(spec.output, "r") as f:
        for s in spec.stats:
            assert isinstance(f["entry"][s].get(s, getlink=True), h5py.HardLink)
            assert f[f"entry/{s}/{s}"].id == f[f"results/{s}"].id  # one object, two names
            assert h5py.h5o.get_info(f[f"results/{s}"].id).rc == 2
        assert f["entry/mean/frame_index"].id == f["results/frame_index"].id
        assert f["entry/sum/pixel_count"].id == f["results/pixel_count"].id


def test_nexus_groups_and_provenance(tmp_path):
    spec = make_spec(tmp_path, stats=("sum", "std"))
    finalized(tmp_path, spec)
    with h5py.File(spec.output, "r") as f:
        assert f.attrs["NX_class"] == "NXroot" and f.attrs["default"] == "entry"
        assert f.attrs["creator"] == "framestats" and f.attrs["file_name"] == "out.h5"
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry.attrs["default"] == "sum"  # no mean: the first statistic
        assert entry["end_time"][()].decode() == f.attrs["end_time"]
        process = entry["process"]
        assert process.attrs["NX_class"] == "NXprocess"
        assert process["program"][()].decode() == "framestats"
        assert process["version"][()].decode() == __version__
        assert process["date"][()].decode() == f.attrs["end_time"]
        note = process["configuration"]
        assert note.attrs["NX_class"] == "NXnote"
        assert note["type"][()].decode() == "application/json"
        config = json.loads(note["data"][()])
        assert config["job_id"] == spec.job_id
        assert config["input_files"] == list(spec.inputs)  # JSON attributes expanded
        assert config["options"] == spec.options
        assert config["chunk_frames"] == spec.chunk_frames


def test_h5web_lands_on_a_line_plot_over_frames(tmp_path):
    spec = make_spec(tmp_path, k=4, stats=ALL)
    finalized(tmp_path, spec)
    with h5py.File(spec.output, "r") as f:
        path, vis, mapping = h5web_default(f)
        assert (path, vis) == ("/entry/mean", "line")
        assert mapping == ["x", 0]  # frames on the x axis, region 1 selected
        assert f[path]["title"].shape == () and f[path]["title"].dtype.kind == "O"


def test_create_leaves_datasets_for_the_caller_to_fill(tmp_path):
    """The datasets come back unwritten and are filled in pieces by the caller."""
    spec = make_spec(tmp_path, n=10, k=2)
    path = str(tmp_path / "direct.h5")
    with h5py.File(path, "w") as f:
        datasets = output.create(f, spec, {"job_id": spec.job_id}, np.array([3, 4]), np.arange(10))
        assert set(datasets) == {"sum", "mean"}
        assert all(d.shape == (10, 2) and d.dtype == np.float64 for d in datasets.values())
        datasets["sum"][0:4] = 1.0  # chunk by chunk
        datasets["sum"][4:10] = 2.0
        datasets["mean"][:] = np.nan
        assert nxdata.get_default(f) is not None
    res = Result(path)
    assert res.stats == ("sum", "mean")
    np.testing.assert_array_equal(res["sum"][:, 0], [1.0] * 4 + [2.0] * 6)
    assert np.isnan(res["mean"]).all()
    assert res.job_id == spec.job_id and list(res.pixel_count) == [3, 4]
