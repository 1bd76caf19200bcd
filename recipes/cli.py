"""``ispdc``: validate and run recipes.

Bad input (a recipe key, a value, a data file) is one line on stderr naming the file and the key, and
exit code 2, never a traceback.  A stage that fails its own gate exits 1 and leaves no bundle.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from recipes import cli_bundle, cli_check, cli_tracking
from recipes.cli_common import EXIT_BAD_INPUT, EXIT_STAGE_FAILED, fail

__all__ = ["main", "EXIT_BAD_INPUT", "EXIT_STAGE_FAILED"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ispdc", description="Distil, compress and hand off learned-ISP models.")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check a recipe without running it")
    validate.add_argument("recipe", help="recipe YAML file or built-in recipe name")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    run = sub.add_parser("run", help="run a recipe end to end")
    run.add_argument("recipe", help="recipe YAML file or built-in recipe name")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe value, e.g. --set student.train.steps=50")
    run.add_argument("--workdir", type=Path, default=None, help="where stages, mlflow.db and the bundle go "
                     "(default: runs/<recipe name>)")
    run.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in the workdir)")
    run.add_argument("--no-cache", action="store_true", help="re-run every stage even if its cache is valid")
    run.add_argument("--no-resume", action="store_true", help="start afresh even if the last run in this "
                     "workdir was interrupted (default: resume it into the same MLflow runs)")
    run.add_argument("--nproc", type=int, default=1, metavar="N", help="train on N processes: relaunches "
                     "itself under torchrun (DDP; gloo on CPU, nccl on CUDA); batch_size is the global batch")
    run.add_argument("--point", "--points", dest="points", action="append", default=[], metavar="I|I..J",
                     help="sweeps: run only these points (I, I..J inclusive, I,J,K; repeatable), e.g. one per "
                     "Slurm array task; all processes of a sweep share one parent run, finished points are "
                     "skipped, a killed one resumes")

    cli_tracking.add_commands(sub)  # compare, register, alias, handoff --from-registry
    sub.add_parser("list", help="built-in recipes, teachers and students (with the plugin that adds each)")
    cli_bundle.add_commands(sub)  # process (camera file through a bundle), verify (bundle check)
    cli_check.add_commands(sub)  # check-model: a model against every stage, before training
    return parser


def _summary(outcomes: list[Any]) -> str:
    columns = ("psnr", "ssim", "params", "macs", "size_kb")
    header = f"{'stage':<10}" + "".join(f"{c:>12}" for c in columns) + f"{'seconds':>10}  cached"
    lines = [header, "-" * len(header)]
    for o in outcomes:
        cells = ""
        for c in columns:
            v = o.metrics.get(c)
            if v is None:
                cells += f"{'-':>12}"
            elif c in ("params", "macs"):
                cells += f"{int(v):>12,}"
            else:
                cells += f"{v:>12.3f}" if c != "size_kb" else f"{v:>12.1f}"
        lines.append(f"{o.name:<10}{cells}{o.seconds:>10.1f}  {'yes' if o.cached else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command in ("process", "verify"):
        return cli_bundle.run_command(args)
    if args.command in ("compare", "register", "alias", "handoff"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        return cli_tracking.run_command(args)
    if args.command in cli_check.COMMANDS:
        return cli_check.run_command(args)
    # the commands below look models up: a broken or clashing plugin is one line, exit 2
    from teachers.registry import PluginError

    try:
        if args.command == "list":
            return _list()
        return _run_or_validate(args, argv)
    except PluginError as exc:
        return fail(str(exc), EXIT_BAD_INPUT)


def _list() -> int:
    """Built-in recipes, then every teacher and student with where it comes from when not the zoo."""
    from recipes.loader import builtin_recipes
    from teachers.registry import STUDENTS, TEACHERS, ZOO

    print("recipes: ", ", ".join(sorted(builtin_recipes())))
    for label, registry in (("teachers:", TEACHERS), ("students:", STUDENTS)):
        names = [n if registry.origin(n) == ZOO else f"{n} ({registry.origin(n)})" for n in registry.names()]
        print(label, ", ".join(names))
    return 0


def _run_or_validate(args: argparse.Namespace, argv: list[str] | None) -> int:
    from recipes.loader import RecipeError, load_recipe

    try:
        recipe, path = load_recipe(args.recipe, args.overrides)
    except RecipeError as exc:
        return fail(str(exc), EXIT_BAD_INPUT)

    if args.command == "validate":
        from recipes.loader import expand_sweep

        points = expand_sweep(recipe, path) if recipe.sweep else []
        print(f"{path}: ok ({recipe.name}" + (f", sweep of {len(points)} points 0..{len(points) - 1})" if points
                                              else ")"))
        for point in points:
            print(f"  p{point.index:02d} {point.label}")
        return 0
    if args.points and not recipe.sweep:
        return fail(f"{path}: --point/--points: {recipe.name} is not a sweep (it has no sweep: block)", EXIT_BAD_INPUT)
    if args.points and args.no_resume:
        return fail("--no-resume starts a new sweep run; give it to one process running the whole sweep, not "
                    "with --point", EXIT_BAD_INPUT)

    from distill import distributed
    from distill.data.errors import DataError
    from recipes.faults import bad_input_message
    from recipes.results import HandoffResult
    from recipes.runner import StageError, run_recipe
    from recipes.tracking import default_tracking_uri, ui_hint

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # store-creation chatter (after mlflow's own setup)
    if not sys.stderr.isatty():  # a log, not a terminal: no artifact-upload bars (ours: distill.progress)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    if args.nproc < 1:
        return fail(f"--nproc must be at least 1; got {args.nproc}", EXIT_BAD_INPUT)
    if (args.nproc > 1 or distributed.launched_by_torchrun()) and recipe.sweep:
        return fail("--nproc / torchrun runs one recipe; run a sweep's points without it", EXIT_BAD_INPUT)
    if args.nproc > 1 and not distributed.launched_by_torchrun():
        return _launch_torchrun(argv if argv is not None else sys.argv[1:], args.nproc)
    dist_info = distributed.init_from_env("cuda" if torch_cuda_wanted(recipe) else "cpu")
    workdir = args.workdir or Path("runs") / recipe.name
    if dist_info.is_main:
        print(f"running {recipe.name} from {path} in {workdir}"
              + (f" on {dist_info.world_size} processes" if dist_info.enabled else ""), flush=True)

    def progress(outcome: Any) -> None:
        note = " (cached)" if outcome.cached else ""
        psnr = outcome.metrics.get("psnr")
        shown = f" psnr {psnr:.2f} dB" if psnr is not None else ""
        print(f"  {outcome.name:<9} done in {outcome.seconds:6.1f} s{shown}{note}", flush=True)

    try:
        if recipe.sweep:
            return cli_tracking.run_sweep_command(args, recipe, path, workdir, progress)
        parent_id, outcomes = run_recipe(recipe, path, workdir, args.tracking_uri, use_cache=not args.no_cache,
                                         on_stage=progress, resume=not args.no_resume)
    except DataError as exc:
        return fail(f"{path}: data: {exc}", EXIT_BAD_INPUT)
    except StageError as exc:
        return fail(str(exc), EXIT_STAGE_FAILED)
    except Exception as exc:  # a full disk, a dead tracking server, NaN loss, ...: one line (recipes/faults.py)
        message = bad_input_message(exc, path)
        if message is None:
            raise
        return fail(message, EXIT_BAD_INPUT)

    if not dist_info.is_main:
        return 0  # rank 0 reports for all
    uri = args.tracking_uri or default_tracking_uri(workdir)
    bundle = next((o.result.bundle for o in outcomes if isinstance(o.result, HandoffResult)), None)
    print()
    print(_summary(outcomes))
    print()
    if bundle:
        print(f"hand-off bundle : {bundle}")
    print(f"MLflow store    : {uri} (parent run {parent_id})")
    for line in ui_hint(uri, parent_id):
        print(line)
    return 0


def torch_cuda_wanted(recipe: Any) -> bool:  # recipes.schema.Recipe (not imported: the CLI starts fast)
    """Whether the student trains on CUDA (auto with a GPU, or cuda): the DDP backend follows it."""
    import torch

    return recipe.student.train.device != "cpu" and torch.cuda.is_available()


def _launch_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run this very command under torchrun with ``nproc`` processes (minus ``--nproc``)."""
    import subprocess

    from distill.distributed import torchrun_command

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return subprocess.run(torchrun_command(nproc, rest), check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
