"""Class names of a dataset: where they come from, in a fixed order of sources.

Text-embed turns class names into prompts ("Image of a {}."), so ``class_3`` or a WordNet
id (``n01440764``) makes them meaningless.  The names of a split, in label order, come
from the first source that exists:

1. ``--class-names FILE`` (the ``class_names`` option of the stages and ``data check``);
2. ``<metadata>/class_names.txt`` (wsolevaluation layout; ``<root>/metadata`` by default);
3. ``<root>/class_names.txt`` (the dataset or image folder);
4. the dataset's own class folders: CUB's ``classes.txt``, an ImageFolder's subfolders,
   or the folder holding each class's images in a wsolevaluation ``image_ids.txt``
   (``001.Black_footed_Albatross/…jpg``, ``train/n01440764/…JPEG``), with a leading number
   and its dot removed and underscores made spaces (``Black footed Albatross``); names a
   format defines itself (a Hugging Face ``ClassLabel``) are kept as they are;
5. WordNet synset ids among the names of 4 (ILSVRC) are turned into words by a synset
   file found beside the data (``LOC_synset_mapping.txt``, ``synset_words.txt`` or
   ``synsets.txt`` in the metadata folder or the root);
6. else ``class_0``, ``class_1``, … (with a warning: prompts of these mean nothing).

A names file (1-3) holds either one name per line in label order, or ``synset,name`` lines
(``n01440764,tench`` or ILSVRC's ``n01440764 tench, Tinca tinca``).  Such a synset map names
each class whose folder is a synset id; where the folders say nothing (ILSVRC's
``val/ILSVRC2012_val_….JPEG``), the map's own order is the label order, which is the
ILSVRC one (synsets sorted) for the files above.  A synset's name is its first synonym
(``tench``); where two classes share it (ILSVRC's two ``crane``s), all its synonyms, and
where those are shared too, the id is added (``crane (n03126707)``).

The source chosen is returned with the names (:class:`ClassNames`): stages log it and
record it in their artifacts.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from tedloc.data.records import Problems, strict_if_none
from tedloc.data.textfiles import read_lines

log = logging.getLogger(__name__)

NAMES_FILE = "class_names.txt"
#: Synset files looked for beside the data (ILSVRC's Kaggle release, Caffe's, a plain one).
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "synsets.txt")
SYNSET = re.compile(r"n\d{8}")
_SYNSET_LINE = re.compile(r"(n\d{8})[\s,]+(\S.*)")
_NUMBER_PREFIX = re.compile(r"^\d+\.")


@dataclasses.dataclass(frozen=True)
class ClassNames:
    """Class names in label order and where they came from (for logs and artifacts)."""

    names: list[str]
    source: str


def clean_folder_name(folder: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross``: the number prefix of
    CUB's class folders removed, underscores made spaces."""
    return " ".join(_NUMBER_PREFIX.sub("", folder).replace("_", " ").split())


def clean_folder_names(folders: Sequence[str]) -> list[str]:
    """:func:`clean_folder_name` of each, unless that leaves a name empty or makes two
    names equal (then the folders themselves: labels must keep distinct names)."""
    cleaned = [clean_folder_name(f) for f in folders]
    if all(cleaned) and len(set(cleaned)) == len(cleaned):
        return cleaned
    return list(folders)


def is_synset(name: str) -> bool:
    return bool(SYNSET.fullmatch(name))


def _synset_names(entries: list[tuple[str, str]]) -> dict[str, str]:
    """synset -> a name for prompts, distinct over ``entries`` ((synset, synonyms) pairs)."""
    first = {synset: text.split(",")[0].strip() for synset, text in entries}
    full = {synset: ", ".join(p.strip() for p in text.split(",") if p.strip()) for synset, text in entries}
    first_count = collections.Counter(first.values())
    full_count = collections.Counter(full.values())
    out = {}
    for synset, _ in entries:
        if first_count[first[synset]] == 1:
            out[synset] = first[synset]
        elif full_count[full[synset]] == 1:
            out[synset] = full[synset]
        else:
            out[synset] = f"{full[synset]} ({synset})"
    return out


def read_names_file(path: Path, problems: Problems | None = None) -> tuple[list[str], dict[str, str] | None]:
    """A names file: (names in file order, and the synset map when every line is
    ``synset,name``, else None).  A synset listed twice is reported (the file is broken); a
    name listed twice is logged."""
    problems = strict_if_none(problems)
    lines = read_lines(path, problems)
    if not lines:
        problems.report(path, "no class names in the file")
        return [], None
    matches = [_SYNSET_LINE.fullmatch(text) for _, text in lines]
    if all(matches):
        entries, seen = [], {}
        for (line_no, _), match in zip(lines, matches, strict=True):
            synset = match.group(1)
            if synset in seen:
                problems.report(path, f"synset {synset} listed twice (first on line {seen[synset]})", line_no)
                continue
            seen[synset] = line_no
            entries.append((synset, match.group(2)))
        mapping = _synset_names(entries)
        return [mapping[s] for s, _ in entries], mapping
    names = [text for _, text in lines]
    repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if repeated:  # refused where it matters: by text-embed (equal prompts) and class matching
        log.warning("%s: class names listed more than once: %s", path, ", ".join(repeated[:5]))
    return names, None


