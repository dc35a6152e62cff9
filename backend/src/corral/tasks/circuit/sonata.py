"""Reading SONATA nodes files (HDF5) into Arrow tables, the way libsonata reads them.

Layout (SONATA spec): ``/nodes/<population>/node_type_id`` (one value per node), and node
groups ``/nodes/<population>/<g>/`` (``g`` = 0, 1, ...), each with one 1-D dataset per attribute
and optionally ``dynamics_params/<name>`` datasets. With several groups, ``node_group_id`` and
``node_group_index`` say which group holds node i and at which row; with one group and no index
node i is row i. An attribute listed under ``<g>/@library/<name>`` is enumerated: the dataset
holds indices into that list of strings, and its values are the strings (libsonata's
``get_attribute``).

The table has ``node_id`` (0..n-1), ``population``, ``node_type_id``, every attribute of any
group (null for nodes whose group lacks it), then every dynamics parameter as
``dynamics_params_<name>`` (libsonata's ``get_dynamics_attribute``). Only this module touches
h5py; ``tests/test_sonata_libsonata.py`` compares its answers with libsonata's. libsonata
itself refuses populations with several groups and reads row i for node i (it ignores
``node_group_index``); there the test compares each group's nodes with libsonata reading them
laid out as a single-group population.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa

DYNAMICS_PREFIX = "dynamics_params_"
_RESERVED = ("node_id", "population", "node_type_id")


class SonataError(ValueError):
    """The file is not a SONATA nodes file we can read; the message says what is wrong."""


class UnknownPopulationError(SonataError):
    """The population asked for is not in the file (the message lists those that are)."""


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


def _one_d(dataset: Any, name: str) -> h5py.Dataset:
    if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1:
        raise SonataError(f"{name} must be a 1-D dataset")
    return dataset


def _values(dataset: h5py.Dataset, name: str) -> pa.Array:
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return pa.array(np.asarray(dataset.asstr()[()], dtype=object), type=pa.string())
    kind = dataset.dtype.kind
    if kind == "S":
        return pa.array([v.decode("utf-8", "replace") for v in dataset[()]], type=pa.string())
    if kind in "biuf":
        return pa.array(np.asarray(dataset[()]))
    raise SonataError(f"attribute {name} has an unsupported type ({dataset.dtype})")


def _enumerated(dataset: h5py.Dataset, library: Any, name: str) -> pa.Array:
    if dataset.dtype.kind not in "iu":
        raise SonataError(f"enumerated attribute {name} must hold integer indices")
    labels = _values(_one_d(library, f"@library/{name}"), f"@library/{name}")
    indices = np.asarray(dataset[()]).astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(labels)):
        raise SonataError(
            f"enumerated attribute {name} has indices outside its @library of {len(labels)} values"
        )
    return pa.DictionaryArray.from_arrays(pa.array(indices), labels).dictionary_decode()


def _group_columns(group: h5py.Group, label: str) -> dict[str, pa.Array]:
    """Every attribute (enumerations resolved) and dynamics parameter of one node group."""
    library = group.get("@library")
    columns: dict[str, pa.Array] = {}
    for attr, item in group.items():
        if isinstance(item, h5py.Group):
            continue  # @library, dynamics_params
        dataset = _one_d(item, f"{label}/{attr}")
        if isinstance(library, h5py.Group) and attr in library:
            columns[attr] = _enumerated(dataset, library[attr], attr)
        else:
            columns[attr] = _values(dataset, f"{label}/{attr}")
    dynamics = group.get("dynamics_params")
    if isinstance(dynamics, h5py.Group):
        for name, item in dynamics.items():
            if isinstance(item, h5py.Dataset):
                columns[DYNAMICS_PREFIX + name] = _values(
                    _one_d(item, f"{label}/dynamics_params/{name}"), name
                )
    reserved = [n for n in columns if n in _RESERVED]
    if reserved:
        raise SonataError(f"{label} has an attribute named {reserved[0]}, which Corral reserves")
    if len({len(a) for a in columns.values()}) > 1:
        raise SonataError(f"{label}: its attributes have different lengths")
    return columns


def _common_type(types: list[pa.DataType], name: str) -> pa.DataType:
    unique = list(dict.fromkeys(types))
    if len(unique) == 1:
        return unique[0]
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in unique):
        return pa.float64() if any(pa.types.is_floating(t) for t in unique) else pa.int64()
    if all(pa.types.is_string(t) for t in unique):
        return pa.string()
    raise SonataError(f"attribute {name} has different types in different node groups")


def read_population(path: str | Path, population: str) -> pa.Table:
    """One population as a table, every node in node-id order."""
    try:
        with _open(path) as handle:
            return _read(handle, population)
    except SonataError:
        raise
    except (OSError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise SonataError(f"could not read the SONATA file: {exc}") from exc


def _read(handle: h5py.File, name: str) -> pa.Table:
    names = _populations(handle)
    if name not in names:
        raise UnknownPopulationError(f"population {name!r} not in file; it has: {', '.join(names)}")
    pop = handle["nodes"][name]
    base = f"/nodes/{name}"
    type_ids = _one_d(pop.get("node_type_id"), f"{base}/node_type_id")
    count = int(type_ids.shape[0])
    group_names = sorted(
        (k for k, v in pop.items() if isinstance(v, h5py.Group) and k.isdigit()), key=int
    )
    groups = {int(g): _group_columns(pop[g], f"{base}/{g}") for g in group_names}
    if "node_group_id" in pop and "node_group_index" in pop:
        group_of = np.asarray(_one_d(pop["node_group_id"], f"{base}/node_group_id")[()])
        row_of = np.asarray(_one_d(pop["node_group_index"], f"{base}/node_group_index")[()])
        if len(group_of) != count or len(row_of) != count:
            raise SonataError(f"{base}: node_group_id/index must have one value per node")
    elif len(groups) > 1:
        raise SonataError(f"{base} has several node groups but no node_group_id/index")
    else:
        group_of = np.zeros(count, dtype=np.int64)
        row_of = np.arange(count, dtype=np.int64)
    unknown = set(np.unique(group_of).tolist()) - set(groups) if count and groups else set()
    if unknown:
        raise SonataError(f"{base}: node_group_id names groups that do not exist: {unknown}")
    columns: dict[str, pa.Array] = {
        "node_id": pa.array(np.arange(count, dtype=np.int64)),
        "population": pa.array([name] * count, type=pa.string()),
        "node_type_id": pa.array(np.asarray(type_ids[()])),
    }
    attributes = list(dict.fromkeys(a for cols in groups.values() for a in cols))
    ordered = sorted(a for a in attributes if not a.startswith(DYNAMICS_PREFIX))
    ordered += sorted(a for a in attributes if a.startswith(DYNAMICS_PREFIX))
    for attr in ordered:
        having = {g: cols[attr] for g, cols in groups.items() if attr in cols}
        kind = _common_type([a.type for a in having.values()], attr)
        if len(having) == 1 and len(groups) == 1:
            array = next(iter(having.values())).cast(kind)
            if count and (row_of.min() < 0 or row_of.max() >= len(array)):
                raise SonataError(f"node_group_index points outside {base}/{attr}")
            values = array.take(pa.array(row_of))
        else:
            pieces = np.full(count, None, dtype=object)
            for g, array in having.items():
                mask = group_of == g
                rows = row_of[mask]
                if rows.size and (rows.min() < 0 or rows.max() >= len(array)):
                    raise SonataError(f"node_group_index points outside {base}/{g}/{attr}")
                pieces[mask] = array.cast(kind).take(pa.array(rows)).to_pylist()
            values = pa.array(pieces.tolist(), type=kind)
        columns[attr] = values
    return pa.table(columns)
