"""`rnnsgd train | sweep | status | export | analyze | report`; bad input exits with status 2 and one line."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn, TextIO

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A user error: printed as one line, exit status 2, nothing written."""


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """['model.m=256', ...] -> {'model.m': '256'}; values stay strings for the config to coerce."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--set {pair!r}: expected key=value, e.g. --set model.m=256")
        if not value.strip():  # would read as YAML's null: the default, silently
            raise BadInput(f"--set {key.strip()}: empty value (leave the --set out for the default)")
        out[key.strip()] = value.strip()
    return out


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _train_config(args)
    tracking = _train_tracking(args) if args.track else None  # checked, nothing created yet
    device = _train_device(cfg)
    import torch

    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the one JSON object only
    threads_before = torch.get_num_threads()
    if args.threads:  # one thread by default: faster here (benchmarks/README.md, bench_cli_threads.py)
        torch.set_num_threads(args.threads)
    run = None
    try:
        if tracking is not None:
            run = _open_train_run(args, tracking, cfg, device.type)
        result = _train(args, cfg, device, run, out)
    except BaseException as e:
        if run is not None:  # the run ends KILLED (Ctrl+C) or FAILED with the traceback, never RUNNING
            import traceback

            killed = isinstance(e, KeyboardInterrupt | SystemExit)
            with contextlib.suppress(Exception):
                run.finish("killed" if killed else "error", None, None if killed else traceback.format_exc())
        if isinstance(e, KeyboardInterrupt):
            ended = f"; its MLflow run {run.run_id} ended KILLED" if run is not None else ""
            print(f"rnnsgd train: interrupted{ended}", file=sys.stderr)
            return 130
        raise
    finally:
        torch.set_num_threads(threads_before)  # a caller in this process (a test, a notebook) keeps its own
    _print_result(args, result)
    if run is not None:
        print(
            f"tracked: run {run.run_id} of experiment {args.experiment!r} in {tracking}; open it with: "
            f"{ui_command(tracking)}",
            file=out,
        )
    return 0


def _train_config(args: argparse.Namespace):
    """The TrialConfig of --config and --set, checked against this machine's memory: all of it before
    torch's import (seconds), and before anything is allocated."""
    from rnnsgd.config import TrialConfig
    from rnnsgd.memory import available_memory, check_fits
    from rnnsgd.sweep.spec import SweepError, read_yaml

    flat: dict[str, Any] = {}
    if args.config:
        try:
            loaded = read_yaml(args.config)
        except SweepError as e:
            raise BadInput(str(e)) from None
        if not isinstance(loaded, dict):
            raise BadInput(f"{args.config}: expected a mapping of dotted keys, e.g. 'model.m: 256'")
        flat.update(loaded)
    flat.update(parse_sets(args.set))
    if args.threads < 0:
        raise BadInput(f"--threads: must be >= 1 (0: torch's default, one per core), got {args.threads}")
    try:
        cfg = TrialConfig.from_flat(flat)
        check_fits(cfg, available_memory(), "of memory available on this machine")
    except ValueError as e:
        raise BadInput(str(e)) from None
    return cfg


def _train_device(cfg: Any):
    """The device train.device names (cuda on a machine without one is bad input), checked for memory."""
    from rnnsgd.memory import check_fits, device_memory

    try:
        from rnnsgd.train import resolve_device

        device = resolve_device(cfg.train.device)
        if device.type == "cuda":
            check_fits(cfg, device_memory(device), f"of memory on {device}")
    except ValueError as e:
        raise BadInput(str(e)) from None
    return device