def _from_file(path: Path, num_classes: int, exact: bool, folders: Sequence[str] | None,
               problems: Problems, what: str = "") -> ClassNames | None:
    """The names a file gives these labels, or None (reported) when it cannot name them."""
    names, synsets = read_names_file(path, problems)
    if not names:
        return None
    if synsets is not None and folders and all(is_synset(f) for f in folders):
        missing = [f for f in folders if f not in synsets]
        if missing:
            problems.report(path, f"no name for {len(missing)} class synset(s) of the dataset: "
                                  f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
            return None
        return ClassNames([synsets[f] for f in folders], f"{what}{path} (names of the class folders' synset ids)")
    # Without ``exact`` the file defines the classes: the reader checks each label against it.
    if exact and len(names) != num_classes:
        problems.report(path, f"{len(names)} class names for {num_classes} classes "
                              f"(one name per line, in label order)")
        return None
    order = " (synset map, in its order)" if synsets is not None else ""
    return ClassNames(names, f"{what}{path}{order}")


def resolve_class_names(num_classes: int, *, explicit: str | Path | None = None,
                        metadata_dir: Path | None = None, root: Path | None = None,
                        folders: Sequence[str] | None = None, folder_source: str = "",
                        own: Sequence[str] | None = None, own_source: str = "", exact: bool = True,
                        problems: Problems | None = None) -> ClassNames:
    """The class names of a split with labels ``0 .. num_classes - 1`` (see the module
    docstring for the order of sources).

    Args:
        explicit: the ``--class-names`` file, or None.
        metadata_dir, root: where ``class_names.txt`` and synset files are looked for.
        folders: each label's class folder (raw names), or None where there are none.
        folder_source: what ``folders`` are, for the recorded source.
        own: names the format defines itself (kept as they are), or None.
        exact: the dataset has exactly ``num_classes`` classes (a names file must list as
            many); else a names file defines the classes (wsolevaluation: labels index it)
            and ``num_classes`` is the highest label + 1.
    """
    problems = strict_if_none(problems)
    if explicit:
        found = _from_file(Path(explicit), num_classes, exact, folders, problems, "--class-names ")
        if found is not None:
            return found
    places = list(dict.fromkeys(p for p in (metadata_dir, root) if p is not None))
    for place in places:
        if (place / NAMES_FILE).is_file():
            found = _from_file(place / NAMES_FILE, num_classes, exact, folders, problems)
            if found is not None:
                return found
    if own is not None:
        return ClassNames(list(own), own_source)
    synset_files = [place / name for place in places for name in SYNSET_FILES if (place / name).is_file()]
    if folders and len(folders) == num_classes:
        if all(is_synset(f) for f in folders):
            for path in synset_files:
                found = _from_file(path, num_classes, exact, folders, problems)
                if found is not None:
                    return found
            log.warning("class names are WordNet synset ids (%s, ...) and no synset file (%s) was found: "
                        "prompts of ids mean nothing; give --class-names FILE with 'synset,name' lines",
                        folders[0], ", ".join(SYNSET_FILES))
            return ClassNames(list(folders), f"{folder_source} (synset ids: no synset file found)")
        return ClassNames(clean_folder_names(folders), f"{folder_source} (number prefix and underscores removed)")
    for path in synset_files:  # no class folders (ILSVRC val): a synset map's own order
        found = _from_file(path, num_classes, exact, None, problems)
        if found is not None:
            return found
    log.warning("no class names found (no --class-names, %s or class folders): using class_0 .. class_%d; "
                "prompts of these mean nothing", NAMES_FILE, num_classes - 1)
    return ClassNames([f"class_{i}" for i in range(num_classes)], "none found: class_<label>")


def label_folders(items: Sequence[tuple[str, int]], num_classes: int) -> list[str] | None:
    """Each label's class folder, from ``(image id, label)`` pairs whose ids are paths
    (``001.Black_footed_Albatross/x.jpg`` -> ``001.Black_footed_Albatross``): the folder
    holding the images of the label, when every label 0 .. ``num_classes`` - 1 has its images
    in one folder of its own; else None (ILSVRC's ``val/`` holds every class).  A single
    class gives None: one folder of all images says nothing about a class."""
    if num_classes < 2:
        return None
    found: dict[int, set[str]] = collections.defaultdict(set)
    for image_id, label in items:
        found[label].add(Path(image_id.replace("\\", "/")).parent.name)
    folders = []
    for label in range(num_classes):
        names = found.get(label, set())
        if len(names) != 1 or not next(iter(names)):
            return None
        folders.append(next(iter(names)))
    return folders if len(set(folders)) == len(folders) else None
