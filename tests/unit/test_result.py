"""Reading outputs (``Result``) of both layouts, and the commands built on it: export, plot."""

from __future__ import annotations

import builtins
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import framestats
from framestats.errors import InputError, StatisticNotFound
from producer.cli import cli
from tests.support.outputs import finalized, make_spec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def flat_output(path: str, stats=("sum", "max"), n: int = 5, k: int = 2) -> dict[str, np.ndarray]:
    """An output as versions before the NeXus layout wrote it."""
    rng = np.random.default_rng(3)
    values = {s: rng.normal(size=(n, k)) for s in stats}
    with h5py.File(path, "w") as f:
        grp = f.create_group("results")
        for s in stats:
            grp.create_dataset(s, data=values[s])
        grp.create_dataset("pixel_count", data=np.arange(1, k + 1) * 10)
        grp.create_dataset("frame_index", data=np.arange(n) * 3)
        grp.attrs["statistics"] = ",".join(stats)
        f.attrs["job_id"] = "feedfacecafebeef"
        f.attrs["input_file"] = "/data/scan.h5"
        f.attrs["options"] = json.dumps({"invert": True})
        f.attrs["chunk_frames"] = np.int64(5)
    return values


def test_reads_the_flat_layout(tmp_path):
    path = str(tmp_path / "old.h5")
    values = flat_output(path)
    res = framestats.open(path)
    assert res.stats == ("sum", "max") and list(res) == ["sum", "max"] and "max" in res
    assert (res.n_frames, res.n_regions) == (5, 2)
    np.testing.assert_array_equal(res["max"], values["max"])
    np.testing.assert_array_equal(res.frame_index, [0, 3, 6, 9, 12])
    np.testing.assert_array_equal(res.pixel_count, [10, 20])
    assert res.job_id == "feedfacecafebeef" and res.attrs["chunk_frames"] == 5
    assert res.provenance["options"] == {"invert": True}
    assert res.default_stat() == "sum"  # no mean: the first statistic
    assert "2 regions" in repr(res)


def test_reads_the_nexus_layout(tmp_path):
    spec = make_spec(tmp_path, stats=("mean", "std"))
    values = finalized(tmp_path, spec)
    res = framestats.open(spec.output)
    assert res.stats == ("mean", "std") and res.default_stat() == "mean"
    np.testing.assert_array_equal(res["std"], values["std"])
    assert res.provenance["input_files"] == list(spec.inputs)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="output file not found"):
        framestats.open(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("no")
    with pytest.raises(InputError, match="cannot read"):
        framestats.open(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="no /results group"):
        framestats.open(tmp_path / "other.h5")
    flat_output(str(tmp_path / "old.h5"))
    with pytest.raises(StatisticNotFound, match="statistic mean is not in .* it has sum,max"):
        framestats.open(tmp_path / "old.h5")["mean"]


def test_missing_optional_libraries_say_how_to_install_them(tmp_path, monkeypatch):
    flat_output(str(tmp_path / "old.h5"))
    res = framestats.open(tmp_path / "old.h5")
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name in ("xarray", "pandas"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    monkeypatch.delitem(__import__("sys").modules, "xarray", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "pandas", raising=False)
    with pytest.raises(ImportError, match=r"to_xarray needs xarray: pip install xarray"):
        res.to_xarray()
    with pytest.raises(ImportError, match=r"to_pandas needs pandas: pip install pandas"):
        res.to_pandas("sum")


# --- producer export ---------------------------------------------------------------------


def test_export_csv_and_parquet(tmp_path):
    import pandas as pd

    path = str(tmp_path / "old.h5")
    values = flat_output(path)
    runner = CliRunner()
    result = runner.invoke(cli, ["export", path])
    assert result.exit_code == 0, result.output
    csv = str(tmp_path / "old.csv")
    assert result.output.strip() == csv
    table = pd.read_csv(csv, index_col="frame")
    assert list(table.columns) == ["sum_1", "sum_2", "max_1", "max_2"]
    assert list(table.index) == [0, 3, 6, 9, 12]
    np.testing.assert_allclose(table[["max_1", "max_2"]].to_numpy(), values["max"], rtol=1e-15)

    target = str(tmp_path / "t.parquet")
    args = ["export", path, "--format", "parquet", "--stat", "max", "-o", target]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(target)
    assert list(table.columns) == ["max_1", "max_2"] and table.index.name == "frame"
    assert table.to_numpy().tobytes() == values["max"].tobytes()  # bit for bit


def test_export_refuses_with_one_line(tmp_path):
    path = str(tmp_path / "old.h5")
    flat_output(path)
    for args, expect in (
        (["export", path, "--stat", "std"], "statistic std is not in"),
        (["export", str(tmp_path / "none.h5")], "output file not found"),
        (["export", path, "-o", str(tmp_path / "no" / "x.csv")], "output folder does not exist"),
    ):
        result = CliRunner().invoke(cli, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and expect in lines[0], result.output
    result = CliRunner().invoke(cli, ["export", path, "--format", "xlsx"])
    assert result.exit_code == 2 and "xlsx" in result.output


# --- producer plot -------------------------------------------------------------------------


def test_plot_without_stat_draws_the_first_when_there_is_no_mean(tmp_path):
    path = str(tmp_path / "old.h5")
    flat_output(path, stats=("max", "std"))
    result = CliRunner().invoke(cli, ["plot", path])
    assert result.exit_code == 0, result.output
    png = result.output.strip()
    assert png == str(tmp_path / "old.max.png")
    with open(png, "rb") as fh:
        assert fh.read(8) == PNG_SIGNATURE
    result = CliRunner().invoke(cli, ["plot", path, "--stat", "mean"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: statistic mean is not in {path}; it has max,std"
