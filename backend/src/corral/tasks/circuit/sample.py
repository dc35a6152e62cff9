"""The shared sample: one cortical column of 50,000 neurons, generated here, the same every time.

Proportions follow the rat hindlimb somatosensory column of Markram et al. (2015, Cell 163:456):
layer thicknesses (165, 149, 353, 190, 525, 700 µm; 2082 µm pia to white matter), neurons per
layer (L6 the most, L1 the fewest), all of L1 inhibitory and about 15 % inhibitory overall;
m-type names in the style of the later SSCx model. Positions fill a disc of 230 µm radius.
``y`` is height above the white matter and ``depth`` the distance below the pia (µm).

Generated lazily (once per process, in a thread) with ``numpy.random.default_rng(SEED)`` and
stored once in the object store under the system owner; every user sees it, nobody can delete it.
"""

from __future__ import annotations

import functools
import io
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corral.app.datasets.extract import CONTENT_TYPES, extract
from corral.app.datasets.schemas import DatasetRecord
from corral.task_schemas import DatasetFormat

SAMPLE_ID = "sample-cortical-column"
SAMPLE_OWNER = "system"
SAMPLE_KEY = f"{SAMPLE_OWNER}/datasets/{SAMPLE_ID}-v1"
SAMPLE_ROWS = 50_000
SEED = 20_150_408
POPULATION = "cortical_column"
REGION = "S1HL"
COLUMN_RADIUS_UM = 230.0
DESCRIPTION = (
    "A synthetic rat somatosensory (hindlimb) cortical column of 50,000 neurons, generated "
    "deterministically by Corral: layer proportions, m-types, e-types and excitatory/inhibitory "
    "fractions after Markram et al. 2015. x/z: position in the column (µm); y: height above the "
    "white matter (µm); depth: distance below the pia (µm)."
)

# layer: (fraction of neurons, top depth, bottom depth, inhibitory fraction)
LAYERS: dict[str, tuple[float, float, float, float]] = {
    "L1": (0.011, 0.0, 165.0, 1.0),
    "L2": (0.080, 165.0, 314.0, 0.18),
    "L3": (0.160, 314.0, 667.0, 0.18),
    "L4": (0.149, 667.0, 857.0, 0.10),
    "L5": (0.195, 857.0, 1382.0, 0.16),
    "L6": (0.405, 1382.0, 2082.0, 0.12),
}
THICKNESS_UM = 2082.0
EXC_MTYPES: dict[str, dict[str, float]] = {
    "L2": {"L2_IPC": 0.2, "L2_TPC:A": 0.4, "L2_TPC:B": 0.4},
    "L3": {"L3_TPC:A": 0.6, "L3_TPC:C": 0.4},
    "L4": {"L4_SSC": 0.4, "L4_TPC": 0.35, "L4_UPC": 0.25},
    "L5": {"L5_TPC:A": 0.3, "L5_TPC:B": 0.25, "L5_TPC:C": 0.2, "L5_UPC": 0.25},
    "L6": {
        "L6_BPC": 0.2, "L6_HPC": 0.1, "L6_IPC": 0.2, "L6_TPC:A": 0.25, "L6_TPC:C": 0.15,
        "L6_UPC": 0.1,
    },
}  # fmt: skip
L1_MTYPES = {
    "L1_DAC": 0.25, "L1_HAC": 0.15, "L1_LAC": 0.1, "L1_NGC-DA": 0.25, "L1_NGC-SA": 0.15,
    "L1_SAC": 0.1,
}  # fmt: skip
INH_CLASSES = {
    "BP": 0.03, "BTC": 0.08, "CHC": 0.04, "DBC": 0.06, "LBC": 0.3, "MC": 0.25, "NBC": 0.15,
    "NGC": 0.04, "SBC": 0.05,
}  # fmt: skip
INH_ETYPES = {
    "cNAC": 0.3, "bNAC": 0.1, "dNAC": 0.05, "cAC": 0.2, "bAC": 0.1, "cIR": 0.07, "bIR": 0.05,
    "cSTUT": 0.06, "bSTUT": 0.04, "dSTUT": 0.03,
}  # fmt: skip


