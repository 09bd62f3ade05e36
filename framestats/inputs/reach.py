"""Every file that reading one HDF5 dataset touches, and the rule that keeps them in bounds.

HDF5 can reach beyond the file it opened: external links (at the dataset or any group on
its path, also behind a soft link), virtual datasets (each source file, and whatever
*that* source reaches in turn) and external raw storage (the dataset's bytes kept in
plain files). ``reach`` walks all of them the way HDF5 resolves them and lists every
file; ``check_reach`` refuses a dataset that reaches outside the allowed roots, or whose
target is missing where HDF5 would look first (it would then search further, in places
nobody checked). Both ``producer submit`` and the workers call it, on the file they
opened.

HDF5 looks exactly where this module checks only without the environment variables that
add folders to its search (``HDF5_EXT_PREFIX``, ``HDF5_VDS_PREFIX``,
``HDF5_EXTFILE_PREFIX``; HDF5 reads them once, when it loads): with ``DATA_ROOT`` set,
``check_environment`` refuses them. External raw storage is resolved against the file's
own folder (HDF5's ``${ORIGIN}``): ``open_dataset`` opens datasets that way.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

import h5py

from ..errors import ConfigError, InputError, PathNotAllowed
from ..paths import check_allowed

#: Environment variables that make HDF5 search other folders for linked files.
SEARCH_VARIABLES = ("HDF5_EXT_PREFIX", "HDF5_VDS_PREFIX", "HDF5_EXTFILE_PREFIX")
#: Soft links, external links and virtual sources followed in one walk, at most.
MAX_HOPS = 64


def check_environment(roots: tuple[str, ...], env: Mapping[str, str] | None = None) -> None:
    """ConfigError when HDF5 would search folders ``reach`` does not check (see above)."""
    env = os.environ if env is None else env
    found = [name for name in SEARCH_VARIABLES if env.get(name)]
    if roots and found:
        raise ConfigError(
            f"{', '.join(found)} set: HDF5 would look for linked files in folders that "
            "DATA_ROOT does not check; unset it"
        )


def open_dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """Dataset ``name`` of ``f``, its external raw storage resolved beside the file."""
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_efile_prefix(b"${ORIGIN}")
    return h5py.Dataset(h5py.h5d.open(f.id, name.encode(), dapl))


@dataclass(frozen=True)
class Touch:
    """One file that reading a dataset opens."""

    #: "file", "external link", "virtual source" or "external storage".
    kind: str
    #: The path HDF5 opens (before symbolic links are resolved).
    path: str
    #: What leads there, for messages (``file:/object``).
    via: str


def linked_path(target: str, holder: str) -> str:
    """Where HDF5 first looks for a file named ``target`` in a link held by ``holder``:
    an absolute name as it is, a relative one beside the holding file."""
    if os.path.isabs(target):
        return target
    return os.path.join(os.path.dirname(holder), target)


class _Walk:
    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots
        self.touched: list[Touch] = []
        self.hops = 0
        self.open: dict[str, h5py.File] = {}

    def file(self, path: str) -> h5py.File:
        f = self.open.get(path)
        if f is None:
            try:
                f = self.open[path] = h5py.File(path, "r")
            except OSError as exc:
                raise InputError(f"cannot open {path}: {exc}") from exc
        return f

    def hop(self, via: str) -> None:
        self.hops += 1
        if self.hops > MAX_HOPS:
            raise InputError(f"more than {MAX_HOPS} links to follow from {via}")

    def touch(self, kind: str, target: str, holder: str, via: str) -> str:
        path = linked_path(target, holder)
        self.touched.append(Touch(kind, path, via))
        try:  # before anything opens it
            check_allowed(path, self.roots)
        except PathNotAllowed as exc:
            shown = os.path.normpath(path)
            raise PathNotAllowed(f"{kind} of {via}: {shown}", self.roots) from exc
        if kind != "external storage" and not os.path.isfile(path):
            raise InputError(f"{via}: {kind} names {target}, which is not at {path}")
        return path

    def dataset(self, path: str, name: str) -> None:
        """Walk ``name`` in file ``path`` link by link, then what the dataset reaches."""
        f = self.file(path)
        parts = [p for p in name.split("/") if p]
        group: h5py.Group = f["/"]
        for i, part in enumerate(parts):
            here = "/" + "/".join(parts[: i + 1])
            rest = "/".join(parts[i + 1 :])
            via = f"{path}:{here}"
            link = group.get(part, getlink=True)
            if link is None:
                raise InputError(f"{name} not found in {path} (no {here})")
            if isinstance(link, h5py.SoftLink):
                self.hop(via)
                target = posixpath.normpath(posixpath.join(group.name, link.path))
                return self.dataset(path, posixpath.join(target, rest))
            if isinstance(link, h5py.ExternalLink):
                self.hop(via)
                other = self.touch("external link", link.filename, path, via)
                return self.dataset(other, posixpath.join(link.path, rest))
            # The class first, not the object: a dataset is opened only as open_dataset
            # opens it (HDF5 holds one set of access properties per open dataset).
            kind = group.get(part, getclass=True)
            if kind is h5py.Group:
                group = group[part]
                continue
            if kind is h5py.Dataset and not rest:
                return self.contents(path, open_dataset(f, here))
            raise InputError(f"{name} not found in {path} ({here} is not a group)")
        raise InputError(f"{name} in {path} is a group, not a dataset")

    def contents(self, path: str, dset: h5py.Dataset) -> None:
        via = f"{path}:{dset.name}"
        for entry in dset.external or ():
            self.touch("external storage", os.fsdecode(entry[0]), path, via)
        if not dset.is_virtual:
            return
        for src in dset.virtual_sources():
            self.hop(via)
            if src.file_name == ".":
                self.dataset(path, src.dset_name)
            else:
                other = self.touch("virtual source", src.file_name, path, via)
                self.dataset(other, src.dset_name)

    def close(self) -> None:
        for f in self.open.values():
            f.close()


def check_reach(path: str, name: str, roots: tuple[str, ...] = ()) -> list[Touch]:
    """Every file that reading dataset ``name`` of file ``path`` opens, the file itself
    first; PathNotAllowed (naming what leads there) for any outside ``roots``, checked
    before it is opened. Empty ``roots`` allows everything."""
    check_allowed(path, roots)
    walk = _Walk(roots)
    try:
        walk.dataset(path, name)
    finally:
        walk.close()
    return [Touch("file", path, f"{path}:{name}"), *walk.touched]
