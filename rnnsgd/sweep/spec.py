"""Sweep files: schema, validation, variants, `--set` overrides, grid expansion and stable point ids.

A sweep file (docs/sweeps.md) is a name, a base config in TrialConfig's flat dotted keys, grid axes (lists
or log ranges), optional zip groups (keys that vary together), seeds, per-trial resources and concurrency,
optional blocks (sub-grids whose union is the grid, e.g. more seeds at large L) and optional variants
(`smoke`, `full`) that override any of these. `load_sweep` checks all of it, then builds the TrialConfig of
every grid point, so the learner's own validation runs on each point before anything runs, and names each
point by a hash of its resolved config: the same point in a re-run or a grown grid has the same id.

Every error is a SweepError whose message reads "<file>: <key>: <problem>".
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rnnsgd.config import (
    FIELD_TYPES,
    FLAT_KEYS,
    MEMORY_FRACTION,
    TrialConfig,
    coerce,
    did_you_mean,
    format_value,
    schedule,
    unknown,
)

BLOCK_KEYS = ("base", "grid", "zip", "seeds")  # what a block (one sub-grid) holds
SWEEP_KEYS = (
    "name",
    "description",
    *BLOCK_KEYS,
    "blocks",
    "resources",
    "pack",
    "concurrency",
    "max_failures",
    "checkpoint_every_s",
    "tracking_uri",
    "storage",
)
FILE_KEYS = (*SWEEP_KEYS, "variants", "default_variant")
MERGED = ("base", "grid", "resources", "pack")  # overrides update these key by key (null removes a key)
RANGE_KINDS = ("log2", "log10", "range")
RESOURCE_KEYS = ("cpu", "gpu")
PACK_KEYS = ("size", "memory_fraction")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # fullmatch: `$` would let a trailing newline in
DEFAULT_MAX_FAILURES = 2
MAX_POINTS = 100_000  # a sweep's grid, counted before it is expanded: each point is a run in MLflow

Err = Callable[[str, str], Exception]


class SweepError(ValueError):
    """Bad sweep input; the message names the file (or source), the key and the problem."""


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0  # CPUs per trial (fractions allowed)
    gpu: float = 0.0  # GPUs per trial: a fraction is a scheduling share, not a memory limit


@dataclass(frozen=True)
class Pack:
    """How many points of one shape (rnnsgd.packed.pack_key) one trial trains together."""

    size: int | None = None  # at most this many; None ("auto"): as many as balance and memory allow
    memory_fraction: float = MEMORY_FRACTION  # of the trial's share of its device's memory


@dataclass(frozen=True)
class Axis:
    """One dimension of a grid: a single key, a zip group (keys that vary together) or a seed stream."""

    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]  # one tuple of coerced values (one per key) per position
    label: str  # where it came from: "grid.data.N", "zip[0]", "seeds.run", "blocks[1].grid.data.L"


@dataclass(frozen=True)
class Block:
    """One sub-grid: a base config and the axes whose product it is."""

    base: dict[str, Any]
    axes: tuple[Axis, ...]


@dataclass(frozen=True)
class Point:
    index: int
    point_id: str
    config: TrialConfig  # the resolved config, built and validated once (_expand)
    coords: dict[str, Any]  # the values that set this point apart in its sweep (see Sweep.varying_keys)

    @functools.cached_property
    def flat(self) -> dict[str, Any]:
        """config.to_flat(): MLflow's params, the point's id."""
        return self.config.to_flat()

    def label(self) -> str:
        """Short human name, e.g. "L=8 N=64 run=0" (MLflow run name, progress lines)."""
        return " ".join(f"{k.rpartition('.')[2]}={format_value(v)}" for k, v in self.coords.items()) or "base"


@dataclass(frozen=True)
class Sweep:
    name: str  # MLflow experiment name and storage folder; "<name>-<variant>" for a variant
    source: str  # the file, or "mlflow:<name>" for a definition read back from a parent run
    variant: str | None
    description: str
    blocks: tuple[Block, ...]
    resources: Resources
    pack: Pack
    concurrency: int | None  # None: as many trials at once as the resources allow
    max_failures: int  # retries of a trial whose process died, each from its last checkpoint
    checkpoint_every_s: float  # 0: a checkpoint at every evaluation
    tracking_uri: str | None
    storage: str | None
    points: tuple[Point, ...]
    definition: dict[
        str, Any
    ]  # resolved (variant merged, --set applied, blocks explicit): kept by the parent

    def varying_keys(self) -> list[str]:
        """The keys whose value differs between points (axes first, then keys that blocks set apart)."""
        return list(self.points[0].coords) if self.points else []


def point_id(flat: Mapping[str, Any]) -> str:
    """12 hex digits of sha256 over the canonical JSON of the resolved flat config."""
    canon = {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error (PyYAML keeps the last
    silently, so a different grid would run than the one written)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; SweepError("<source>:<line>:<column>: <problem>") when it is not valid."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SweepError(f"{where}: not valid YAML: {problem}") from None


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if p.is_dir():
        raise SweepError(f"{path}: is a folder, not a YAML file")
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SweepError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    return parse_yaml(text, str(path))


def load_sweep(path: str | Path, variant: str | None = None, sets: Mapping[str, str] | None = None) -> Sweep:
    """Read, validate and expand a sweep file; raise SweepError before anything runs."""
    return sweep_from_dict(read_yaml(path), str(path), variant, sets)


def variants_of(raw: Any) -> list[str]:
    return list(raw["variants"]) if isinstance(raw, dict) and isinstance(raw.get("variants"), dict) else []


def sweep_from_dict(
    raw: Any, source: str, variant: str | None = None, sets: Mapping[str, str] | None = None
) -> Sweep:
    """Validate a parsed sweep file (or a stored definition): pick the variant, apply --set, expand."""
    if not isinstance(raw, dict):
        raise SweepError(f"{source}: expected a mapping with at least 'name' (see docs/sweeps.md)")
    for key in raw:
        if key not in FILE_KEYS:
            raise SweepError(f"{source}: {key}: {unknown('key', key, FILE_KEYS)}")
    origin: dict[str, str] = {}  # "grid.data.N" -> where the user wrote it, for error messages
    d, variant = _pick_variant(copy.deepcopy(raw), source, variant, origin)
    config_sets = {k: v for k, v in (sets or {}).items() if k in FIELD_TYPES}
    _apply_sweep_sets(d, {k: v for k, v in (sets or {}).items() if k not in FIELD_TYPES}, source, origin)
    return _build(d, source, variant, origin, config_sets)


def _overlay(d: dict, over: dict, where: str, allowed: tuple[str, ...], source: str, origin: dict) -> dict:
    """`d` with `over` on top: base, grid, resources merge key by key (null removes a key); the rest replace.
    `origin` learns where each overridden key came from."""
    merged = dict(d)
    for key, value in over.items():
        label = f"{where}.{key}" if where else key
        if key not in allowed:
            raise SweepError(f"{source}: {label}: {unknown('key', key, allowed)}")
        if key in MERGED and isinstance(value, dict) and isinstance(merged.get(key), dict):
            section = dict(merged[key])
            for k, v in value.items():
                origin[f"{key}.{k}"] = f"{label}.{k}"
                if v is None:
                    section.pop(k, None)
                else:
                    section[k] = v
            merged[key] = section
        else:
            origin[key] = label
            merged[key] = value
    return merged


def _pick_variant(
    raw: dict, source: str, variant: str | None, origin: dict[str, str]
) -> tuple[dict, str | None]:
    variants = raw.pop("variants", None)
    default = raw.pop("default_variant", None)
    if variants is None:
        if variant is not None:
            raise SweepError(f"{source}: --variant: this file defines no variants, got {variant!r}")
        return raw, None
    if not isinstance(variants, dict) or not variants:
        raise SweepError(f"{source}: variants: expected a mapping of variant name -> overrides")
    variant = variant if variant is not None else default
    known = ", ".join(variants)
    if variant is None:
        raise SweepError(f"{source}: --variant: pick one of {known} (the file has no default_variant)")
    if variant not in variants:
        raise SweepError(f"{source}: --variant {variant}: {unknown('variant', str(variant), variants)}")
    over = variants[variant] if variants[variant] is not None else {}
    if not isinstance(over, dict):
        raise SweepError(f"{source}: variants.{variant}: expected a mapping of overrides")
    merged = _overlay(raw, over, f"variants.{variant}", SWEEP_KEYS, source, origin)
    if "name" not in over and isinstance(merged.get("name"), str):
        merged["name"] = f"{merged['name']}-{variant}"
    return merged, variant


def _yaml_value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        value = parse_yaml(text, "")
    except SweepError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-9 (no dot) as a string; a user means the number
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _section(d: dict, name: str, source: str) -> dict:
    if d.get(name) is None:
        d[name] = {}
    if not isinstance(d[name], dict):
        raise SweepError(f"{source}: {name}: expected a mapping")
    return d[name]


def _apply_sweep_sets(d: dict, sets: Mapping[str, str], source: str, origin: dict[str, str]) -> None:
    """--set on a sweep key: concurrency=4, resources.gpu=0.25, seeds=5, grid.data.N=[64], base.data.L=8."""
    for key, text in sets.items():
        section, _, rest = key.partition(".")
        if section in MERGED and rest:
            _section(d, section, source)[rest] = text if section == "base" else _yaml_value(text)
        elif key in SWEEP_KEYS:
            d[key] = _yaml_value(text)
        else:
            hint = did_you_mean(key, (*FLAT_KEYS, *SWEEP_KEYS))
            known = (
                f"a TrialConfig key such as model.m, or one of {', '.join(SWEEP_KEYS)}, resources.cpu, "
                "grid.<key>, base.<key>"
            )
            raise SweepError(f"{source}: --set {key}: unknown key" + (f"; {hint}" if hint else f" ({known})"))
        origin[key] = f"--set {key}"


def _apply_config_sets(bd: dict, sets: Mapping[str, str], source: str, origin: dict[str, str]) -> None:
    """--set on a TrialConfig key, in every block: it sets the base, or pins the key's axis to that value;
    a list or a range ({log2: [a, b]}) makes the key an axis."""
    zip_keys = {k for g in bd.get("zip") or [] if isinstance(g, dict) for k in g}
    for key, text in sets.items():
        where = f"--set {key}"
        if key in zip_keys:
            raise SweepError(
                f"{source}: {where}: this key varies in a zip group; set the group with --set zip=..."
            )
        if key.startswith("seed.") and bd.get("seeds") is not None:
            raise SweepError(f"{source}: {where}: the sweep's seeds set this key; use --set seeds=...")
        value = _yaml_value(text)
        is_tuple = typing.get_origin(FIELD_TYPES[key]) is tuple
        grid, base = _section(bd, "grid", source), _section(bd, "base", source)
        if isinstance(value, list | dict) and not is_tuple:
            grid[key], origin[f"grid.{key}"] = value, where
        elif key in grid:
            grid[key], origin[f"grid.{key}"] = [text], where
        else:
            base[key], origin[f"base.{key}"] = text, where


# ---------------------------------------------------------------------------------------------- building


def _build(d: dict, source: str, variant: str | None, origin: dict[str, str], config_sets: dict) -> Sweep:
    err = _err_in(source, origin)
    for key in d:
        if key not in SWEEP_KEYS:
            raise err(key, unknown("key", key, SWEEP_KEYS))
    settings = _sweep_settings(d, err)
    blocks, resolved = _blocks(d, source, origin, config_sets)
    sizes = [math.prod(len(a.values) for a in b.axes) for b in blocks]
    if sum(sizes) > MAX_POINTS:
        shape = " + ".join(" x ".join(str(len(a.values)) for a in b.axes) or "1" for b in blocks)
        raise err(
            "grid",
            f"{sum(sizes):,} points ({shape}); a sweep holds at most {MAX_POINTS:,}: "
            "use fewer values or split it into several sweeps",
        )
    points = _expand(blocks, settings["resources"], err)
    definition = {k: v for k, v in d.items() if k not in (*BLOCK_KEYS, "blocks") and v is not None}
    definition["blocks"] = resolved
    return Sweep(
        source=source,
        variant=variant,
        blocks=tuple(blocks),
        points=points,
        definition=json.loads(json.dumps(definition, default=list)),
        **settings,
    )


def _err_in(source: str, where: dict[str, str]) -> Err:
    """The error of a key, named where the user wrote it (`where`: key -> its place in the file, a --set)."""
    return lambda key, problem: SweepError(f"{source}: {where.get(key, key)}: {problem}")


def _sweep_settings(d: dict, err: Err) -> dict[str, Any]:
    """The sweep's own keys (all but its blocks), checked: Sweep's fields of the same names."""
    name = d.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise err("name", f"required: letters, digits, '_', '.', '-' (at most 100), got {name!r}")
    description = d.get("description") or ""
    if not isinstance(description, str):
        raise err("description", "expected a string")
    resources, pack = _resources(d.get("resources"), err), _pack(d.get("pack"), err)
    concurrency = d.get("concurrency")
    if concurrency is not None and (not _is_int(concurrency) or concurrency < 1):
        raise err("concurrency", f"expected a positive integer (most trials at once), got {concurrency!r}")
    max_failures = d.get("max_failures", DEFAULT_MAX_FAILURES)
    if not _is_int(max_failures) or max_failures < 0:
        raise err("max_failures", f"expected an integer >= 0 (retries of a dead trial), got {max_failures!r}")
    every = d.get("checkpoint_every_s", 0)
    if not _is_number(every) or every < 0:
        raise err("checkpoint_every_s", f"expected seconds >= 0 (0: every evaluation), got {every!r}")
    for key in ("tracking_uri", "storage"):
        if d.get(key) is not None and (not isinstance(d[key], str) or not d[key].strip()):
            raise err(key, f"expected a non-empty string, got {d[key]!r}")
    return {
        "name": name,
        "description": description,
        "resources": resources,
        "pack": pack,
        "concurrency": concurrency,
        "max_failures": int(max_failures),
        "checkpoint_every_s": float(every),
        "tracking_uri": d.get("tracking_uri"),
        "storage": d.get("storage"),
    }


def _blocks(
    d: dict, source: str, origin: dict[str, str], config_sets: dict
) -> tuple[list[Block], list[dict]]:
    """The sweep's sub-grids (one when it has no `blocks`), each its base, grid, zip and seeds with the
    block's overrides and the --set of config keys applied; and each as resolved, for the definition."""
    template = {k: d[k] for k in BLOCK_KEYS if d.get(k) is not None}
    overrides = d.get("blocks")
    if overrides is not None and (not isinstance(overrides, list) or not overrides):
        raise _err_in(source, origin)(
            "blocks", "expected a non-empty list of sub-grids, each a mapping of base/grid/zip/seeds"
        )
    blocks, resolved = [], []
    for i, over in enumerate(overrides or [{}]):
        where = f"blocks[{i}]" if overrides is not None else ""
        if not isinstance(over, dict):
            raise _err_in(source, origin)(where, "expected a mapping of base/grid/zip/seeds overrides")
        block_origin = dict(origin)
        bd = _overlay(template, over, where, BLOCK_KEYS, source, block_origin)
        _apply_config_sets(bd, config_sets, source, block_origin)
        blocks.append(_parse_block(bd, _err_in(source, block_origin)))
        resolved.append(bd)
    return blocks, resolved


