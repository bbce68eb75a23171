"""Checks of a model repository before it is served.

- :func:`check_ensemble`: the wiring of an ensemble, from the configs alone — every step names a
  model that exists, maps only tensors that model has, gets each required input from an ensemble input
  or an earlier step's output of the same dtype and a compatible shape, and the ensemble's outputs
  are all produced. Triton checks some of this only when the ensemble loads, one error at a time;
  this lists every problem at once, at build time.
- :func:`check_loads`: every model loads in a real tritonserver.

CLI: ``python -m mambaserve.build.verify model_repository [--no-load]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mambaserve.build.model_config import from_text, pb
from mambaserve.serving.server import ModelLoadError, TritonServer, free_port


class WiringError(ValueError):
    """An ensemble refers to a model or tensor that does not exist or does not fit."""

    def __init__(self, ensemble: str, problems: list[str]):
        self.ensemble = ensemble
        self.problems = problems
        super().__init__(f"ensemble '{ensemble}' is mis-wired:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class _Tensor:
    dtype: int
    shape: tuple[int, ...]  # including the batch dimension (-1) when the owner batches
    origin: str

    def describe(self) -> str:
        return f"{pb.DataType.Name(self.dtype)} {list(self.shape)}"


def _full_shape(config: pb.ModelConfig, tensor) -> tuple[int, ...]:
    """What other models see of a tensor (dims, not `reshape`), with the batch dimension if any."""
    return ((-1,) if config.max_batch_size > 0 else ()) + tuple(tensor.dims)


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def load_configs(repository: str | Path) -> dict[str, pb.ModelConfig]:
    """Every `<model>/config.pbtxt` of a repository, parsed against the schema."""
    configs = {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = from_text(path.read_text())
        name = config.name or path.parent.name
        if config.name and config.name != path.parent.name:
            raise WiringError(name, [f"{path}: config name '{config.name}' differs from its folder name"])
        configs[name] = config
    return configs


def check_ensemble(ensemble: pb.ModelConfig, models: Mapping[str, pb.ModelConfig]) -> None:
    """Raise :class:`WiringError` listing every wiring problem of `ensemble`."""
    problems: list[str] = []
    name = ensemble.name
    if ensemble.platform != "ensemble":
        raise WiringError(name, [f"platform is '{ensemble.platform}', not 'ensemble'"])
    tensors: dict[str, _Tensor] = {}
    optional_inputs = set()
    for t in ensemble.input:
        tensors[t.name] = _Tensor(t.data_type, _full_shape(ensemble, t), f"ensemble input '{t.name}'")
        if t.optional:
            optional_inputs.add(t.name)

    steps = list(ensemble.ensemble_scheduling.step)
    if not steps:
        problems.append("has no steps")
    # Producers first: every output_map entry declares an ensemble tensor.
    for i, step in enumerate(steps):
        label = f"step {i} ('{step.model_name}')"
        model = models.get(step.model_name)
        if model is None:
            problems.append(f"{label}: model '{step.model_name}' is not in the repository")
            continue
        if ensemble.max_batch_size > 0 and model.max_batch_size < ensemble.max_batch_size:
            problems.append(
                f"{label}: max_batch_size {model.max_batch_size} is below the ensemble's {ensemble.max_batch_size}"
            )
        outputs = {t.name: t for t in model.output}
        for model_tensor, ens_tensor in step.output_map.items():
            if model_tensor not in outputs:
                problems.append(
                    f"{label}: output_map key '{model_tensor}' is not an output of '{step.model_name}' "
                    f"(outputs: {sorted(outputs)})"
                )
                continue
            if ens_tensor in tensors:
                problems.append(
                    f"{label}: tensor '{ens_tensor}' is already produced by {tensors[ens_tensor].origin}"
                )
                continue
            out = outputs[model_tensor]
            tensors[ens_tensor] = _Tensor(
                out.data_type,
                _full_shape(model, out),
                f"output '{model_tensor}' of step {i} ('{step.model_name}')",
            )

    # Consumers: every input_map value must exist and fit; every required input must be fed.
    consumed = set()
    for i, step in enumerate(steps):
        label = f"step {i} ('{step.model_name}')"
        model = models.get(step.model_name)
        if model is None:
            continue
        inputs = {t.name: t for t in model.input}
        for model_tensor, ens_tensor in step.input_map.items():
            consumed.add(ens_tensor)
            if model_tensor not in inputs:
                problems.append(
                    f"{label}: input_map key '{model_tensor}' is not an input of '{step.model_name}' "
                    f"(inputs: {sorted(inputs)})"
                )
                continue
            source = tensors.get(ens_tensor)
            if source is None:
                problems.append(
                    f"{label}: input '{model_tensor}' reads '{ens_tensor}', which nothing produces"
                )
                continue
            want = inputs[model_tensor]
            shape = _full_shape(model, want)
            if want.data_type != source.dtype:
                problems.append(
                    f"{label}: input '{model_tensor}' is {pb.DataType.Name(want.data_type)} but "
                    f"'{ens_tensor}' ({source.origin}) is {pb.DataType.Name(source.dtype)}"
                )
            elif not _compatible(shape, source.shape):
                problems.append(
                    f"{label}: input '{model_tensor}' has shape {list(shape)} but '{ens_tensor}' "
                    f"({source.origin}) has shape {list(source.shape)}"
                )
            if ens_tensor in optional_inputs and not want.optional:
                problems.append(
                    f"{label}: required input '{model_tensor}' is fed by the optional ensemble input '{ens_tensor}'"
                )
        for model_tensor, t in inputs.items():
            if model_tensor not in step.input_map and not t.optional:
                problems.append(f"{label}: required input '{model_tensor}' is not mapped")

    for t in ensemble.output:
        source = tensors.get(t.name)
        if source is None or source.origin.startswith("ensemble input"):
            problems.append(f"output '{t.name}' is not produced by any step")
            continue
        shape = _full_shape(ensemble, t)
        if t.data_type != source.dtype:
            problems.append(
                f"output '{t.name}' is {pb.DataType.Name(t.data_type)} but {source.origin} is "
                f"{pb.DataType.Name(source.dtype)}"
            )
        elif not _compatible(shape, source.shape):
            problems.append(
                f"output '{t.name}' has shape {list(shape)} but {source.origin} has {list(source.shape)}"
            )
    for t in ensemble.input:
        if t.name not in consumed:
            problems.append(f"input '{t.name}' is not used by any step")
    if problems:
        raise WiringError(name, problems)


def check_wiring(repository: str | Path) -> list[str]:
    """Check every ensemble of a repository; returns their names."""
    configs = load_configs(repository)
    ensembles = [c for c in configs.values() if c.platform == "ensemble"]
    for ensemble in ensembles:
        check_ensemble(ensemble, configs)
    return [e.name for e in ensembles]


def check_loads(
    repository: str | Path, timeout: float = 300.0, log_path: str | Path | None = None
) -> dict[str, str]:
    """Start a real tritonserver on `repository`; return {model: ready version}.

    Raises :class:`mambaserve.serving.server.ModelLoadError` naming each model that failed and why.
    """
    with TritonServer(
        repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        startup_timeout=timeout,
        log_path=log_path,
    ) as server:
        index = server.repository_index()
    not_ready = {m["name"]: m.get("reason", m.get("state", "?")) for m in index if m.get("state") != "READY"}
    if not_ready:
        raise ModelLoadError(not_ready)
    return {m["name"]: m["version"] for m in index}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.build.verify", description=__doc__.splitlines()[0]
    )
    parser.add_argument("repository")
    parser.add_argument("--no-load", action="store_true", help="only the wiring check, no server")
    args = parser.parse_args(argv)
    try:
        names = check_wiring(args.repository)
        print(f"wiring ok: {', '.join(names) or 'no ensembles'}")
        if not args.no_load:
            loaded = check_loads(args.repository)
            print("loads ok: " + ", ".join(f"{k} v{v}" for k, v in sorted(loaded.items())))
    except Exception as e:  # the CLI reports any failure as one clear line per problem
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
