"""Reading one population of a SONATA nodes file (HDF5) into an Arrow table.

Layout (SONATA spec): ``/nodes/<population>/node_type_id`` (one value per node) and the node
group ``/nodes/<population>/0/<attribute>`` (one 1-D dataset per attribute). An attribute listed
under ``0/@library/<attribute>`` is enumerated: the dataset holds indices into that list of
strings. ``node_group_index`` (when present) maps node i to its row in the group. Populations
with several node groups are refused with a clear message.

The app has its own copy in ``corral/app/datasets/sonata.py`` (the two packages never import each
other); ``tests/test_datasets.py`` checks both read the same file into the same table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa


class SonataError(ValueError):
    """The file is not a SONATA nodes file we can read; the message says what is wrong."""


def _open(path: str | Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SonataError(f"not an HDF5 file ({exc})") from exc


def _populations(handle: h5py.File) -> list[str]:
    nodes = handle.get("nodes")
    if not isinstance(nodes, h5py.Group):
        raise SonataError("not a SONATA nodes file: there is no /nodes group")
    names = sorted(k for k, v in nodes.items() if isinstance(v, h5py.Group))
    if not names:
        raise SonataError("the SONATA file has no node population under /nodes")
    return names


def populations(path: str | Path) -> list[str]:
    with _open(path) as handle:
        return _populations(handle)


def _pick(handle: h5py.File, population: str | None) -> h5py.Group:
    names = _populations(handle)
    if population is None:
        raise SonataError(f"give the population to read; this file has: {', '.join(names)}")
    if population not in names:
        raise SonataError(f"no population {population!r} in this file; it has: {', '.join(names)}")
    group = handle["nodes"][population]
    assert isinstance(group, h5py.Group)
    return group


def _one_d(dataset: Any, name: str) -> h5py.Dataset:
    if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1:
        raise SonataError(f"{name} must be a 1-D dataset")
    return dataset


def _column(dataset: h5py.Dataset, rows: np.ndarray | slice, name: str) -> pa.Array:
    if h5py.check_string_dtype(dataset.dtype) is not None:
        values = dataset.asstr()[rows]
        return pa.array(np.asarray(values, dtype=object), type=pa.string())
    kind = dataset.dtype.kind
    if kind == "S":
        raw = dataset[rows]
        return pa.array([v.decode("utf-8", "replace") for v in raw], type=pa.string())
    if kind in "biuf":
        return pa.array(np.asarray(dataset[rows]))
    raise SonataError(f"attribute {name} has an unsupported type ({dataset.dtype})")


def _enumerated(dataset: h5py.Dataset, library: h5py.Dataset, rows: Any, name: str) -> pa.Array:
    if dataset.dtype.kind not in "iu":
        raise SonataError(f"enumerated attribute {name} must hold integer indices")
    labels = _column(_one_d(library, f"@library/{name}"), slice(None), f"@library/{name}")
    indices = np.asarray(dataset[rows]).astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(labels)):
        raise SonataError(
            f"enumerated attribute {name} has indices outside its @library of {len(labels)} values"
        )
    return pa.DictionaryArray.from_arrays(pa.array(indices), labels).dictionary_decode()


def read_population(
    path: str | Path, population: str | None, *, limit: int | None = None
) -> tuple[pa.Table, int]:
    """The population as a table (its first ``limit`` nodes when given) and its node count.

    Columns: ``node_id``, ``population``, ``node_type_id``, then every attribute of group 0.
    """
    try:
        with _open(path) as handle:
            return _read(handle, population, limit)
    except SonataError:
        raise
    except (OSError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise SonataError(f"could not read the SONATA file: {exc}") from exc


def _read(handle: h5py.File, population: str | None, limit: int | None) -> tuple[pa.Table, int]:
    pop = _pick(handle, population)
    name = pop.name.rsplit("/", 1)[-1]
    type_ids = _one_d(pop.get("node_type_id"), f"/nodes/{name}/node_type_id")
    count = int(type_ids.shape[0])
    take = count if limit is None else min(count, limit)
    groups = sorted(k for k, v in pop.items() if isinstance(v, h5py.Group) and k.isdigit())
    if len(groups) > 1:
        raise SonataError(
            f"population {name} has {len(groups)} node groups; only single-group populations "
            "are supported"
        )
    rows: np.ndarray | slice = slice(0, take)
    group_rows: np.ndarray | slice = rows
    if groups and "node_group_index" in pop:
        index = np.asarray(_one_d(pop["node_group_index"], "node_group_index")[:take])
        if not np.array_equal(index, np.arange(take)):
            group_rows = index
    columns: dict[str, pa.Array] = {
        "node_id": pa.array(np.arange(take, dtype=np.int64)),
        "population": pa.array([name] * take, type=pa.string()),
        "node_type_id": _column(type_ids, rows, "node_type_id"),
    }
    if groups:
        group = pop[groups[0]]
        library = group.get("@library")
        for attr, dataset in group.items():
            if isinstance(dataset, h5py.Group):
                continue  # @library, dynamics_params
            label = f"/nodes/{name}/{groups[0]}/{attr}"
            dataset = _one_d(dataset, label)
            reordered = isinstance(group_rows, np.ndarray)
            if not reordered and dataset.shape[0] != count:
                raise SonataError(f"{label} has {dataset.shape[0]} values for {count} nodes")
            select = slice(None) if reordered else rows
            if isinstance(library, h5py.Group) and attr in library:
                array = _enumerated(dataset, library[attr], select, attr)
            else:
                array = _column(dataset, select, attr)
            if isinstance(group_rows, np.ndarray):
                if group_rows.size and (group_rows.min() < 0 or group_rows.max() >= len(array)):
                    raise SonataError(f"node_group_index points outside {label}")
                array = array.take(pa.array(group_rows))
            columns[attr] = array
    return pa.table(columns), count
