"""Corral's SONATA reader answers what libsonata (the reference reader) answers.

The file is written here to the SONATA spec: a population with two node groups (with
``node_group_id``/``node_group_index`` interleaving them, rows out of order), an enumerated
attribute (``@library``), attributes only one group has, and ``dynamics_params`` in both
groups; plus a second, single-group population. Every attribute and dynamics parameter is
compared node by node, and the Parquet that ``circuit.ingest`` writes holds the same values.

libsonata itself refuses populations with several node groups ("Only single-group populations
are supported"), so for those the reference is libsonata reading, for each group, the same
nodes written as a single-group population (same rows, same ``node_group_index``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import libsonata  # type: ignore[import-untyped]
import numpy as np
import pyarrow.parquet as pq
import pytest

from corral.tasks.circuit import sonata
from corral.tasks.circuit.ingest import sonata_to_parquet

MTYPES = ["L5_TPC:A", "L5_MC", "L6_IPC", "L23_LBC"]


def write_spec_file(path: Path, reference: Path) -> None:
    rng = np.random.default_rng(11)
    n = 30
    group_of = rng.integers(0, 2, n)  # nodes of groups 0 and 1, interleaved
    sizes = [int((group_of == g).sum()) for g in (0, 1)]
    row_of = np.empty(n, dtype=np.int64)
    for g in (0, 1):
        rows = rng.permutation(sizes[g])  # each group's rows out of node order
        row_of[group_of == g] = rows
    with h5py.File(path, "w") as f:
        f.attrs["version"] = [0, 1]
        f.attrs["magic"] = 0x0A7A
        pop = f.create_group("nodes/cortex")
        pop.create_dataset("node_type_id", data=rng.integers(100, 104, n).astype(np.int64))
        pop.create_dataset("node_group_id", data=group_of.astype(np.uint32))
        pop.create_dataset("node_group_index", data=row_of.astype(np.uint64))
        for g, size in enumerate(sizes):
            group = pop.create_group(str(g))
            group.create_dataset("x", data=np.round(rng.uniform(-100, 100, size), 3))
            group.create_dataset("layer", data=rng.integers(1, 7, size).astype(np.int32))
            group.create_dataset("mtype", data=rng.integers(0, len(MTYPES), size).astype(np.uint32))
            group.create_group("@library").create_dataset(
                "mtype", data=np.array(MTYPES, dtype=object), dtype=h5py.string_dtype()
            )
            dynamics = group.create_group("dynamics_params")
            dynamics.create_dataset("holding_current", data=rng.normal(0, 0.1, size))
            if g == 0:
                group.create_dataset(
                    "model_template",
                    data=np.array(["hoc:cADpyr"] * size, dtype=object),
                    dtype=h5py.string_dtype(),
                )
                dynamics.create_dataset("threshold_current", data=rng.uniform(0.1, 0.5, size))
            else:
                group.create_dataset("morph_class", data=rng.integers(0, 2, size).astype(np.int8))
        _write_reference(pop, group_of, row_of, reference)
        thal = f.create_group("nodes/thalamus")
        thal.create_dataset("node_type_id", data=np.full(5, 7, dtype=np.int64))
        g0 = thal.create_group("0")
        g0.create_dataset("x", data=np.arange(5, dtype=np.float64))
        g0.create_group("dynamics_params").create_dataset("gain", data=np.linspace(1, 2, 5))


def _write_reference(pop: h5py.Group, group_of: Any, row_of: Any, reference: Path) -> None:
    """Each group's nodes as their own single-group population ``cortex_g<g>``, its rows in
    node order (libsonata reads row i for node i: it ignores ``node_group_index``)."""
    with h5py.File(reference, "w") as ref:
        for g in (0, 1):
            mask = group_of == g
            rows = row_of[mask]
            out = ref.create_group(f"nodes/cortex_g{g}")
            out.create_dataset("node_type_id", data=pop["node_type_id"][()][mask])
            group = out.create_group("0")
            source = pop[str(g)]
            source.copy(source["@library"], group, name="@library")
            for folder in ("", "dynamics_params/"):
                for name, item in source[folder or "."].items():
                    if isinstance(item, h5py.Dataset):
                        group.create_dataset(folder + name, data=item[()][rows], dtype=item.dtype)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sonata")
    path, reference = folder / "nodes.h5", folder / "reference.h5"
    write_spec_file(path, reference)
    return path, reference


@pytest.fixture(scope="module")
def spec_file(files: tuple[Path, Path]) -> Path:
    return files[0]


def _ids_with(pop: Any, name: str, dynamics: bool) -> list[int]:
    """Node ids libsonata can read ``name`` for (the nodes whose group has it)."""
    getter = pop.get_dynamics_attribute if dynamics else pop.get_attribute
    ids = []
    for node in range(pop.size):
        try:
            getter(name, libsonata.Selection([node]))
        except libsonata.SonataError:
            continue
        ids.append(node)
    return ids


def _same(ours: list[Any], theirs: list[Any], what: str) -> None:
    assert len(ours) == len(theirs), what
    for a, b in zip(ours, theirs, strict=True):
        if isinstance(b, float):
            assert a == pytest.approx(b), what
        else:
            assert a == b, what


def _compare(pop: Any, table: Any, what: str) -> int:
    """Every attribute and dynamics parameter libsonata reads for ``pop`` equals ``table``'s
    (``table``: our rows for the same nodes, in the same order). Returns how many compared."""
    assert table.num_rows == pop.size, what
    compared = 0
    everyone = pop.select_all()
    for name in sorted(pop.attribute_names):
        theirs = np.asarray(pop.get_attribute(name, everyone)).tolist()
        _same(table.column(name).to_pylist(), theirs, f"{what}/{name}")
        compared += 1
    for name in sorted(pop.dynamics_attribute_names):
        theirs = np.asarray(pop.get_dynamics_attribute(name, everyone)).tolist()
        column = table.column(sonata.DYNAMICS_PREFIX + name).to_pylist()
        _same(column, theirs, f"{what}/dynamics_params/{name}")
        compared += 1
    return compared


def test_single_group_population_matches_libsonata(spec_file: Path) -> None:
    storage = libsonata.NodeStorage(str(spec_file))
    assert sorted(storage.population_names) == sonata.populations(spec_file)
    pop = storage.open_population("thalamus")
    table = sonata.read_population(spec_file, "thalamus")
    assert table.column("node_id").to_pylist() == list(range(pop.size))
    assert _compare(pop, table, "thalamus") == 2  # x and dynamics_params/gain


def test_multi_group_population_matches_libsonata_per_group(files: tuple[Path, Path]) -> None:
    spec_file, reference = files
    table = sonata.read_population(spec_file, "cortex")
    with h5py.File(spec_file, "r") as f:
        group_of = f["nodes/cortex/node_group_id"][()]
    assert table.column("node_id").to_pylist() == list(range(len(group_of)))
    storage = libsonata.NodeStorage(str(reference))
    with pytest.raises(libsonata.SonataError, match="single-group"):
        libsonata.NodeStorage(str(spec_file)).open_population("cortex")
    compared = 0
    for g in (0, 1):
        pop = storage.open_population(f"cortex_g{g}")
        rows = table.take(np.flatnonzero(group_of == g))
        compared += _compare(pop, rows, f"cortex group {g}")
        # What the other group has and this one lacks is null here.
        missing = {"model_template", "dynamics_params_threshold_current"} if g else {"morph_class"}
        for name in missing:
            assert rows.column(name).null_count == rows.num_rows, name
    # group 0: layer, model_template, mtype, x + 2 dynamics; group 1: layer, morph_class,
    # mtype, x + 1 dynamics
    assert compared == 6 + 5


def test_enumeration_and_partial_attributes(files: tuple[Path, Path]) -> None:
    spec_file, reference = files
    pop = libsonata.NodeStorage(str(reference)).open_population("cortex_g0")
    assert "mtype" in pop.enumeration_names  # an @library attribute reads as its strings
    assert set(pop.get_attribute("mtype", pop.select_all())) <= set(MTYPES)
    table = sonata.read_population(spec_file, "cortex")
    assert set(table.column("mtype").to_pylist()) <= set(MTYPES)
    # model_template: group 0 only; morph_class: group 1 only; every node has exactly one.
    assert 0 < table.column("model_template").null_count < table.num_rows
    assert (
        table.column("model_template").null_count + table.column("morph_class").null_count
        == table.num_rows
    )


def test_ingest_parquet_holds_every_population(spec_file: Path, tmp_path: Path) -> None:
    """What ``circuit.ingest`` writes: every population's rows, the same values."""
    out = tmp_path / "nodes.parquet"
    assert sonata_to_parquet(spec_file, out) == ["cortex", "thalamus"]
    written = pq.read_table(out)
    for name in ("cortex", "thalamus"):
        mask = np.asarray(written.column("population").to_pylist()) == name
        rows = written.filter(mask)
        table = sonata.read_population(spec_file, name)
        assert rows.num_rows == table.num_rows
        for column in table.column_names:
            assert rows.column(column).to_pylist() == table.column(column).to_pylist(), column
    thalamus = libsonata.NodeStorage(str(spec_file)).open_population("thalamus")
    gains = written.filter(np.asarray(written.column("population").to_pylist()) == "thalamus")
    assert gains.column("dynamics_params_gain").to_pylist() == pytest.approx(
        list(thalamus.get_dynamics_attribute("gain", thalamus.select_all()))
    )
