"""The request contract: pydantic models that validate every JSON body and publish the schema.

One definition. ``contract_for(features)`` builds, for the served model's own feature list, the
models that ``scoring.contract.decode`` validates JSON bodies with (pydantic-core, straight from
the bytes) and that ``/openapi.json`` publishes, so the two cannot drift. What JSON Schema cannot
say (row lengths equal to the columns, ``index`` as long as ``data``, each column once) is checked
by validators on the same models and stated in their descriptions.

Bodies, by their top-level key (the MLflow scoring protocol, plus pandas' own split frame)::

    {"columns": [...], "index": [...], "data": [[...]]}           pandas to_json(orient="split")
    {"dataframe_split": {...split...}, "params": {...}}
    {"dataframe_records": [{"var_0": ..., ...}], "params": {...}}
    {"instances": records | rows | {column: [values]}, "params": {...}}
    {"inputs": records | rows | {column: [values]}, "params": {...}}

Values are numbers or ``null``; ``NaN`` tokens (what Python's json and MLflow's clients write for
a missing value) are read as missing values too. ``params`` are accepted and ignored: these models
take no inference parameters. Errors raised inside validators carry this service's error codes as
their pydantic error types (see ``decode.to_service_error``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

from scoring.errors import (
    DuplicateColumns,
    InvalidInput,
    MissingColumns,
    RowLengthMismatch,
    ServiceError,
    UnknownColumns,
    name_list,
)
from scoring.features import SANTANDER_FEATURES, feature_range

PROTOCOL_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
ENVELOPE = "envelope"  # the pydantic error type of a body whose shape no model matches
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=True)

Value = Annotated[float | None, Field(description="a number, or null (or NaN) for missing")]
Params = Annotated[
    dict[str, Any] | None,
    Field(description="MLflow inference parameters: accepted and ignored (this model takes none)"),
]


def as_pydantic_error(exc: ServiceError) -> PydanticCustomError:
    """A service error raised inside a validator: its code is the pydantic error type."""
    return PydanticCustomError(exc.error_code, "{message}", {"message": exc.message})


def column_problem(columns: Sequence[str], features: Sequence[str]) -> ServiceError | None:
    """What is wrong with a list of column names for a model taking ``features``, or None.

    Every feature exactly once, in any order; nothing else.
    """
    if len(columns) == len(features) and list(columns) == list(features):
        return None  # the usual case, the model's own order: one comparison
    seen: set[str] = set()
    dups = [c for c in columns if c in seen or seen.add(c)]  # type: ignore[func-returns-value]
    if dups:
        return DuplicateColumns(f"duplicated column(s) {name_list(dict.fromkeys(dups))}")
    wanted = set(features)
    unknown = [c for c in columns if c not in wanted]
    if unknown:
        return UnknownColumns(
            f"unknown column(s) {name_list(unknown)}; the model takes {feature_range(features)}"
        )
    missing = [f for f in features if f not in seen]
    if missing:
        return MissingColumns(f"missing column(s) {name_list(missing)}")
    return None


def _columns_type(features: tuple[str, ...]) -> Any:
    def check(columns: list[str]) -> list[str]:
        problem = column_problem(columns, features)
        if problem is not None:
            raise as_pydantic_error(problem)
        return columns

    schema = {
        "type": "array",
        "items": {"type": "string", "enum": list(features)},
        "minItems": len(features),
        "maxItems": len(features),
        "uniqueItems": True,
        "description": "every feature exactly once, in any order: the order of each row",
    }
    return Annotated[list[str], AfterValidator(check), WithJsonSchema(schema)]


def _columnar_type(features: tuple[str, ...]) -> Any:
    def check(columns: dict[str, list[float | None]]) -> dict[str, list[float | None]]:
        problem = column_problem(list(columns), features)
        if problem is not None:
            raise as_pydantic_error(problem)
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise as_pydantic_error(RowLengthMismatch("the columns have different lengths"))
        if lengths == {0}:
            raise PydanticCustomError("EMPTY_INPUT", "no rows to score: the columns are empty")
        return columns

    column = {"type": "array", "items": {"type": ["number", "null"]}, "minItems": 1}
    schema = {
        "type": "object",
        "properties": dict.fromkeys(features, column),
        "required": list(features),
        "additionalProperties": False,
        "description": "one list of values per feature, all of the same length",
    }
    return Annotated[dict[str, list[float | None]], AfterValidator(check), WithJsonSchema(schema)]


def _discriminator(pick: Callable[[Any], str | None], message: str) -> Any:
    return Discriminator(pick, custom_error_type=ENVELOPE, custom_error_message=message)


def _pick_shape(value: Any) -> str | None:
    """records, rows or columns: the three shapes ``instances`` and ``inputs`` take."""
    if isinstance(value, dict):
        return "columns"
    if isinstance(value, list):
        return "records" if value and isinstance(value[0], dict) else "rows"
    return None


def _pick_envelope(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    found = [k for k in PROTOCOL_KEYS if k in value]
    if len(found) == 1:
        return found[0]
    if not found and ("columns" in value or "data" in value):
        return "split"
    return None


@dataclass(frozen=True)
class Contract:
    """The request models for one feature list, and the validators built from them."""

    features: tuple[str, ...]
    models: tuple[type[BaseModel], ...]
    """Published under ``components/schemas`` (the split frame, the four protocol bodies)."""
    body: TypeAdapter[Any]
    """Validates an ``application/json`` body (one of ``models``)."""
    records: TypeAdapter[Any]
    """Validates a top-level list of records (MLflow 1.x ``format=pandas-records``)."""

    def components(self) -> dict[str, Any]:
        """JSON Schema of every model, keyed by name, refs as ``#/components/schemas/{name}``."""
        _, defs = models_json_schema(
            [(m, "validation") for m in self.models],
            ref_template="#/components/schemas/{model}",
        )
        return dict(defs["$defs"])


