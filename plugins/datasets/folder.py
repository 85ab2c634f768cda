"""The ``folder`` dataset: images listed in a generic index CSV (see ``folder_format``).

``--data`` is a folder holding ``index.csv`` (another name: ``--set dataset.index=NAME``) or
the CSV itself. It reads what ``hcibench data synth`` writes, and what any other program writes
in the same spirit: one row per image with its path(s), source, batch, plate, well, compound and
label, under those names or others (``--set dataset.columns='{"label": "moa"}'``). A
``classes.txt`` beside the CSV, when present, gives the class list and its order.
"""

from __future__ import annotations

import hcibench
from hcibench_plugins.datasets.files.filedataset import FileDataset
from hcibench_plugins.datasets.files.folder_format import (
    CLASSES_FILE,
    FIELDS,
    INDEX_FILE,
    index_path,
    read_index,
)


class FolderDataset(FileDataset):
    name = "folder"
    description = "Images listed in an index CSV (path(s), source, batch, plate, well, compound, label)"

    # channel_columns: the index's per-channel path columns under other names than path_<CH>
    # (a list in channel order, or an object channel -> column); CellProfiler's FileName_<CH>
    # and PathName_<CH> pairs are recognised without it.
    EXTRA_OPTIONS = {"index": INDEX_FILE, "strip_channels": None, "channel_columns": None}
    FIELDS = list(FIELDS)

    def build_index(self):
        return read_index(
            self.root,
            self.renames,
            self.settings["channels"],
            self.settings["strip_channels"],
            str(self.settings["index"]),
            self.map_path,
            self.settings["channel_columns"],
        )

    def default_classes_file(self):
        path = index_path(self.root, str(self.settings["index"])).parent / CLASSES_FILE
        return path if path.is_file() else None


@hcibench.hookimpl
def register_datasets(register):
    register(FolderDataset)
