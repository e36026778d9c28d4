"""The row contract (DESIGN.md) as an Arrow schema, with its Hugging Face features."""

from __future__ import annotations

import json

import pyarrow as pa

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
COMPONENT = pa.struct(
    [
        ("centroid", pa.list_(pa.float64())),
        ("bbox", pa.list_(pa.float64())),
        ("area_fraction", pa.float64()),
        ("zone", pa.string()),
    ]
)
REWRITE = pa.struct([("model", pa.string()), ("status", pa.string())])

SCHEMA = pa.schema(
    [
        ("image", IMAGE),
        ("mask", IMAGE),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("question_type", pa.string()),
        ("options", pa.list_(pa.string())),
        ("modality", pa.string()),
        ("source", pa.string()),
        ("case_id", pa.string()),
        ("patient_id", pa.string()),
        ("split", pa.string()),
        ("target", pa.string()),
        ("centroid", pa.list_(pa.float64())),
        ("bbox", pa.list_(pa.float64())),
        ("area_fraction", pa.float64()),
        ("n_components", pa.int32()),
        ("components", pa.list_(COMPONENT)),
        ("quadrant", pa.string()),
        ("zone", pa.string()),
        ("patient_side", pa.string()),
        ("image_id", pa.string()),
        ("source_file", pa.string()),
        ("slice_axis", pa.string()),
        ("slice_index", pa.int32()),
        ("spacing_mm", pa.list_(pa.float64())),
        ("license", pa.string()),
        ("template_id", pa.string()),
        ("rewrite", REWRITE),
        # Columns beyond the contract.
        ("size", pa.string()),
        ("prsmed_position", pa.string()),
        ("prsmed_near_center", pa.bool_()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("row_id", pa.string()),
        # [col_step, row_step, offset, band, strict]: signed distance (patient's left > 0)
        # of a pixel to the body midline (geometry/patient.py); null where unknown
        ("patient_frame", pa.list_(pa.float64())),
        # relation rows: the other structure, "inside" | "outside" (geometry/relations.py)
        # and the other's name in the text
        (
            "relation",
            pa.struct([("target", pa.string()), ("kind", pa.string()), ("name", pa.string())]),
        ),
        # the target's name in the question and answer (qa/names.py); `target` keeps the
        # source's own
        ("target_name", pa.string()),
    ]
)
IMAGE_COLUMNS = ("image", "mask")

_VALUE_TYPES = {
    pa.string(): "string",
    pa.float64(): "float64",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.bool_(): "bool",
    pa.binary(): "binary",
}


def _feature(data_type: pa.DataType) -> dict:
    if pa.types.is_struct(data_type):
        return {field.name: _feature(field.type) for field in data_type}
    if pa.types.is_list(data_type):
        return {"feature": _feature(data_type.value_type), "_type": "List"}
    return {"dtype": _VALUE_TYPES[data_type], "_type": "Value"}


def hf_features() -> dict:
    """The `datasets` Features of SCHEMA as a dict (image and mask are Image features)."""
    return {
        field.name: {"_type": "Image"} if field.name in IMAGE_COLUMNS else _feature(field.type)
        for field in SCHEMA
    }


def schema_with_features() -> pa.Schema:
    """SCHEMA carrying the metadata `datasets` reads to restore Image features."""
    metadata = {"huggingface": json.dumps({"info": {"features": hf_features()}})}
    return SCHEMA.with_metadata(metadata)