def _train(args: argparse.Namespace, cfg: Any, device: Any, run: Any, out: TextIO):
    """Train with progress lines on `out` (unless --quiet) and the metrics to `run` (when tracked); the run
    ends with the outcome."""
    import torch

    from rnnsgd.console import TrainProgress, plural
    from rnnsgd.train import Trainer

    trainer = Trainer(cfg)
    sched = trainer.sched
    if not args.quiet:
        how = "train.T" if cfg.train.T else f"the {cfg.train.schedule} schedule's budget"
        measured = f" (grad_sq {trainer.grad_sq:.4g} at init)" if cfg.train.schedule == "practical" else ""
        threads = plural(torch.get_num_threads(), "thread")
        print(
            f"lambda {sched.lam:.4g}, eta {sched.eta:.4g}{measured}, T {sched.T} steps at most ({how}; a "
            f"plateau ends the run sooner); {device.type}, {threads}",
            file=out,
            flush=True,
        )
    progress = TrainProgress(sched.T, out)

    def on_eval(metrics: dict[str, Any], _trainer: Any) -> None:
        if run is not None:
            run.log([metrics])
        if not args.quiet:
            progress.evaluation(metrics)

    if not args.quiet:
        trainer.on_steps = progress.steps
    progress.start()
    try:
        result = trainer.run(on_eval)
    finally:
        progress.close()
    if run is not None:
        run.finish(result.status, tags={"rnnsgd.train_s": f"{time.monotonic() - progress.t0:.3f}"})
    return result


def _print_result(args: argparse.Namespace, result: Any) -> None:
    """The outcome and final metrics: one JSON object (--json; non-finite values as null), else a table."""
    if args.json:
        final = {"outcome": result.status, **result.metrics}
        print(
            json.dumps(
                {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in final.items()}
            )
        )
        return
    print(f"outcome: {result.status}")
    for k, v in result.metrics.items():
        print(f"  {k:<22} {v}" if isinstance(v, int) else f"  {k:<22} {v:.6g}")


def _train_tracking(args: argparse.Namespace) -> str:
    """--track: the tracking URI (as for sweeps), checked before anything else starts."""
    from rnnsgd.sweep.spec import SweepError
    from rnnsgd.sweep.tracking import check_reachable, resolve_tracking_uri

    if not args.experiment.strip():
        raise BadInput("--experiment: empty; give a name, or leave it out for rnnsgd-train")
    try:
        uri, where = resolve_tracking_uri(args.tracking_uri, None, "rnnsgd train")
        check_reachable(uri, where)
    except SweepError as e:
        raise BadInput(str(e)) from None
    return uri


def _open_train_run(args: argparse.Namespace, uri: str, cfg: Any, device: str):
    """The MLflow run of `rnnsgd train --track`: its experiment (created when new), the flat config as
    params, tags; metrics then go through tracking.PointRun (batched) as in a sweep."""
    from rnnsgd.sweep.runner import git_sha
    from rnnsgd.sweep.spec import SweepError
    from rnnsgd.sweep.tracking import ROLE, PointRun, SweepTracker, config_params

    try:
        tracker = SweepTracker(uri)
        with tracker.lock():
            experiment_id = tracker.experiment(args.experiment)
    except SweepError as e:
        raise BadInput(f"--experiment {args.experiment}: {str(e).removeprefix('name: ')}") from None
    name = " ".join([*([Path(args.config).stem] if args.config else []), *args.set]) or "defaults"
    tags = {ROLE: "train", "git_sha": git_sha(), "device": device, "rnnsgd.threads": str(args.threads)}
    run_id = tracker.client.create_run(experiment_id, run_name=name[:250], tags=tags).info.run_id
    tracker.client.log_batch(run_id, params=config_params(cfg.to_flat()))
    return PointRun(uri, run_id, last_step=-1)