def _parse_block(bd: dict, err: Err) -> Block:
    base = bd.get("base") or {}
    if not isinstance(base, dict):
        raise err("base", "expected a mapping of dotted TrialConfig keys, e.g. model.m: 256")
    base_values = {}
    for key, raw in base.items():
        _known_key(key, err, f"base.{key}")
        base_values[key] = _coerce(key, raw, err, f"base.{key}")

    axes: list[Axis] = []
    grid = bd.get("grid") or {}
    if not isinstance(grid, dict):
        raise err("grid", "expected a mapping of dotted key -> list of values or {log2: [a, b]}")
    for key, spec in grid.items():
        _known_key(key, err, f"grid.{key}")
        values = _axis_values(key, spec, err, f"grid.{key}")
        axes.append(Axis((key,), tuple((v,) for v in values), f"grid.{key}"))

    groups = bd.get("zip") or []
    if not isinstance(groups, list):
        raise err("zip", "expected a list of groups, each a mapping of dotted key -> list (equal lengths)")
    for i, group in enumerate(groups):
        where = f"zip[{i}]"
        if not isinstance(group, dict) or not group:
            raise err(where, "expected a mapping of dotted key -> list of values (equal lengths)")
        columns = []
        for key, spec in group.items():
            _known_key(key, err, f"{where}.{key}")
            if not isinstance(spec, list):
                raise err(f"{where}.{key}", f"expected a list (zip axes are explicit lists), got {spec!r}")
            columns.append(_axis_values(key, spec, err, f"{where}.{key}", unique=False))
        lengths = {len(c) for c in columns}
        if len(lengths) != 1:
            raise err(where, f"the lists of one zip group must have equal lengths, got {sorted(lengths)}")
        rows = tuple(zip(*columns, strict=True))
        if len(set(map(_hashable, rows))) != len(rows):
            raise err(where, "the same combination of values appears twice")
        axes.append(Axis(tuple(group), rows, where))

    axes.extend(_seed_axes(bd.get("seeds"), err))
    seen: dict[str, str] = {}
    for axis in axes:
        for key in axis.keys:
            if key in seen:
                raise err(
                    axis.label, f"{key} already varies in {seen[key]}; a key may vary in one place only"
                )
            seen[key] = axis.label
    return Block(base=base_values, axes=tuple(axes))


