"""Chains of bundles (format 1.4): an increment names the link before it, and a reader
follows the names to the full bundle at the start.

An increment's root descriptor holds `previous`: the bundle id of the link it was made
from, its directory name and the sha256 of its manifest then. Nothing of that is trusted
as a path: the name is one path component, looked up in the directory that holds the
bundle naming it (the links of a chain lie side by side), never through a symbolic link;
the link found there must carry that bundle id and that manifest, and its own manifest and
root descriptor must pass the reader's checks. A run.json record that names a link (`link`:
a bundle id) is looked up among these links only, at the same path as in the increment.

Whatever is wrong with a link is one line naming it (its path and bundle id), raised
(BadInputError: the import stops before anything is written) or reported (verify).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trackport._files import check_component, sha256_file
from trackport.errors import BadInputError, TrackportError
from trackport.bundle import descriptor, validator
from trackport.bundle.index import BundleIndex, read_index
from trackport.bundle.location import BundleFiles
from trackport.bundle.layout import MANIFEST_FILE, ROOT_FILE

# A chain longer than this is taken for a loop made to hurt (or a mistake): make a full export.
MAX_LINKS = 1000


@dataclass(frozen=True)
class Link:
    """An earlier link of a chain, checked: its directory, root descriptor and manifest index."""

    path: Path
    number: int  # 1: the full bundle at the start of the chain is the highest number; the bundle read is 0
    root: dict
    index: BundleIndex

    @property
    def bundle_id(self) -> str:
        return self.root["bundle_id"]


class LinkError(BadInputError):
    """A link of a chain missing or damaged; the message names it (where: its path, or the
    root descriptor that names it wrongly)."""

    def __init__(self, where: Path, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.problem = message


class LocalPlace:
    """The directory the links of a local chain lie in, side by side."""

    def __init__(self, parent: Path) -> None:
        self.parent = parent

    def open(self, name: str, what: str) -> tuple[Path, BundleFiles | None]:
        """(the link's directory, None: its files are under it); LinkError when it is not there."""
        where = self.parent / name
        if os.path.islink(where):
            raise LinkError(where, f"{what} is a symbolic link; copy the chain's bundles themselves side by side")
        if not where.is_dir():
            raise LinkError(where, f"{what} is missing; put the chain's bundles back side by side in {self.parent}")
        return where, None


def earlier_links(path: Path, root: dict, *, check_files: bool = True, into: list | None = None,
                  place=None) -> list[Link]:
    """The links before the bundle at path (root: its checked descriptor), newest first;
    [] for a full bundle. check_files: every file each link lists is there with its
    listed size, without links (what `verify --level fast` checks), so a damaged link
    stops an import before it writes anything. LinkError naming the first bad link (into:
    a list that then holds the good links before it). place: where the links lie (default:
    the directory of path; s3_stores.S3Place for a chain on S3)."""
    links: list[Link] = [] if into is None else into
    place = place or LocalPlace(path.parent)
    seen = {root.get("bundle_id")}
    here, doc = path, root
    while doc.get("previous") is not None:
        wanted = doc["previous"]
        if len(links) >= MAX_LINKS:
            raise LinkError(path / ROOT_FILE, f"its chain has more than {MAX_LINKS} links; make a full export")
        link = _open_link(here, wanted, len(links) + 1, seen, check_files, place)
        seen.add(link.bundle_id)
        links.append(link)
        here, doc = link.path, link.root
    return links


def _name(here: Path, wanted: dict, number: int) -> str:
    return (
        f"link {number} of the chain before {here.name} (bundle {str(wanted.get('bundle_id'))[:40]},"
        f" named {str(wanted.get('path'))[:80]!r} in {here / ROOT_FILE})"
    )


def _open_link(here: Path, wanted: dict, number: int, seen: set, check_files: bool, place) -> Link:
    what = _name(here, wanted, number)
    try:
        name = check_component(wanted["path"], "link name")
    except ValueError as e:
        raise LinkError(here / ROOT_FILE, f"{what} is not a bundle name in the same directory ({e}); the chain is damaged") from None
    if wanted["bundle_id"] in seen:
        raise LinkError(here.parent / name, f"{what} names a bundle of the chain again (a loop); the chain is damaged")
    where, files = place.open(name, what)
    try:
        root = descriptor.load_root(where)
    except TrackportError as e:
        raise LinkError(where, f"{what} is damaged: {e}") from None
    if root.get("bundle_id") != wanted["bundle_id"]:
        raise LinkError(
            where, f"{what} is another bundle (id {str(root.get('bundle_id'))[:40]}); "
            "put the link the increment was made from there"
        )
    manifest = where / MANIFEST_FILE
    if not manifest.is_file() or os.path.islink(manifest):
        raise LinkError(where, f"{what} is damaged: no {MANIFEST_FILE}")
    try:
        sha, _ = sha256_file(manifest)
    except OSError as e:
        raise LinkError(where, f"{what} cannot be read: {e.strerror or e}") from None
    if sha != wanted["manifest_sha256"]:
        raise LinkError(
            where, f"{what} changed since the increment was made (its {MANIFEST_FILE} differs); "
            "restore it from a copy, or make a new full export"
        )
    index = read_index(where, root["bundle_id"], files)
    problems = index.problems or validator.check_root_entry(index)
    if not problems and check_files:
        problems = _missing_files(index)
    if problems:
        raise LinkError(where, f"{what} is damaged: {problems[0]}")
    return Link(where, number, root, index)


def _missing_files(index: BundleIndex) -> list:
    """Every listed file there with its listed size (the first problem only)."""
    for entry in index.entries():
        problem = validator.file_problem(index, entry.path, entry.size)
        if problem:
            return [f"{entry.path} {problem}"]
    return []


def by_id(links: list[Link]) -> dict[str, BundleIndex]:
    return {link.bundle_id: link.index for link in links}


def describe_previous(previous: Path, root: dict, name: str | None = None) -> dict:
    """What an increment records of the link it is made from (its `previous`): previous is
    its directory (for a link on S3, the local copy of its manifest; name: its prefix's
    last part)."""
    sha, _ = sha256_file(previous / MANIFEST_FILE)
    return {"bundle_id": root["bundle_id"], "path": name or previous.name, "manifest_sha256": sha}
