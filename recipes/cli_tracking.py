"""The ``ispdc`` commands around MLflow: sweeps (``run`` of a recipe with ``sweep:``), ``compare``,
``register``, ``alias`` and ``handoff --from-registry``.  Bad input is one line and exit code 2."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipes.cli_common import EXIT_BAD_INPUT, EXIT_OK, fail


def add_commands(sub: Any) -> None:
    """Add the tracking sub-commands to ``ispdc``'s sub-parser set."""
    def store_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (a server http://..., sqlite:///...)")
        p.add_argument("--workdir", type=Path, default=None, help="use the local store of this run folder "
                       "(<workdir>/mlflow.db) when no --tracking-uri is given")

    compare = sub.add_parser("compare", help="trade-off table and Pareto plots of finished runs")
    store_options(compare)
    compare.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable; "
                         "default: all)")
    compare.add_argument("--recipe", default=None, help="only runs of this recipe (tag recipe)")
    compare.add_argument("--filter-tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with "
                         "this tag value (repeatable)")
    compare.add_argument("--parent", default=None, metavar="RUN_ID", help="only the points of this sweep run; "
                         "the plots are also logged on it")
    compare.add_argument("--latency-key", default=None, help="latency metric to judge by (default: the shipped "
                         "variant's at the deployment frame size, latency_ms_frame_tflite_int8_<N>t, if logged, else "
                         "its tile's; MAI scores only from a frame-size latency)")
    compare.add_argument("--out", type=Path, default=None, help="folder for the table and plots "
                         "(default: <workdir>/compare or ./compare)")

    register = sub.add_parser("register", help="register a hand-off bundle as an MLflow model version")
    register.add_argument("bundle", type=Path, help="hand-off bundle folder")
    register.add_argument("--name", required=True, help="registered model name")
    register.add_argument("--alias", default=None, help="point this alias at the new version (e.g. candidate)")
    store_options(register)

    alias = sub.add_parser("alias", help="point an alias (candidate, approved, ...) at a model version")
    alias.add_argument("name", help="registered model name")
    alias.add_argument("version", help="model version number")
    alias.add_argument("alias", help="alias, e.g. approved")
    store_options(alias)

    handoff = sub.add_parser("handoff", help="rebuild a hand-off bundle from the model registry")
    handoff.add_argument("--from-registry", dest="ref", required=True, metavar="NAME@ALIAS",
                         help="NAME@ALIAS, NAME/VERSION or NAME (newest version)")
    handoff.add_argument("dest", type=Path, help="folder to write the bundle to (must not exist or be empty)")
    store_options(handoff)


def _store(args: argparse.Namespace, must_exist: bool = True) -> str:
    from recipes.tracking import default_tracking_uri

    if args.tracking_uri:
        return args.tracking_uri
    if args.workdir is None:
        raise ValueError("give --tracking-uri URI or --workdir DIR (the folder a recipe ran in)")
    if must_exist and not (Path(args.workdir) / "mlflow.db").is_file():
        raise ValueError(f"{args.workdir}: no MLflow store here (mlflow.db); run a recipe there first or pass "
                         "--tracking-uri")
    return default_tracking_uri(args.workdir)


def _tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--filter-tag {pair!r} is not of the form key=value")
        tags[key] = value
    return tags


def run_command(args: argparse.Namespace) -> int:
    """``compare`` / ``register`` / ``alias`` / ``handoff``; returns the exit code."""
    from recipes.compare import CompareError
    from recipes.registry import RegistryError

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "register":
            from recipes.registry import register_bundle

            mv = register_bundle(args.bundle, args.name, args.alias, _store(args, must_exist=False))
            aliases = f" (alias {', '.join(mv.aliases)})" if mv.aliases else ""
            print(f"registered {args.bundle} as {mv.name} version {mv.version}{aliases}")
            return EXIT_OK
        if args.command == "alias":
            from recipes.registry import set_alias

            set_alias(args.name, args.version, args.alias, _store(args))
            print(f"{args.name}@{args.alias} -> version {args.version}")
            return EXIT_OK
        if args.command == "handoff":
            from recipes.registry import fetch_bundle

            bundle, report = fetch_bundle(args.ref, args.dest, _store(args))
            print(f"rebuilt {args.ref} in {bundle}: golden check {report.splitlines()[-1]}")
            return EXIT_OK
    except (ValueError, CompareError, RegistryError) as exc:
        return fail(str(exc), EXIT_BAD_INPUT)
    raise AssertionError(f"unhandled command {args.command}")


def _compare(args: argparse.Namespace) -> int:
    from recipes.compare import compare_runs, format_table

    out = args.out or ((Path(args.workdir) if args.workdir else Path(".")) / "compare")
    comparison = compare_runs(_store(args), experiments=args.experiment or None, recipe=args.recipe,
                              tags=_tags(args.filter_tag), parent=args.parent, out_dir=out,
                              latency_key=args.latency_key, log_to_run=args.parent)
    print(format_table(comparison))
    print()
    for path in comparison.files:
        print(f"wrote {path}")
    if args.parent:
        print(f"logged to run {args.parent} (artifacts compare/)")
    return EXIT_OK


def run_sweep_command(args: argparse.Namespace, recipe: Any, path: Path, workdir: Path,
                      progress: Callable[[Any], None]) -> int:
    """``ispdc run`` of a sweep recipe: its points (all, or ``--point``/``--points``) that no other process
    has finished or is running, then one table row per finished point and, once all are, the plots."""
    from recipes.compare import CompareError, compare_runs, format_table
    from recipes.loader import RecipeError, expand_sweep, select_points
    from recipes.sweep import run_sweep
    from recipes.tracking import default_tracking_uri, ui_hint

    def on_point(point: Any) -> None:
        print(f"point {point.index}: {point.label}", flush=True)

    try:
        points = select_points(args.points, len(expand_sweep(recipe, path)), path) if args.points else None
    except RecipeError as exc:
        return fail(str(exc), EXIT_BAD_INPUT)
    sweep_id, results = run_sweep(recipe, path, workdir, tracking_uri=args.tracking_uri, use_cache=not args.no_cache,
                                  on_stage=progress, on_point=on_point, points=points, resume=not args.no_resume,
                                  say=lambda line: print(line, flush=True))
    uri = args.tracking_uri or default_tracking_uri(workdir)
    print()
    try:
        print(format_table(compare_runs(uri, experiments=[recipe.name], parent=sweep_id)))
    except CompareError:
        print("no finished points yet")
    print()
    for result in results:
        ran = [o.name for o in result.outcomes if not o.cached]
        print(f"p{result.point.index:02d}: ran {', '.join(ran) or 'nothing (all cached)'}; "
              f"{sum(o.seconds for o in result.outcomes):.1f} s")
    print(f"plots           : {Path(workdir) / 'compare'} (once every point finished; also on the sweep run)")
    print(f"MLflow store    : {uri} (sweep run {sweep_id})")
    print(f"compare again   : .venv/bin/ispdc compare --tracking-uri {uri} --parent {sweep_id}")
    for line in ui_hint(uri, sweep_id):
        print(line)
    return EXIT_OK
