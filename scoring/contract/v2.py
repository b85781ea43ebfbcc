"""The Open Inference Protocol (KServe V2) over REST: its messages, and the decoder that turns an
inference request into the same validated float64 matrix ``/invocations`` scores.

The model has one output, ``predictions`` (FP64, one value per row: P(target = 1)), and takes its
features in one of two layouts::

    one 2-D tensor [N, F], any name, columns in the model's feature order   (Triton, KServe)
    one 1-D tensor [N] (or [N, 1]) per feature, named after it, any order   (MLServer's pandas
                                                                            codec, "content_type":
                                                                            "pd")

Datatypes FP64, FP32, FP16 and the integer ones are read (as float64); BOOL and BYTES are refused.
Tensor data comes as JSON (``data``: flat in row-major order, or nested as the shape) or as
Triton's binary tensor data extension: the body is the JSON header (its length in the
``Inference-Header-Content-Length`` HTTP header) followed by each binary input's bytes, in input
order, each input saying its byte count in ``parameters.binary_data_size``. Outputs are binary
when the request asks (``binary_data`` on the requested output, or ``binary_data_output`` on the
request).

The checks are the contract's (``scoring.contract``): every feature exactly once
(``column_problem``), the row limit (``check_row_count``), NaN or ``null`` as a missing value and
an infinity refused (``check_finite``). Problems raise ``scoring.errors`` errors naming the input
at fault; the HTTP door answers them as the protocol's ``{"error": "..."}``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from scoring.contract.decode import check_finite, check_row_count
from scoring.contract.models import column_problem, example_row
from scoring.errors import (
    BadRequest,
    InvalidInput,
    InvalidValue,
    RowLengthMismatch,
    ServiceError,
    quote_name,
)
from scoring.features import feature_range

DEFAULT_MODEL_NAME = "model"
"""The name a model served without a registered name answers to (``/v2/models/model``)."""
OUTPUT = "predictions"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]

# Little-endian, as the binary tensor data extension and Triton's clients lay tensors out.
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "FP64": "<f8",
        "FP32": "<f4",
        "FP16": "<f2",
        "INT64": "<i8",
        "INT32": "<i4",
        "INT16": "<i2",
        "INT8": "i1",
        "UINT64": "<u8",
        "UINT32": "<u4",
        "UINT16": "<u2",
        "UINT8": "u1",
    }.items()
}
_NONE = type(None)

TensorData = Annotated[
    list[Any],
    WithJsonSchema(
        {
            "type": "array",
            "items": {"type": ["number", "null", "array"]},
            "description": "the values, flat in row-major order or nested as the shape; "
            "null or NaN is a missing value",
        }
    ),
]
Parameters = Annotated[dict[str, Any] | None, Field(description="the protocol's parameters")]
_MESSAGE = ConfigDict(strict=True, allow_inf_nan=True)


class RequestInput(BaseModel):
    """One input tensor of an inference request."""

    model_config = _MESSAGE

    name: str = Field(examples=["input-0"])
    shape: list[Annotated[int, Field(ge=0)]] = Field(examples=[[1, 200]])
    # Published as the datatypes this service reads; any other string still reaches the handler,
    # which names what is wrong with it (BOOL and BYTES: not a number type).
    datatype: Annotated[
        str, WithJsonSchema({"type": "string", "enum": list(DATATYPES), "examples": ["FP64"]})
    ]
    parameters: Parameters = None
    data: TensorData | None = None


class RequestOutput(BaseModel):
    """An output the client asks for (``predictions``), binary or JSON."""

    model_config = _MESSAGE

    name: str = Field(examples=[OUTPUT])
    parameters: Parameters = None


class InferenceRequest(BaseModel):
    """``POST /v2/models/{name}/infer``: the inputs, and optionally which outputs, how."""

    model_config = _MESSAGE

    id: str | None = None
    parameters: Parameters = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    """The model's answer: ``predictions``, P(target = 1) per row, in input order."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``: the model's name, versions, inputs and outputs."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(BaseModel):
    """``GET /v2``: the server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class V2Error(BaseModel):
    """Every V2 error: the protocol's ``error``, and this service's stable ``error_code``."""

    error: str = Field(examples=["missing column(s) 'var_7'"])
    error_code: str = Field(examples=["MISSING_COLUMNS"])


def model_metadata(
    name: str, version: str | None, platform: str, features: Sequence[str]
) -> ModelMetadata:
    """The inputs are the features (FP64, one value per row), the output the probabilities."""
    return ModelMetadata(
        name=name,
        versions=[version] if version else [],
        platform=platform,
        inputs=[MetadataTensor(name=f, datatype="FP64", shape=[-1]) for f in features],
        outputs=[MetadataTensor(name=OUTPUT, datatype="FP64", shape=[-1])],
    )


# --- requests ---------------------------------------------------------------------------------


def decode_request(
    body: bytes, header_length: str | None, features: Sequence[str], max_rows: int
) -> tuple[InferenceRequest, np.ndarray]:
    """The request, and its rows as an ``(n, len(features))`` float64 matrix in the model's order.

    ``header_length``: the ``Inference-Header-Content-Length`` header, if any (binary data).

    Raises:
        ServiceError: a subclass naming the input at fault.
    """
    header, blobs = _split_body(body, header_length)
    if not header.strip():
        raise BadRequest("the request body is empty; send a V2 inference request (JSON)")
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        raise _to_service_error(exc) from None
    _check_outputs(request)
    binary = _binary_inputs(request, blobs)
    names = [i.name for i in request.inputs]
    content_type = (request.parameters or {}).get("content_type")
    if content_type != "pd" and len(request.inputs) == 1 and names[0] not in features:
        x = _matrix(request.inputs[0], binary.get(0), features, max_rows)
    else:
        x = _columns(request, binary, features, max_rows)
    check_finite(x, features)
    return request, x


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit():
        raise BadRequest(f"{HEADER_LENGTH} must be a byte count (a non-negative integer)")
    n = int(text)
    if n > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {n} bytes, beyond the body's {len(body)}")
    return body[:n], body[n:]


def _binary_inputs(request: InferenceRequest, blobs: bytes) -> dict[int, bytes]:
    """Each binary input's bytes, by input position, cut from what follows the JSON header."""
    out: dict[int, bytes] = {}
    offset = 0
    for i, tensor in enumerate(request.inputs):
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if type(size) is not int or size < 0:
            raise BadRequest(f"input {quote_name(tensor.name)}: binary_data_size must be a count")
        if tensor.data is not None:
            raise BadRequest(f"input {quote_name(tensor.name)} has both 'data' and binary data")
        if offset + size > len(blobs):
            raise BadRequest(
                f"input {quote_name(tensor.name)}: binary_data_size runs past the end of the body "
                f"({len(blobs)} bytes follow the JSON header, the inputs claim more)"
            )
        out[i] = blobs[offset : offset + size]
        offset += size
    if offset != len(blobs):
        raise BadRequest(
            f"{len(blobs) - offset} bytes follow the JSON header and the binary inputs; "
            f"{HEADER_LENGTH} and binary_data_size must account for the whole body"
        )
    return out