@functools.lru_cache(maxsize=8)
def contract_for(features: tuple[str, ...] = SANTANDER_FEATURES) -> Contract:
    """The contract of a model taking ``features`` (cached: models are built once per list)."""
    n = len(features)
    columns_type: Any = _columns_type(features)
    row_type: Any = Annotated[
        list[Value],
        Field(min_length=n, max_length=n, description=f"{n} values in the order of 'columns'"),
    ]

    class SplitFrame(BaseModel):
        """pandas ``DataFrame.to_json(orient="split")``: every feature once, rows in that order."""

        model_config = STRICT

        columns: columns_type
        index: Annotated[
            list[int | str] | None,
            Field(description="row labels, one per row (not used for scoring)"),
        ] = None
        data: Annotated[list[row_type], Field(min_length=1)]

        @model_validator(mode="after")
        def _index_per_row(self) -> SplitFrame:
            if self.index is not None and len(self.index) != len(self.data):
                raise as_pydantic_error(
                    InvalidInput(
                        f"'index' has {len(self.index)} entries but 'data' has "
                        f"{len(self.data)} rows; give one label per row, or no 'index'"
                    )
                )
            return self

    record: Any = create_model(  # type: ignore[call-overload]
        "Record",
        __config__=STRICT,
        __doc__="One row: every feature by name.",
        **{name: (Value, ...) for name in features},
    )
    records_type: Any = Annotated[list[record], Field(min_length=1)]
    rows_type: Any = Annotated[list[row_type], Field(min_length=1)]
    shapes: Any = Annotated[
        Annotated[records_type, Tag("records")]
        | Annotated[rows_type, Tag("rows")]
        | Annotated[_columnar_type(features), Tag("columns")],
        _discriminator(_pick_shape, "records, rows, or an object of columns"),
    ]

    class DataframeSplitRequest(BaseModel):
        """MLflow scoring protocol: a split frame under ``dataframe_split``."""

        model_config = STRICT
        dataframe_split: SplitFrame
        params: Params = None

    class DataframeRecordsRequest(BaseModel):
        """MLflow scoring protocol: one object per row under ``dataframe_records``."""

        model_config = STRICT
        dataframe_records: records_type
        params: Params = None

    class InstancesRequest(BaseModel):
        """MLflow scoring protocol (TF-serving style): records, rows in the model's order, or
        an object of columns."""

        model_config = STRICT
        instances: shapes
        params: Params = None

    class InputsRequest(BaseModel):
        """MLflow scoring protocol: records, rows in the model's order, or an object of columns."""

        model_config = STRICT
        inputs: shapes
        params: Params = None

    body: Any = Annotated[
        Annotated[SplitFrame, Tag("split")]
        | Annotated[DataframeSplitRequest, Tag("dataframe_split")]
        | Annotated[DataframeRecordsRequest, Tag("dataframe_records")]
        | Annotated[InstancesRequest, Tag("instances")]
        | Annotated[InputsRequest, Tag("inputs")],
        _discriminator(_pick_envelope, "unrecognized JSON body"),
    ]
    models = (
        SplitFrame,
        DataframeSplitRequest,
        DataframeRecordsRequest,
        InstancesRequest,
        InputsRequest,
    )
    return Contract(features, models, TypeAdapter(body), TypeAdapter(records_type))


