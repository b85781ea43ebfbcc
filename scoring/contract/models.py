"""Pydantic models of the request bodies, as published in ``/openapi.json``.

The decoders (``scoring.contract.decode``: one pass, one numpy matrix) accept exactly what these
models describe, so ``/docs``' "Try it out" and schema-driven clients work as shipped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from scoring.features import SANTANDER_FEATURES as FEATURES

FeatureName = Literal[FEATURES]  # type: ignore[valid-type]

# One realistic row (Santander-like magnitudes, 4 decimals) for the docs' examples.
EXAMPLE_ROW: list[float] = [
    round(6.6 + 4.0 * (((i * 7919) % 200) / 100.0 - 1.0) + (i % 7) * 0.1234, 4)
    for i in range(len(FEATURES))
]

Value = float | None
Row = Annotated[list[Value], Field(min_length=len(FEATURES), max_length=len(FEATURES))]


class SplitFrame(BaseModel):
    """pandas ``DataFrame.to_json(orient="split")``: every feature once, rows in that order."""

    model_config = ConfigDict(extra="forbid")

    columns: list[FeatureName] = Field(
        min_length=len(FEATURES), max_length=len(FEATURES), json_schema_extra={"uniqueItems": True}
    )
    index: list[int | str] | None = None
    data: list[Row] = Field(min_length=1)


Record = create_model(  # type: ignore[call-overload]
    "Record",
    __config__=ConfigDict(extra="forbid"),
    **{name: (Value, ...) for name in FEATURES},
)


class DataframeSplitRequest(BaseModel):
    """MLflow scoring protocol: a split frame under ``dataframe_split``."""

    model_config = ConfigDict(extra="forbid")
    dataframe_split: SplitFrame


class DataframeRecordsRequest(BaseModel):
    """MLflow scoring protocol: one object per row under ``dataframe_records``."""

    model_config = ConfigDict(extra="forbid")
    dataframe_records: list[Record] = Field(min_length=1)


Records = Annotated[list[Record], Field(min_length=1)]
Rows = Annotated[list[Row], Field(min_length=1)]


class InstancesRequest(BaseModel):
    """MLflow scoring protocol (TF-serving style): records, or rows in the model's order."""

    model_config = ConfigDict(extra="forbid")
    instances: Records | Rows


class InputsRequest(BaseModel):
    """MLflow scoring protocol: records, rows in the model's order, or a dict of columns."""

    model_config = ConfigDict(extra="forbid")
    inputs: Records | Rows


def _example_split() -> dict[str, Any]:
    return {"columns": list(FEATURES), "index": [0], "data": [EXAMPLE_ROW]}


def invocations_openapi() -> dict[str, Any]:
    """The ``requestBody`` of POST /invocations, for ``openapi_extra``."""
    json_schema = {
        "oneOf": [
            {"$ref": "#/components/schemas/SplitFrame"},
            {"$ref": "#/components/schemas/DataframeSplitRequest"},
            {"$ref": "#/components/schemas/DataframeRecordsRequest"},
            {"$ref": "#/components/schemas/InstancesRequest"},
            {"$ref": "#/components/schemas/InputsRequest"},
        ]
    }
    header = ",".join(FEATURES)
    csv_example = header + "\n" + ",".join(str(v) for v in EXAMPLE_ROW) + "\n"
    return {
        "requestBody": {
            "required": True,
            "description": "Rows to score: 200 features var_0..var_199, numbers or null.",
            "content": {
                "application/json": {
                    "schema": json_schema,
                    "examples": {
                        "split": {
                            "summary": "pandas to_json(orient='split')",
                            "value": _example_split(),
                        },
                        "dataframe_split": {
                            "summary": "MLflow dataframe_split",
                            "value": {"dataframe_split": _example_split()},
                        },
                        "dataframe_records": {
                            "summary": "MLflow dataframe_records",
                            "value": {
                                "dataframe_records": [dict(zip(FEATURES, EXAMPLE_ROW, strict=True))]
                            },
                        },
                    },
                },
                "text/csv": {
                    "schema": {"type": "string", "description": "CSV with a header row"},
                    "example": csv_example,
                },
                "application/vnd.apache.parquet": {
                    "schema": {"type": "string", "format": "binary"}
                },
                "application/vnd.apache.arrow.stream": {
                    "schema": {"type": "string", "format": "binary"}
                },
            },
        }
    }


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    SplitFrame,
    DataframeSplitRequest,
    DataframeRecordsRequest,
    InstancesRequest,
    InputsRequest,
)