def _known_key(key: Any, err, where: str) -> None:
    if key not in FIELD_TYPES:
        raise err(where, unknown("TrialConfig key", str(key), FLAT_KEYS))


def _coerce(key: str, raw: Any, err, where: str) -> Any:
    try:
        return coerce(key, raw, FIELD_TYPES[key])
    except ValueError as e:
        raise err(where, str(e).partition(": ")[2]) from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _hashable(x: Any) -> Any:
    return tuple(_hashable(v) for v in x) if isinstance(x, list | tuple) else x


def _axis_values(key: str, spec: Any, err, where: str, unique: bool = True) -> list[Any]:
    """A list of values, or {log2|log10|range: [a, b], step: s} (inclusive, exponent step s, default 1)."""
    typ = FIELD_TYPES[key]
    if isinstance(spec, dict):
        kinds = [k for k in spec if k in RANGE_KINDS]
        extra = [k for k in spec if k not in (*RANGE_KINDS, "step")]
        if len(kinds) != 1 or extra:
            raise err(
                where,
                f"expected one of {{log2: [a, b]}}, {{log10: [a, b]}}, {{range: [a, b]}} "
                f"with an optional step, got {spec!r}",
            )
        kind = kinds[0]
        ends, step = spec[kind], spec.get("step", 1)
        if not (
            isinstance(ends, list)
            and len(ends) == 2
            and all(_is_number(e) for e in ends)
            and ends[0] <= ends[1]
        ):
            raise err(where, f"{kind}: expected [low, high] with low <= high, got {ends!r}")
        if not _is_number(step) or step <= 0:
            raise err(where, f"step: expected a number > 0, got {step!r}")
        n = int(math.floor((ends[1] - ends[0]) / step + 1e-9)) + 1
        if n > 10_000:
            raise err(where, f"{kind} range has {n} values; widen the step")
        xs = [ends[0] + i * step for i in range(n)]
        raws = xs if kind == "range" else [(2.0 if kind == "log2" else 10.0) ** x for x in xs]
        if typ is int:
            raws = [round(x) for x in raws]
        elif typ is float:
            raws = [float(f"{x:.12g}") for x in raws]  # 10**-2.5 and friends, without float noise in ids
        values = [_coerce(key, r, err, where) for r in raws]
        return list(dict.fromkeys(values))  # rounding may repeat small values: keep the first
    if not isinstance(spec, list):
        raise err(
            where,
            f"expected a list of values or {{log2: [a, b]}}, got {spec!r} (fixed values belong in base)",
        )
    if not spec:
        raise err(where, "empty axis: give at least one value")
    values = [_coerce(key, r, err, f"{where}[{i}]") for i, r in enumerate(spec)]
    if unique and len(set(map(_hashable, values))) != len(values):
        raise err(where, f"a value appears twice in {spec!r}")
    return values


