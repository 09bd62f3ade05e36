"""A job's folder (``OUTPUT.h5.parts/``): manifest, mask copy, committed chunks, temporary files.

Everything inside is reached through descriptors opened once, relative to the folder's
own descriptor, without following symbolic links, and only regular files are read. So a
``chunks`` folder swapped for a link, a FIFO named like the mask or a manifest replaced
between a check and a read can make no process read or write anywhere else: the open
fails, one line says why. A folder replaced as a whole (``submit --overwrite``) is a new
directory; a process still holding the old one writes into the old one, never the new.

Temporary files carry a random name (``.NAME.tmp-<uuid>``): process ids repeat across
hosts and containers, so two writers never share one.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .constants import CHUNKS_DIR
from .errors import JobFolderError
from .paths import check_allowed

if TYPE_CHECKING:
    from .messages import JobSpec

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: opening a FIFO planted under a file's name must not wait for a writer.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Prefix of temporary files (chunk listings skip them; a crashed writer's are removed
#: with the folder).
TMP_PREFIX = "."


def fd_path(fd: int) -> str:
    """The path the kernel holds for an open descriptor (Linux ``/proc``)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from file offset ``offset`` (``os.preadv`` holds no lock and takes
    any length); returns the bytes read, fewer than ``len(view)`` only where the file
    ends: the caller says what a short file means."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def tmp_name(name: str) -> str:
    """A temporary name for ``name`` that no other writer on any host picks."""
    return f"{TMP_PREFIX}{name}.tmp-{uuid.uuid4().hex}"


def open_dir(path: str, roots: tuple[str, ...] = (), what: str = "folder") -> int:
    """A descriptor of the folder at ``path`` (its real path under ``roots``), opened
    without following a link in its last part; the folder it names is checked again
    after opening, so a parent swapped in between cannot lead elsewhere."""
    real = check_allowed(path, roots)
    try:
        fd = os.open(real, _DIR_FLAGS)
    except OSError as exc:
        raise JobFolderError(f"cannot open {what} {path}: {_reason(exc)}") from exc
    try:
        opened = fd_path(fd)
    except OSError:
        opened = real  # no /proc: the open itself refused a link in the last part
    if opened != real:
        os.close(fd)
        raise JobFolderError(f"{what} {path} changed while being opened ({opened})")
    check_allowed(opened, roots)
    return fd


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link"
    if exc.errno == errno.ENOTDIR:
        return "it is not a folder (or a symbolic link)"
    return exc.strerror or str(exc)