# --- the published requestBody, with a worked example per format ---------------------------


def example_row(features: Sequence[str]) -> list[float]:
    """One realistic row (Santander-like magnitudes, 4 decimals) for the docs' examples."""
    return [
        round(6.6 + 4.0 * (((i * 7919) % 200) / 100.0 - 1.0) + (i % 7) * 0.1234, 4)
        for i in range(len(features))
    ]


_NUMBER = r"(-?[0-9]{1,6}(\.[0-9]{1,6})?)?"


def csv_pattern(features: Sequence[str]) -> str:
    """A regular expression of the CSV bodies the schema promises: the header in the model's
    order, then rows of numbers (an empty cell is a missing value). Other column orders are
    accepted too, as the description says; a pattern cannot enumerate them."""
    header = ",".join(features)
    row = _NUMBER + ("," + _NUMBER) * (len(features) - 1)
    return f"^{header}(\\r?\\n{row})+\\r?\\n?$"


def invocations_openapi(features: tuple[str, ...] = SANTANDER_FEATURES) -> dict[str, Any]:
    """The ``requestBody`` of POST /invocations for a model taking ``features``."""
    row = example_row(features)
    split = {"columns": list(features), "index": [0], "data": [row]}
    record = dict(zip(features, row, strict=True))
    csv_example = ",".join(features) + "\n" + ",".join(str(v) for v in row) + "\n"
    described = f"{len(features)} features {feature_range(features)}"
    return {
        "requestBody": {
            "required": True,
            "description": f"Rows to score: {described}, numbers or null.",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/SplitFrame"},
                            {"$ref": "#/components/schemas/DataframeSplitRequest"},
                            {"$ref": "#/components/schemas/DataframeRecordsRequest"},
                            {"$ref": "#/components/schemas/InstancesRequest"},
                            {"$ref": "#/components/schemas/InputsRequest"},
                        ]
                    },
                    "examples": {
                        "split": {"summary": "pandas to_json(orient='split')", "value": split},
                        "dataframe_split": {
                            "summary": "MLflow dataframe_split",
                            "value": {"dataframe_split": split},
                        },
                        "dataframe_records": {
                            "summary": "MLflow dataframe_records",
                            "value": {"dataframe_records": [record]},
                        },
                        "instances": {
                            "summary": "MLflow instances (rows in the model's order)",
                            "value": {"instances": [row]},
                        },
                        "inputs": {
                            "summary": "MLflow inputs (an object of columns)",
                            "value": {"inputs": {k: [v] for k, v in record.items()}},
                        },
                    },
                },
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "pattern": csv_pattern(features),
                        "description": "CSV with a header row naming every feature once (any "
                        "order); empty cells, null, NaN or NA are missing values",
                    },
                    "example": csv_example,
                },
                "application/vnd.apache.parquet": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": f"a Parquet file with {described} as numeric columns",
                    }
                },
                "application/vnd.apache.arrow.stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": f"an Arrow IPC stream with {described} as numeric columns",
                    }
                },
            },
        }
    }