def _seed_axes(seeds: Any, err) -> list[Axis]:
    """seeds: n (run seeds 0..n-1), a list of run seeds, or {run: ..., teacher: ...} with a count, a list or
    a range each."""
    if seeds is None:
        return []
    spec = seeds if isinstance(seeds, dict) else {"run": seeds}
    axes = []
    for stream in ("teacher", "run"):
        where = "seeds" if not isinstance(seeds, dict) else f"seeds.{stream}"
        if stream not in spec:
            continue
        s = spec[stream]
        if _is_int(s):
            if s < 1:
                raise err(where, f"a count of seeds must be >= 1, got {s}")
            s = list(range(s))
        values = _axis_values(f"seed.{stream}", s, err, where)
        axes.append(Axis((f"seed.{stream}",), tuple((v,) for v in values), where))
    unknown_ = [k for k in spec if k not in ("teacher", "run")]
    if unknown_:
        raise err(f"seeds.{unknown_[0]}", unknown("seed stream", str(unknown_[0]), ("run", "teacher")))
    return axes


def _settings(spec: Any, name: str, known: tuple[str, ...], example: str, err) -> dict[str, Any]:
    """A small mapping of settings (resources, pack): None is {}, unknown keys are refused."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise err(name, f"expected a mapping like {example}, got {spec!r}")
    for key in spec:
        if key not in known:
            raise err(f"{name}.{key}", unknown("key", str(key), known))
    return spec


def _resources(spec: Any, err) -> Resources:
    spec = _settings(spec, "resources", RESOURCE_KEYS, "{cpu: 1, gpu: 0.25}", err)
    cpu, gpu = spec.get("cpu", 1), spec.get("gpu", 0)
    if not _is_number(cpu) or cpu <= 0:
        raise err("resources.cpu", f"expected a number > 0 (CPUs per trial), got {cpu!r}")
    if not _is_number(gpu) or gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
        raise err("resources.gpu", f"expected a fraction in [0, 1] or a whole number of GPUs, got {gpu!r}")
    return Resources(cpu=float(cpu), gpu=float(gpu))


def _pack(spec: Any, err) -> Pack:
    spec = _settings(spec, "pack", PACK_KEYS, "{size: auto, memory_fraction: 0.5}", err)
    size, fraction = spec.get("size", "auto"), spec.get("memory_fraction", MEMORY_FRACTION)
    if size != "auto" and (not _is_int(size) or size < 1):
        raise err("pack.size", f"expected auto or an integer >= 1 (1: one point per trial), got {size!r}")
    if not _is_number(fraction) or not 0 < fraction <= 1:
        raise err(
            "pack.memory_fraction", f"expected a fraction in (0, 1] of the device's memory, got {fraction!r}"
        )
    return Pack(size=None if size == "auto" else size, memory_fraction=float(fraction))


def _expand(blocks: list[Block], resources: Resources, err: Err) -> tuple[Point, ...]:
    """Each block's product of axes, in file order (grid, zip groups, seeds), blocks one after another; a
    point that two blocks share is kept once. Every point is built and checked by the learner's validation."""
    found: dict[str, tuple[TrialConfig, dict[str, Any]]] = {}  # point id -> its config, flat
    for block in blocks:
        for combo in itertools.product(*(a.values for a in block.axes)):
            coords = {
                k: v
                for a, row in zip(block.axes, combo, strict=True)
                for k, v in zip(a.keys, row, strict=True)
            }
            try:
                cfg = TrialConfig.from_flat({**block.base, **coords})
                schedule(cfg)
            except ValueError as e:
                key, _, problem = str(e).partition(": ")
                where = " ".join(f"{k}={format_value(v)}" for k, v in coords.items())
                raise err(key, problem + (f" (at grid point {where})" if where else "")) from None
            if cfg.train.device == "cuda" and resources.gpu == 0:
                raise err("train.device", "cuda needs a GPU per trial: set resources.gpu (e.g. 0.25)")
            flat = cfg.to_flat()
            found.setdefault(point_id(flat), (cfg, flat))
    axis_keys = dict.fromkeys(k for b in blocks for a in b.axes for k in a.keys)
    ordered = [*axis_keys, *(k for k in FLAT_KEYS if k not in axis_keys)]
    varying = [k for k in ordered if len({_hashable(f[k]) for _, f in found.values()}) > 1]
    return tuple(
        Point(index=i, point_id=pid, config=cfg, coords={k: flat[k] for k in varying})
        for i, (pid, (cfg, flat)) in enumerate(found.items())
    )