def ui_command(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --port 5000"
    return f"open {uri}"


def is_sweep_file(target: str) -> bool:
    """Whether a FILE|NAME argument names a sweep file (anything on disk, or a .yaml name: its errors then
    speak of the file), rather than the name of a sweep that MLflow holds."""
    return Path(target).exists() or target.endswith((".yaml", ".yml"))


def sweep_file(target: str, variant: str | None, sets: dict[str, str]):
    """The sweep file a FILE|NAME argument names, loaded; None when it is the name of a sweep in MLflow."""
    from rnnsgd.sweep.spec import load_sweep

    return load_sweep(target, variant, sets) if is_sweep_file(target) else None


def sweep_command(target: str, variant: str | None) -> list[str]:
    """The command that runs a sweep file (and its variant)."""
    return ["rnnsgd", "sweep", target, *(["--variant", variant] if variant else [])]


def load_sweep_target(target: str, variant: str | None, sets: dict[str, str], tracking_uri: str | None):
    """A sweep file, or the name of a sweep MLflow already holds (its parent run stored the definition)."""
    from rnnsgd.sweep.tracking import stored_sweep

    sweep = sweep_file(target, variant, sets)
    if sweep is not None:
        return sweep
    if variant is not None:
        raise BadInput(f"{target}: --variant: a sweep read back by name has its variant already")
    return stored_sweep(target, tracking_uri, sets)


def cmd_sweep(args: argparse.Namespace) -> int:
    from rnnsgd.console import plural
    from rnnsgd.sweep.spec import SweepError

    sets = parse_sets(args.set)
    try:
        sweep = load_sweep_target(args.file, args.variant, sets, args.tracking_uri)
        if args.dry_run:
            from rnnsgd.sweep.runner import check_local_resources

            check_local_resources(sweep)  # what a run would refuse before starting, the dry run refuses too
            print(f"{sweep.source}: sweep {sweep.name}: {plural(len(sweep.points), 'point')}")
            for i, block in enumerate(sweep.blocks):
                axes = " x ".join(f"{a.label} ({len(a.values)})" for a in block.axes) or "no axes"
                print(f"  {f'block {i}: ' if len(sweep.blocks) > 1 else ''}{axes}")
            for p in sweep.points:
                print(f"  {p.point_id}  {p.label()}")
            from rnnsgd.sweep.runner import local_nodes, pack_points, trial_slots

            slots = trial_slots(sweep, local_nodes())
            sizes = Counter(len(p) for p in pack_points(sweep, list(sweep.points), slots))
            shape = ", ".join(f"{n} x {k}" for k, n in sorted(sizes.items(), reverse=True))
            print(
                f"{plural(sum(sizes.values()), 'trial')}: {shape} points (pack.size "
                f"{sweep.pack.size or 'auto'}, {slots} at a time on this machine)"
            )
            return 0
        from rnnsgd.sweep.runner import run_sweep

        report = run_sweep(sweep, tracking_uri=args.tracking_uri, storage=args.storage, resume=args.resume)
    except SweepError as e:
        raise BadInput(str(e)) from None
    except KeyboardInterrupt:
        print("rnnsgd sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(report.summary() + f" (wall {report.wall_s:.0f} s)")
    print(f"open the results: {report.ui_command()}")
    if report.missing:
        again = [*sweep_command(args.file, args.variant), *(f"--set={s}" for s in args.set)]
        print(f"resume with: {shlex.join(again)}")
    return report.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    from rnnsgd.sweep.spec import SweepError
    from rnnsgd.sweep.status import sweep_status

    try:
        sweep = load_sweep_target(args.sweep, args.variant, parse_sets(args.set), args.tracking_uri)
        _, text = sweep_status(sweep, args.tracking_uri)
    except SweepError as e:
        raise BadInput(str(e)) from None
    print(text)
    return 0


def run_first(args: argparse.Namespace) -> str:
    """What to say about a sweep that has no runs yet: the command that runs it."""
    if not is_sweep_file(args.sweep):
        return "run it first: rnnsgd sweep FILE"
    return "run it first: " + shlex.join(sweep_command(args.sweep, args.variant))


def cmd_export(args: argparse.Namespace) -> int:
    from rnnsgd.console import plural
    from rnnsgd.sweep.tracking import store_exists

    out = args.out
    if out is not None and out != "-" and not out.endswith((".csv", ".parquet")):
        raise BadInput(f"-o {out}: expected a .csv or .parquet file name (or - for CSV on stdout)")
    name, uri = _report_target(args)
    out = out or f"{name}.csv"
    if not store_exists(uri):  # reading must not create an empty store
        raise BadInput(f"sweep {name!r}: no tracking store at {uri}; {run_first(args)}")
    from rnnsgd.analysis.export import points_table, write_table
    from rnnsgd.analysis.load import NoSuchSweep, load_runs

    try:
        table = points_table(load_runs(name, uri))
    except NoSuchSweep as e:
        raise BadInput(f"{e}; {run_first(args)}") from None
    write_table(table, out)
    where = "stdout" if out == "-" else Path(out).resolve()
    print(
        f"sweep {name}: {plural(len(table), 'point')}, {len(table.columns)} columns -> {where}",
        file=sys.stderr if out == "-" else sys.stdout,
    )
    return 0


def _report_target(args: argparse.Namespace) -> tuple[str, str]:
    """(sweep name, tracking URI) for `report` and `analyze`: from a sweep file or a name MLflow holds."""
    from rnnsgd.sweep.spec import SweepError
    from rnnsgd.sweep.tracking import resolve_tracking_uri

    try:
        sweep = sweep_file(args.sweep, args.variant, {})
        if sweep is not None:
            uri, _ = resolve_tracking_uri(args.tracking_uri, sweep.tracking_uri, sweep.source)
            return sweep.name, uri
        return args.sweep, resolve_tracking_uri(args.tracking_uri, None, args.sweep)[0]
    except SweepError as e:
        raise BadInput(str(e)) from None


def analysis_options(args: argparse.Namespace) -> tuple[str, float, float]:
    """(metric, level, min span) for `report` and `analyze SWEEP`, level and min span defaulting to the
    analysis' own; BadInput names the option. A relative metric's level lies strictly between OPT (0) and
    the best constant predictor (1); an absolute metric has no natural level, so it needs one."""
    from rnnsgd.analysis.fits import DEFAULT_MIN_SPAN
    from rnnsgd.analysis.thresholds import DEFAULT_LEVEL, DEFAULT_METRIC, is_relative

    metric, level = args.metric, args.level
    if is_relative(metric):
        level = DEFAULT_LEVEL if level is None else level
        if not 0 < level < 1:
            raise BadInput(
                f"--level {level:g}: a relative metric ({metric}) takes a level in (0, 1), "
                "0 = OPT, 1 = the best constant predictor"
            )
    elif level is None:
        raise BadInput(
            f"--level: required with the absolute metric {metric} (e.g. --level 0.1), "
            f"or choose a relative one such as {DEFAULT_METRIC}"
        )
    elif not (level > 0 and math.isfinite(level)):
        raise BadInput(f"--level {level:g}: must be a finite number > 0 for the absolute metric {metric}")
    min_span = DEFAULT_MIN_SPAN if args.min_span is None else args.min_span
    if not (min_span > 1 and math.isfinite(min_span)):
        raise BadInput(f"--min-span {min_span:g}: must be a finite ratio > 1 (largest L / smallest L)")
    if args.n_boot < 0:
        raise BadInput(f"--n-boot: must be >= 0, got {args.n_boot}")
    return metric, level, min_span


def _build_report(args: argparse.Namespace, name: str, uri: str, out: Path):
    from rnnsgd.analysis import report
    from rnnsgd.analysis.load import NoSuchSweep

    metric, level, min_span = analysis_options(args)
    from rnnsgd.sweep.tracking import store_exists

    if not store_exists(uri):  # reading must not create an empty store
        raise BadInput(f"sweep {name!r}: no tracking store at {uri}; {run_first(args)}")
    try:
        return report.build(name, uri, out, metric, level, args.n_boot, min_span)
    except NoSuchSweep as e:
        raise BadInput(f"{e}; {run_first(args)}") from None
    except report.UnknownMetric as e:
        raise BadInput(f"--metric {e}") from None


def cmd_report(args: argparse.Namespace) -> int:
    from rnnsgd.analysis import render
    from rnnsgd.sweep.tracking import SweepTracker, log_report

    name, uri = _report_target(args)
    out = Path(args.out) if args.out else Path("reports") / name
    rep = _build_report(args, name, uri, out)
    preface = _provenance(args, rep)  # before writing: the report names the command that wrote it
    md, page = render.write(rep, out)
    found = SweepTracker(uri).parent_info(name)
    if found is not None:  # the report travels with the sweep: artifacts and a results table of its parent
        log_report(uri, found[1].info.run_id, out, rep.runs)
    for c in rep.claims:
        print(f"{c.id}: {c.verdict}")
    print(
        f"report: {page.resolve()} (and {md.name})" + ("; logged on the sweep's parent run" if found else "")
    )
    if args.findings:
        print(f"findings: {render.write_findings(rep, Path(args.findings), preface).resolve()}")
    return 0


def _provenance(args: argparse.Namespace, rep) -> list[str]:
    """The command that wrote the report, into its provenance (date, commits, store, parent run and links:
    render.provenance_md); returns what a findings page adds: the machine and how to reproduce it."""
    variant = f" --variant {args.variant}" if args.variant else ""
    level = f" --metric {rep.metric} --level {rep.level:g}"
    findings = f" --findings {args.findings}" if getattr(args, "findings", None) else ""
    if rep.provenance is not None:
        rep.provenance.command = f"rnnsgd {args.command} {args.sweep}{variant}{level}{findings}"
    return [
        f"Every number below is read from the runs of sweep `{rep.sweep}` (its provenance follows); the "
        f"sweep's wall time was measured on a machine with {os.cpu_count()} CPU cores.",
        f"Reproduce: `rnnsgd sweep {args.sweep}{variant}`, then `rnnsgd report {args.sweep}{variant}` "
        "(on the same kind of CPU the runs are bit-identical).",
    ]


def _number_list(text: str, kind: type, option: str, least: float) -> list:
    """'4,8,16' -> [4, 8, 16] for a --validate list option; each value finite and >= least."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{option}: expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise BadInput(f"{option}: empty list")
    bad = [v for v in values if not (math.isfinite(v) and v >= least)]
    if bad:
        raise BadInput(f"{option}: every value must be >= {least:g}, got {bad[0]}")
    return values


def _validation_noise(args: argparse.Namespace) -> dict:
    """--noise-from: the noise E0 simulates, measured on a real sweep's finished runs (estimate_noise)."""
    from rnnsgd.analysis.load import NoSuchSweep, load_runs
    from rnnsgd.analysis.validate import estimate_noise
    from rnnsgd.sweep.tracking import store_exists

    metric, level, _ = analysis_options(args)
    name, uri = _report_target(argparse.Namespace(**{**vars(args), "sweep": args.noise_from}))
    if not store_exists(uri):
        raise BadInput(f"--noise-from: sweep {name!r}: no tracking store at {uri}")
    try:
        runs = load_runs(name, uri)
    except NoSuchSweep as e:
        raise BadInput(f"--noise-from: {e}") from None
    from rnnsgd.analysis.report import classify

    done = runs[runs["status"] == "FINISHED"]
    done = done[classify(done) == "main"]  # the noise of the task under test, not of its controls
    if done.empty or metric not in done:
        why = "no FINISHED runs" if done.empty else f"no run logged {metric}"
        raise BadInput(f"--noise-from: sweep {name!r}: {why}")
    try:
        return estimate_noise(done, metric, level)
    except ValueError as e:
        raise BadInput(f"--noise-from: sweep {name!r}: {e}") from None


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.validate:
        from rnnsgd.analysis.validate import span_study, span_text

        spans = _number_list(args.spans, float, "--spans", 2)  # a fit needs >= 3 values of L
        seeds = _number_list(args.seeds, int, "--seeds", 1)
        if args.replicates < 1:
            raise BadInput(f"--replicates: must be >= 1, got {args.replicates}")
        if args.n_boot < 1:
            raise BadInput(f"--n-boot: the verdict needs the bootstrap (>= 1), got {args.n_boot}")
        noise = _validation_noise(args) if args.noise_from else None
        if noise:
            print(f"noise measured on {args.noise_from} (validate.estimate_noise)")
        table = span_study(spans, seeds, args.replicates, args.seed, noise=noise, n_boot=args.n_boot)
        print(span_text(table))
        return 0
    if not args.sweep:
        raise BadInput("give a sweep (file or name), or --validate for the E0 check of the pipeline")
    from rnnsgd.analysis import render

    name, uri = _report_target(args)
    rep = _build_report(args, name, uri, None)  # None: no figures, a terminal shows none
    _provenance(args, rep)
    print(render.to_markdown(rep, figures=None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnsgd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    parser.subcommands = sub.choices  # type: ignore[attr-defined]  # parse_args: a subcommand's own usage
    for add in (
        _train_parser,
        _sweep_parser,
        _status_parser,
        _export_parser,
        _report_parser,
        _analyze_parser,
    ):
        add(sub)
    return parser


TARGET_HELP = "sweep file, or the name of a sweep that has run"
URI_HELP = "MLflow tracking URI (as for `rnnsgd sweep`)"


def _set_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one model and print its final metrics")
    p.add_argument("--config", help="YAML file of dotted keys (model.m: 256, ...)")
    _set_arg(p, "override one key")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch threads (default 1, the fastest for these small products on a shared machine: "
        "benchmarks/README.md; 0: torch's default, one per core)",
    )
    p.add_argument("--track", action="store_true", help="log the run to MLflow (config, metrics, outcome)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --track (as for `rnnsgd sweep`)")
    p.add_argument(
        "--experiment", default="rnnsgd-train", help="MLflow experiment for --track (default: rnnsgd-train)"
    )
    p.set_defaults(func=cmd_train)


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a sweep file's grid as Ray Tune trials, tracked in MLflow")
    p.add_argument("file", metavar="FILE", help="sweep file (sweeps/*.yaml), or the name of a sweep that ran")
    p.add_argument("--variant", help="which of the file's variants to run (smoke, full, ...)")
    _set_arg(
        p,
        "override a config key (model.m=64; a list makes an axis: data.L=[4,8]) or a "
        "sweep key (concurrency=4, resources.gpu=0.25, seeds=5, grid.data.N={log2: [6, 9]})",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="require that the sweep ran before (any re-run resumes: done points are skipped)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, the file's tracking_uri, else "
        "sqlite:///<cwd>/runs/mlflow.db)",
    )
    p.add_argument("--storage", help="Ray storage path or URI for checkpoints (default: <cwd>/runs/ray)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the grid points; run nothing")
    p.set_defaults(func=cmd_sweep)


def _status_parser(sub) -> None:
    p = sub.add_parser("status", help="a sweep's coverage: done, failed, running, missing, per axis value")
    p.add_argument("sweep", metavar="FILE|NAME", help=TARGET_HELP)
    p.add_argument("--variant", help="which of the file's variants")
    _set_arg(p, "as for `rnnsgd sweep`")
    p.add_argument("--tracking-uri", help=URI_HELP)
    p.set_defaults(func=cmd_status)


def _export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="a sweep's results as one table (CSV or Parquet): a row per grid point with its "
        "config, final metrics, outcome and status",
    )
    p.add_argument("sweep", metavar="FILE|NAME", help=TARGET_HELP)
    p.add_argument("--variant", help="which of the file's variants")
    p.add_argument("--tracking-uri", help=URI_HELP)
    p.add_argument(
        "-o",
        "--out",
        metavar="OUT.csv|OUT.parquet",
        help="output file, by its suffix; - for CSV on stdout (default: <sweep name>.csv)",
    )
    p.set_defaults(func=cmd_export)


def _analysis_args(p: argparse.ArgumentParser) -> None:
    """The options `report` and `analyze` share."""
    p.add_argument("--variant", help="which of the file's variants")
    p.add_argument("--tracking-uri", help=URI_HELP)
    p.add_argument(
        "--metric",
        help="metric thresholded for N* and T* (default: the tail-averaged "
        "baseline-relative excess risk; test/excess_risk for absolute levels)",
    )
    p.add_argument(
        "--level",
        type=float,
        help="threshold on the metric (default for a relative metric: "
        "halfway from the best constant predictor to OPT; an "
        "absolute metric needs one)",
    )
    p.add_argument(
        "--min-span",
        type=float,
        help="least largest/smallest L ratio for a verdict on the law "
        "(default: the one the E0 study supports)",
    )
    p.add_argument("--n-boot", type=int, default=2000, help="hierarchical bootstrap replicates")


def _report_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="HTML + Markdown report of a sweep: grid, figures, fits, a verdict per claim"
    )
    p.add_argument("sweep", metavar="FILE|NAME", help=TARGET_HELP)
    p.add_argument("--out", help="output folder (default: reports/<sweep name>)")
    p.add_argument(
        "--findings",
        metavar="PAGE.md",
        help="also write the report as a page of the docs (e.g. docs/findings.md; figures beside it), with "
        "how it was made and how to reproduce it",
    )
    _analysis_args(p)
    p.set_defaults(func=cmd_report)


def _analyze_parser(sub) -> None:
    p = sub.add_parser(
        "analyze", help="print a sweep's verdicts and fit tables; --validate runs the E0 check"
    )
    p.add_argument("sweep", nargs="?", metavar="FILE|NAME", help=TARGET_HELP)
    p.add_argument(
        "--validate",
        action="store_true",
        help="E0: right verdicts on synthetic sweeps of known laws against the span of L and the seeds, and "
        "the smallest span reaching 95%% (spans x seeds x 3 laws x --replicates fits, 1080 by default)",
    )
    p.add_argument("--replicates", type=int, default=40, help="synthetic sweeps per cell (--validate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic sweeps (--validate)")
    p.add_argument("--spans", default="4,8,16", help="L_max / L_min of the L grids, each >= 2 (--validate)")
    p.add_argument("--seeds", default="1,3,5", help="run seeds per teacher, 3 teachers (--validate)")
    p.add_argument(
        "--noise-from",
        metavar="FILE|NAME",
        help="simulate the noise measured on this sweep's runs (--validate; default: validate.DEFAULT_NOISE)",
    )
    _analysis_args(p)
    p.set_defaults(func=cmd_analyze)


def private_files() -> None:
    """Make what rnnsgd and its local Ray create (store, checkpoints, reports, logs) its user's alone: umask
    077, or RNNSGD_UMASK (octal, e.g. 027 to share with a group) where the user asks otherwise."""
    text = os.environ.get("RNNSGD_UMASK", "077")
    try:
        mask = int(text, 8)
    except ValueError:
        mask = -1
    if not 0 <= mask <= 0o777:
        raise BadInput(f"RNNSGD_UMASK: expected an octal umask such as 077 or 027, got {text!r}")
    os.umask(mask)


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parser.parse_args, except that words left over are refused by the subcommand's own parser: its usage,
    not the top level's, and for `--set model.m 128` the form meant."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = parser.subcommands[args.command]  # type: ignore[attr-defined]
        hint = ""
        for i, word in enumerate(argv[:-2]):
            if word == "--set" and "=" not in argv[i + 1] and argv[i + 2] == extra[0]:
                hint = f" (--set takes KEY=VALUE as one word: --set {argv[i + 1]}={argv[i + 2]})"
                break
        sub.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, sys.argv[1:] if argv is None else list(argv))
    if getattr(args, "metric", "") is None:  # report, analyze: imported here, not for every command
        from rnnsgd.analysis.thresholds import DEFAULT_METRIC

        args.metric = DEFAULT_METRIC
    try:
        return args.func(args)
    except BadInput as e:
        print(f"rnnsgd {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry() -> NoReturn:
    """The `rnnsgd` command: private files (`private_files`), main(), then an exit that skips tearing down
    the interpreter's modules (slow after torch, Ray and MLflow). The exit handlers still run first (logging's
    flush, Ray's and MLflow's own), and every run and file is closed by then."""
    try:
        private_files()
    except BadInput as e:
        print(f"rnnsgd: error: {e}", file=sys.stderr)
        os._exit(EXIT_BAD_INPUT)
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