class JobFolder:
    """An open job folder; every path inside it is relative to its descriptor."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        #: Real path of the folder when it was opened.
        self.path = path
        self._chunks: int | None = None

    @classmethod
    def open(cls, path: str, roots: tuple[str, ...] = ()) -> JobFolder:
        """The existing job folder at ``path``; JobFolderError when it is missing, a link,
        not a folder, or outside ``roots``."""
        fd = open_dir(path, roots, "job folder")
        folder = cls(fd, fd_path_or(fd, os.path.realpath(path)))
        try:
            folder.chunks_fd  # noqa: B018  (now: commits go to this folder's chunks, always)
        except BaseException:
            folder.close()
            raise
        return folder

    @classmethod
    def create(cls, path: str) -> JobFolder:
        """A new, empty job folder with its ``chunks`` folder; FileExistsError if taken."""
        os.mkdir(path)
        fd = open_dir(path, (), "job folder")
        os.mkdir(CHUNKS_DIR, dir_fd=fd)
        os.close(fd)
        return cls.open(path)

    # -- the chunks folder ------------------------------------------------------------

    @property
    def chunks_fd(self) -> int:
        """Descriptor of the ``chunks`` folder (a link there is refused)."""
        if self._chunks is None:
            try:
                self._chunks = os.open(CHUNKS_DIR, _DIR_FLAGS, dir_fd=self.fd)
            except OSError as exc:
                raise JobFolderError(
                    f"cannot open {os.path.join(self.path, CHUNKS_DIR)}: {_reason(exc)}"
                ) from exc
        return self._chunks

    def chunk_names(self) -> list[str]:
        """Names in the chunks folder, temporary files left out."""
        return [n for n in os.listdir(self.chunks_fd) if not n.startswith(TMP_PREFIX)]

    # -- files ------------------------------------------------------------------------

    def _dir(self, in_chunks: bool) -> int:
        return self.chunks_fd if in_chunks else self.fd

    @contextmanager
    def opened(self, name: str, in_chunks: bool = False) -> Iterator[tuple[int, int]]:
        """(descriptor, size) of regular file ``name``, open for reading while the block
        runs; JobFolderError for a link, a FIFO or anything not a regular file;
        FileNotFoundError when absent."""
        where = os.path.join(self.path, CHUNKS_DIR if in_chunks else "", name)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self._dir(in_chunks))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise JobFolderError(f"cannot open {where}: {_reason(exc)}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise JobFolderError(f"{where} is not a regular file")
            os.set_blocking(fd, True)
            yield fd, info.st_size
        finally:
            os.close(fd)

    def read(self, name: str, in_chunks: bool = False, limit: int | None = None) -> bytes:
        """The bytes of regular file ``name`` (up to ``limit``), as ``opened`` finds it."""
        with self.opened(name, in_chunks) as (fd, size):
            want = size if limit is None else min(limit, size)
            parts, got = [], 0
            while got < want:
                part = os.pread(fd, want - got, got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
            return b"".join(parts)

    def write_atomic(
        self, name: str, write: Callable[[int], None], in_chunks: bool = False
    ) -> None:
        """``write(fd)`` into a new temporary file, fsync it, rename it to ``name``: a
        reader sees no file or a whole one."""
        folder = self._dir(in_chunks)
        tmp = tmp_name(name)
        fd = os.open(tmp, _CREATE_FLAGS, 0o644, dir_fd=folder)
        try:
            try:
                write(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            self.unlink(tmp, in_chunks)
            raise
        os.fsync(folder)

    def write_bytes(self, name: str, data: bytes, in_chunks: bool = False) -> None:
        def write(fd: int) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

        self.write_atomic(name, write, in_chunks)

    def unlink(self, name: str, in_chunks: bool = False) -> None:
        try:
            os.unlink(name, dir_fd=self._dir(in_chunks))
        except FileNotFoundError:
            pass

    def new_tmp(self, name: str) -> tuple[str, int]:
        """(name, descriptor) of a new empty temporary file in the folder, for writers that
        need a path (HDF5): ``/proc/self/fd/<fd>`` names exactly this file."""
        tmp = tmp_name(name)
        flags = (_CREATE_FLAGS & ~os.O_WRONLY) | os.O_RDWR
        return tmp, os.open(tmp, flags, 0o644, dir_fd=self.fd)

    def publish(self, tmp: str, dest_dir_fd: int, dest_name: str) -> None:
        """Rename temporary file ``tmp`` of this folder to ``dest_name`` in another folder
        (same file system), then sync both folders."""
        os.replace(tmp, dest_name, src_dir_fd=self.fd, dst_dir_fd=dest_dir_fd)
        os.fsync(dest_dir_fd)
        os.fsync(self.fd)

    def close(self) -> None:
        for fd in (self._chunks, self.fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._chunks = None
        self.fd = -1

    def __enter__(self) -> JobFolder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def fd_path_or(fd: int, default: str) -> str:
    try:
        return fd_path(fd)
    except OSError:
        return default


def load_job(
    manifest: str, job_id: str | None, roots: tuple[str, ...] = ()
) -> tuple[JobSpec, JobFolder]:
    """The job whose manifest is at ``manifest`` and its open folder.

    Messages may be forged: the manifest must be the folder's ``manifest.json``, the
    folder a real folder under ``roots``, the manifest a regular file naming this folder
    and job ``job_id``, and every path it names must lie under ``roots``.
    """
    from .constants import MANIFEST_NAME
    from .messages import JobSpec

    if os.path.basename(manifest) != MANIFEST_NAME:
        raise JobFolderError(f"not a job manifest: {manifest}")
    folder = JobFolder.open(os.path.dirname(manifest), roots)
    try:
        try:
            spec = JobSpec.loads(folder.read(MANIFEST_NAME))
        except FileNotFoundError as exc:
            raise JobFolderError(f"job manifest not found: {manifest}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise JobFolderError(f"job manifest unreadable: {manifest}: {exc}") from exc
        if job_id is not None and spec.job_id != job_id:
            raise JobFolderError(f"manifest {manifest} belongs to job {spec.job_id}, not {job_id}")
        if os.path.realpath(spec.workdir) != folder.path:
            raise JobFolderError(f"manifest {manifest} names another folder ({spec.workdir})")
        for path in [spec.output, *(s.path for s in spec.segments)]:
            check_allowed(path, roots)
    except BaseException:
        folder.close()
        raise
    return spec, folder