def _check_outputs(request: InferenceRequest) -> None:
    for output in request.outputs or []:
        if output.name != OUTPUT:
            raise InvalidInput(
                f"unknown output {quote_name(output.name)}; the model has one output, '{OUTPUT}'"
            )
        if (output.parameters or {}).get("classification"):
            raise InvalidInput("the classification extension is not supported")


def wants_binary_output(request: InferenceRequest) -> bool:
    """Whether ``predictions`` goes back as binary data (the output's ``binary_data`` first,
    then the request's ``binary_data_output``)."""
    default = (request.parameters or {}).get("binary_data_output") is True
    for output in request.outputs or []:
        value = (output.parameters or {}).get("binary_data")
        if value is not None:
            return value is True
    return default


def _dtype(tensor: RequestInput) -> np.dtype[Any]:
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        what = "is not a number type" if tensor.datatype in ("BOOL", "BYTES") else "is unknown"
        raise InvalidInput(
            f"input {quote_name(tensor.name)}: datatype {quote_name(tensor.datatype)} {what}; "
            "send FP64 (or FP32, FP16, INT8..64, UINT8..64)"
        )
    return dtype


def _matrix(
    tensor: RequestInput, blob: bytes | None, features: Sequence[str], max_rows: int
) -> np.ndarray:
    """One 2-D tensor [N, F], columns in the model's order."""
    dtype = _dtype(tensor)
    n_features = len(features)
    if len(tensor.shape) != 2 or tensor.shape[1] != n_features:
        raise RowLengthMismatch(
            f"input {quote_name(tensor.name)} has shape {tensor.shape}; one tensor must be "
            f"[N, {n_features}]: N rows of {feature_range(features)} in the model's order (or "
            "send one 1-D tensor per feature, named after it)"
        )
    check_row_count(tensor.shape[0], max_rows)
    values = _values(
        tensor, blob, dtype, lambda i: _cell(i // n_features, features[i % n_features])
    )
    return values.reshape(tensor.shape[0], n_features)


def _columns(
    request: InferenceRequest, binary: dict[int, bytes], features: Sequence[str], max_rows: int
) -> np.ndarray:
    """One 1-D tensor per feature, named after it, in any order."""
    names = [i.name for i in request.inputs]
    problem = column_problem(names, features)
    if problem is not None:
        raise type(problem)(
            f"{problem.message} (inputs are one tensor per feature, named after it, or a single "
            f"[N, {len(features)}] tensor)"
        )
    rows: int | None = None
    for tensor in request.inputs:
        _dtype(tensor)
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise RowLengthMismatch(
                f"input {quote_name(tensor.name)} has shape {shape}; a feature's tensor must be "
                "[N] (or [N, 1])"
            )
        if rows is None:
            rows = shape[0]
            check_row_count(rows, max_rows)
        elif shape[0] != rows:
            raise RowLengthMismatch(
                f"input {quote_name(tensor.name)} has {shape[0]} rows, the first input {rows}; "
                "every feature's tensor must have the same length"
            )
    assert rows is not None
    x = np.empty((rows, len(features)), dtype=np.float64)
    position = {f: j for j, f in enumerate(features)}
    for i, tensor in enumerate(request.inputs):
        x[:, position[tensor.name]] = _values(
            tensor, binary.get(i), _dtype(tensor), functools.partial(_column_cell, tensor.name)
        )
    return x


def _values(
    tensor: RequestInput, blob: bytes | None, dtype: np.dtype[Any], at: Callable[[int], str]
) -> np.ndarray:
    """The tensor's values, flat, as float64; their count checked against its shape.

    ``at``: names the row and column of the value at a flat position, for error messages.
    """
    count = math.prod(tensor.shape)
    name = quote_name(tensor.name)
    if blob is not None:
        if len(blob) != count * dtype.itemsize:
            raise RowLengthMismatch(
                f"input {name} has {len(blob)} bytes of binary data; shape {tensor.shape} of "
                f"{tensor.datatype} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(blob, dtype=dtype).astype(np.float64)
    if tensor.data is None:
        raise InvalidInput(f"input {name} has no 'data' (and no binary_data_size)")
    flat = _flatten(tensor, name)
    if len(flat) != count:
        raise RowLengthMismatch(
            f"input {name} has {len(flat)} values; shape {tensor.shape} needs {count}"
        )
    kinds = set(map(type, flat))
    integer = dtype.kind in "iu"
    allowed = {int} if integer else {int, float, _NONE}
    if kinds - allowed:
        i, value = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
        what = {
            bool: "a boolean",
            str: "a string",
            dict: "an object",
            list: "a list",
            float: "a fraction",
            _NONE: "null",
        }
        found = what.get(type(value), "other values")
        expected = "integers" if integer else "numbers or null"
        raise InvalidValue(
            f"input {name} ({tensor.datatype}), {at(i)}: expected {expected}, got {found}"
        )
    try:
        values = np.array(flat, dtype=np.float64)
    except OverflowError:
        raise InvalidValue(f"input {name}: a value is beyond a 64-bit float") from None
    if integer:
        info = np.iinfo(dtype)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise InvalidValue(f"input {name}: a value is out of range for {tensor.datatype}")
    elif dtype != np.float64:
        # What the client declared: an FP32 tensor holds FP32 values, sent as JSON or binary.
        with np.errstate(over="ignore"):
            values = values.astype(dtype).astype(np.float64)
    return values


def _cell(row: int, column: str) -> str:
    return f"row {row}, column {quote_name(column)}"


def _column_cell(column: str, row: int) -> str:
    return _cell(row, column)


def _flatten(tensor: RequestInput, name: str) -> list[Any]:
    """``data`` flat (as sent), or nested exactly as the shape, flattened in row-major order."""
    data = tensor.data or []
    if not data or not isinstance(data[0], list):
        return data
    try:
        nested = np.array(data, dtype=object)
    except ValueError:
        nested = None
    if nested is None or list(nested.shape) != tensor.shape:
        raise RowLengthMismatch(
            f"input {name}: 'data' is nested, but not as shape {tensor.shape}; send it flat in "
            "row-major order, or nested exactly as the shape"
        )
    flat: list[Any] = nested.ravel().tolist()
    return flat


def _to_service_error(exc: ValidationError) -> ServiceError:
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return BadRequest(f"malformed JSON: {first['msg'][:200]}")
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    where = repr(loc[:80]) if loc else "the body"
    if first["type"] == "missing":
        return InvalidInput(f"{where} is required")
    if first["type"] == "model_type" and not loc:
        return BadRequest('the body must be a JSON object: {"inputs": [...]}')
    return InvalidInput(f"{where}: {first['msg']}")


# --- responses --------------------------------------------------------------------------------


def encode_response(
    request: InferenceRequest,
    predictions: np.ndarray,
    model_name: str,
    model_version: str | None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when ``predictions`` is binary data."""
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "FP64", "shape": [len(predictions)]}
    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = [output]
    values = np.ascontiguousarray(predictions, dtype="<f8")
    if wants_binary_output(request):
        output["parameters"] = {"binary_data_size": values.nbytes}
        header = orjson.dumps(response)
        return header + values.tobytes(), len(header)
    output["data"] = values
    return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), None


# --- the published request body ---------------------------------------------------------------


def infer_openapi(features: Sequence[str]) -> dict[str, Any]:
    """The ``requestBody`` of ``POST /v2/models/{name}/infer``, with both layouts as examples."""
    row = example_row(features)
    schema = _inline(InferenceRequest.model_json_schema())
    matrix = {
        "inputs": [
            {"name": "input-0", "shape": [1, len(features)], "datatype": "FP64", "data": row}
        ]
    }
    pandas = {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": f, "shape": [1], "datatype": "FP64", "data": [v]}
            for f, v in zip(features, row, strict=True)
        ],
    }
    return {
        "requestBody": {
            "required": True,
            "description": (
                f"One [N, {len(features)}] tensor in the model's feature order, or one [N] tensor "
                "per feature named after it. Binary tensor data: the JSON header, then the "
                f"tensors' bytes, with the header's length in {HEADER_LENGTH}."
            ),
            "content": {
                "application/json": {
                    "schema": schema,
                    "examples": {
                        "matrix": {"summary": "one [N, F] tensor (Triton)", "value": matrix},
                        "pandas": {
                            "summary": "a tensor per feature (MLServer pd)",
                            "value": pandas,
                        },
                    },
                }
            },
        }
    }


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema with its ``$defs`` put in place of their references (none is recursive)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined
