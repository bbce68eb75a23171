"""config.pbtxt generation: ModelSpec (contract/spec.py) -> ModelConfig protobuf -> text.

Configs are built as ``inference.ModelConfig`` protobuf messages (Triton's ``model_config.proto``) and
printed with ``google.protobuf.text_format``, so every field name and enum is checked by the schema
when the config is made, not when a server first reads it; nothing is kept as hand-written text.

The schema is the serialized descriptor of Triton's ``model_config.proto`` kept beside this module
(``triton_model_config.binpb``, BSD-3-Clause, NVIDIA: see ``triton_model_config.NOTICE``), so the
build needs only ``protobuf`` (which ONNX brings), not ``tritonclient`` (the serve extra). Refresh it
from an installed tritonclient with ``python -m mambaserve.build.model_config --vendor-schema``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from types import SimpleNamespace

from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from mambaserve.contract.spec import EnsembleStep, ModelSpec, TensorSpec

SCHEMA_FILE = "triton_model_config.binpb"


def _schema() -> SimpleNamespace:
    """The message classes and enums of Triton's model_config.proto, in a private descriptor pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(resources.files(__package__).joinpath(SCHEMA_FILE).read_bytes())

    def message(name: str):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))

    data_type = pool.FindEnumTypeByName("inference.DataType")
    return SimpleNamespace(
        ModelConfig=message("ModelConfig"),
        ModelInstanceGroup=message("ModelInstanceGroup"),
        DataType=EnumTypeWrapper(data_type),
        **{
            value.name: value.number for value in data_type.values
        },  # pb.TYPE_FP32, as in the generated module
    )


pb = _schema()
"""``pb.ModelConfig``, ``pb.ModelInstanceGroup``, ``pb.DataType``, ``pb.TYPE_*``: the parts of
tritonclient's ``model_config_pb2`` that the build uses, under the same names."""

KINDS = ("KIND_CPU", "KIND_GPU")


@dataclass(frozen=True)
class WarmupInput:
    """One input of a warm-up request: zeros, or raw bytes in `<model>/warmup/<data_file>`."""

    dims: tuple[int, ...]
    data_file: str | None = None


@dataclass(frozen=True)
class Warmup:
    name: str
    inputs: Mapping[str, WarmupInput]
    batch_size: int = 1


@dataclass(frozen=True)
class Deployment:
    """How a model runs: where, how many instances, batching delay, backend parameters."""

    kind: str = "KIND_CPU"
    count: int = 1
    max_queue_delay_us: int = 2_000
    parameters: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"instance kind must be one of {KINDS}, not {self.kind!r}")
        if self.count < 1:
            raise ValueError(f"instance count must be >= 1, not {self.count}")


@dataclass(frozen=True)
class SequenceBatching:
    """A stateful model's sequence batcher (strategy `oldest`: chunks of many sequences batch together).

    The python models own their state (implicit state does not work in the python backend), so no
    control tensors are declared: the models read the correlation ID and START/END from the request.
    ``max_candidate_sequences`` should exceed the model's slot pool, so that a sequence beyond the pool
    reaches the model and gets its clear "pool full" error instead of waiting in Triton's backlog.
    """

    max_sequence_idle_us: int
    max_candidate_sequences: int
    max_queue_delay_us: int = 2_000

    def __post_init__(self) -> None:
        if self.max_sequence_idle_us < 1:
            raise ValueError(f"max_sequence_idle_us must be >= 1, not {self.max_sequence_idle_us}")
        if self.max_candidate_sequences < 1:
            raise ValueError(f"max_candidate_sequences must be >= 1, not {self.max_candidate_sequences}")


def _dtype(name: str) -> int:
    try:
        return pb.DataType.Value(name)
    except ValueError:
        raise ValueError(f"unknown Triton data type {name!r}") from None


def _tensor(message, spec: TensorSpec, ragged: bool = False):
    message.name = spec.name
    message.data_type = _dtype(spec.dtype)
    message.dims.extend(spec.dims)
    if spec.optional:
        message.optional = True
    if ragged:
        message.allow_ragged_batch = True
    return message


def model_config(
    spec: ModelSpec,
    *,
    backend: str | None = None,
    platform: str | None = None,
    deployment: Deployment | None = None,
    default_model_filename: str | None = None,
    warmup: Sequence[Warmup] = (),
    sequence: SequenceBatching | None = None,
    decoupled: bool = False,
) -> pb.ModelConfig:
    """A non-ensemble model: tensors, batching, instance group, warm-up, parameters.

    ``sequence`` replaces the dynamic batcher by a sequence batcher; ``decoupled`` lets the model send
    any number of responses per request (token streaming).
    """
    if (backend is None) == (platform is None):
        raise ValueError(f"model '{spec.name}': give exactly one of backend= or platform=")
    deployment = deployment or Deployment()
    config = pb.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if backend:
        config.backend = backend
    if platform:
        config.platform = platform
    if default_model_filename:
        config.default_model_filename = default_model_filename
    config.version_policy.latest.num_versions = 1  # explicit: a new version replaces the served one
    ragged = set(spec.extra.get("ragged", ()))
    names = [t.name for t in (*spec.inputs, *spec.outputs)]
    if len(set(names)) != len(names):
        raise ValueError(f"model '{spec.name}': duplicate tensor names in {names}")
    for t in spec.inputs:
        _tensor(config.input.add(), t, ragged=t.name in ragged)
    for t in spec.outputs:
        _tensor(config.output.add(), t)
    if sequence is not None:
        batching = config.sequence_batching
        batching.max_sequence_idle_microseconds = sequence.max_sequence_idle_us
        batching.oldest.max_candidate_sequences = sequence.max_candidate_sequences
        batching.oldest.max_queue_delay_microseconds = sequence.max_queue_delay_us
    elif spec.max_batch_size > 0:
        config.dynamic_batching.max_queue_delay_microseconds = deployment.max_queue_delay_us
    if decoupled:
        config.model_transaction_policy.decoupled = True
    group = config.instance_group.add()
    group.kind = pb.ModelInstanceGroup.Kind.Value(deployment.kind)
    group.count = deployment.count
    for key, value in sorted(deployment.parameters.items()):
        config.parameters[key].string_value = str(value)
    known = {t.name: t for t in spec.inputs}
    for w in warmup:
        message = config.model_warmup.add(name=w.name, batch_size=w.batch_size)
        for name, value in w.inputs.items():
            if name not in known:
                raise ValueError(f"model '{spec.name}': warm-up input {name!r} is not an input")
            entry = message.inputs[name]
            entry.data_type = _dtype(known[name].dtype)
            entry.dims.extend(value.dims)
            if value.data_file:
                entry.input_data_file = value.data_file
            else:
                entry.zero_data = True
    return config


def ensemble_config(spec: ModelSpec, steps: Sequence[EnsembleStep] | None = None) -> pb.ModelConfig:
    """An ensemble (`platform: "ensemble"`): tensors and the step wiring; it has no instances."""
    steps = steps if steps is not None else spec.extra["steps"]
    config = pb.ModelConfig(name=spec.name, platform="ensemble", max_batch_size=spec.max_batch_size)
    for t in spec.inputs:
        _tensor(config.input.add(), t)
    for t in spec.outputs:
        _tensor(config.output.add(), t)
    for step in steps:
        message = config.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        for key, value in step.input_map.items():
            message.input_map[key] = value
        for key, value in step.output_map.items():
            message.output_map[key] = value
    return config


def to_text(config: pb.ModelConfig) -> str:
    """config.pbtxt text (stable field order, so rebuilding an unchanged model gives the same file)."""
    return text_format.MessageToString(config, as_utf8=True)


def from_text(text: str) -> pb.ModelConfig:
    """Parse config.pbtxt text; raises text_format.ParseError on a field the schema does not know."""
    return text_format.Parse(text, pb.ModelConfig())


def vendor_schema(target: str | None = None) -> str:
    """Write the schema file from the installed tritonclient's model_config_pb2 (a maintainer's step)."""
    from tritonclient.grpc import model_config_pb2

    path = target or str(resources.files(__package__).joinpath(SCHEMA_FILE))
    with open(path, "wb") as f:
        f.write(model_config_pb2.DESCRIPTOR.serialized_pb)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.build.model_config", description=vendor_schema.__doc__
    )
    parser.add_argument(
        "--vendor-schema", action="store_true", help=f"rewrite {SCHEMA_FILE} from tritonclient"
    )
    args = parser.parse_args(argv)
    if not args.vendor_schema:
        parser.print_help()
        return 2
    print(f"wrote {vendor_schema()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