def _inh_mtypes(layer: str) -> dict[str, float]:
    if layer == "L1":
        return L1_MTYPES
    prefix = "L23" if layer in {"L2", "L3"} else layer
    return {f"{prefix}_{name}": weight for name, weight in INH_CLASSES.items()}


def _choice(rng: np.random.Generator, options: dict[str, float], size: int) -> np.ndarray:
    names = list(options)
    weights = np.array([options[n] for n in names], dtype=float)
    return rng.choice(np.array(names, dtype=object), size=size, p=weights / weights.sum())


def layer_counts(total: int = SAMPLE_ROWS) -> dict[str, int]:
    counts = {layer: int(total * spec[0]) for layer, spec in LAYERS.items()}
    counts["L6"] += total - sum(counts.values())
    return counts


def generate(rows: int = SAMPLE_ROWS, seed: int = SEED) -> pa.Table:
    """The sample population as an Arrow table (``rows`` neurons, sorted by layer)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("layer", "mtype", "etype", "synapse_class", "depth")
    }
    for layer, n in layer_counts(rows).items():
        _, top, bottom, inh_fraction = LAYERS[layer]
        inhibitory = rng.random(n) < inh_fraction
        n_inh = int(inhibitory.sum())
        mtype = np.empty(n, dtype=object)
        etype = np.empty(n, dtype=object)
        mtype[inhibitory] = _choice(rng, _inh_mtypes(layer), n_inh)
        etype[inhibitory] = _choice(rng, INH_ETYPES, n_inh)
        if n - n_inh:
            mtype[~inhibitory] = _choice(rng, EXC_MTYPES[layer], n - n_inh)
            etype[~inhibitory] = "cADpyr"
        parts["layer"].append(np.full(n, layer, dtype=object))
        parts["mtype"].append(mtype)
        parts["etype"].append(etype)
        parts["synapse_class"].append(np.where(inhibitory, "INH", "EXC").astype(object))
        parts["depth"].append(rng.uniform(top, bottom, n))
    layers = np.concatenate(parts["layer"])
    synapse_class = np.concatenate(parts["synapse_class"])
    depth = np.round(np.concatenate(parts["depth"]), 1)
    radius = COLUMN_RADIUS_UM * np.sqrt(rng.random(rows))
    angle = rng.uniform(0.0, 2 * np.pi, rows)
    return pa.table(
        {
            "node_id": pa.array(np.arange(rows, dtype=np.int64)),
            "population": pa.array([POPULATION] * rows, type=pa.string()),
            "region": pa.array([REGION] * rows, type=pa.string()),
            "layer": pa.array(layers, type=pa.string()),
            "mtype": pa.array(np.concatenate(parts["mtype"]), type=pa.string()),
            "etype": pa.array(np.concatenate(parts["etype"]), type=pa.string()),
            "morph_class": pa.array(
                np.where(synapse_class == "INH", "INT", "PYR").astype(object), type=pa.string()
            ),
            "synapse_class": pa.array(synapse_class, type=pa.string()),
            "x": pa.array(np.round(radius * np.cos(angle), 1)),
            "y": pa.array(np.round(THICKNESS_UM - depth, 1)),
            "z": pa.array(np.round(radius * np.sin(angle), 1)),
            "depth": pa.array(depth),
        }
    )


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


@functools.cache
def build(preview_rows: int) -> tuple[bytes, DatasetRecord]:
    """The Parquet file and its record (computed once per process; call it in a thread)."""
    data = parquet_bytes(generate())
    with tempfile.TemporaryDirectory(prefix="corral-sample-") as tmp:
        path = Path(tmp) / "sample.parquet"
        path.write_bytes(data)
        found = extract(path, DatasetFormat.PARQUET, None, preview_rows)
    record = DatasetRecord(
        id=SAMPLE_ID,
        owner_id=SAMPLE_OWNER,
        name="Sample cortical column (50k neurons)",
        format=DatasetFormat.PARQUET,
        key=SAMPLE_KEY,
        size=len(data),
        row_count=found.row_count,
        columns=found.columns,
        sample_rows=found.sample_rows,
        description=DESCRIPTION,
        read_only=True,
        created_at=datetime(2015, 10, 8, tzinfo=UTC),
    )
    return data, record


CONTENT_TYPE = CONTENT_TYPES[DatasetFormat.PARQUET]
