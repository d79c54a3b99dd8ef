"""The ``crmflow`` command line: validate, lint, diagram, demo, worker."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from crmflow._errors import CrmflowError, DefinitionError
from crmflow._suggest import suggest
from crmflow.engine._check import check_path
from crmflow.engine._diagram import mermaid, render_svg
from crmflow.engine._loader import load_definitions, load_workflow_file

__all__ = ["main"]

#: Exit codes: 0 fine, 1 the input has problems, 2 the command was used wrongly.
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def default_workflows_dir() -> Path:
    """The shipped ``workflows/`` directory (beside the package in a checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (Path.cwd() / "workflows", here.parent / "workflows"):
        if candidate.is_dir():
            return candidate
    return here.parent / "workflows"


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.paths:
        report = check_path(path)
        for error in report.errors:
            print(error.render(), file=sys.stderr)
        for defn in report.definitions:
            print(
                f"ok  {defn.source}: {defn.name} v{defn.version} "
                f"({len(defn.states)} states, {len(defn.transitions)} transitions, "
                f"{len(defn.rules)} rules)"
            )
        failed = failed or not report.ok
    if failed:
        print("validation failed", file=sys.stderr)
    return EXIT_PROBLEMS if failed else EXIT_OK


def _cmd_lint(args: argparse.Namespace) -> int:
    failed = False
    count = 0
    for path in args.paths:
        report = check_path(path, run_lint=True)
        for error in report.errors:
            print(error.render(), file=sys.stderr)
        for issue in report.issues:
            print(issue.render())
        warnings = [i for i in report.issues if i.severity == "warning"]
        count += len(warnings)
        failed = failed or not report.ok or (args.strict and bool(warnings))
    if not failed:
        print(f"lint: no errors, {count} warning(s)" if count else "lint: no problems found")
    return EXIT_PROBLEMS if failed else EXIT_OK


def _find_workflow(name_or_file: str, search: Path) -> Path | None:
    candidate = Path(name_or_file)
    if candidate.is_file():
        return candidate
    for defn in load_definitions(search):
        if defn.name == name_or_file:
            return Path(defn.source)
    return None


def _cmd_diagram(args: argparse.Namespace) -> int:
    search = Path(args.path) if args.path else default_workflows_dir()
    file = _find_workflow(args.workflow, search)
    if file is None:
        names = [d.name for d in load_definitions(search)]
        hint = suggest(args.workflow, names)
        also = f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else ""
        print(f"no workflow named {args.workflow!r} under {search}{also}", file=sys.stderr)
        return EXIT_USAGE
    defn = load_workflow_file(file)
    if args.current is not None and args.current not in defn.states:
        hint = suggest(args.current, list(defn.states))
        also = f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else ""
        print(f"workflow {defn.name!r} has no state {args.current!r}{also}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "svg":
        svg = render_svg(defn)
        if svg is None:
            print(
                "SVG needs Graphviz's `dot` on PATH (apt-get install graphviz); "
                "use --format mermaid",
                file=sys.stderr,
            )
            return EXIT_USAGE
        output: str | bytes = svg
    else:
        output = mermaid(defn, current=args.current)
    if args.output:
        mode = "wb" if isinstance(output, bytes) else "w"
        with open(args.output, mode) as handle:
            handle.write(output)
    elif isinstance(output, bytes):
        sys.stdout.buffer.write(output)
    else:
        print(output)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from crmflow._demo import run_demo

    return run_demo(
        Path(args.db), Path(args.workflows) if args.workflows else default_workflows_dir()
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    import os
    import threading

    from crmflow._worker import run_worker, stop_on_signals
    from crmflow.engine import Engine
    from crmflow.plugins.notifiers import Channel, SmtpChannel, WebhookChannel

    channels: list[Channel] = []
    if args.smtp:
        channels.append(SmtpChannel.from_url(args.smtp))
    if args.webhook:
        secret = os.environ.get(args.webhook_secret_env, "")
        if not secret:
            print(
                f"crmflow: set {args.webhook_secret_env} to the webhook's signing secret",
                file=sys.stderr,
            )
            return EXIT_USAGE
        channels.append(WebhookChannel(args.webhook, secret=secret))
    engine = Engine.from_path(
        Path(args.workflows) if args.workflows else default_workflows_dir(),
        store=args.store,
        org=args.org,
        calendar=args.calendar,
        channels=channels,
    )
    stop = threading.Event()
    restore = stop_on_signals(stop)
    try:
        total = run_worker(engine, interval=args.interval, until_idle=args.until_idle, stop=stop)
    finally:
        restore()
        engine.close()
    print(
        f"worker stopped: {total.fired} timers fired, {total.refused} refused, "
        f"{total.delivered} delivered, {total.retrying} to retry, {total.dead} dead"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="crmflow", description="Workflow and rules engine for CRM and ERP processes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="load and compile workflows; report every error")
    p.add_argument("paths", nargs="+", help="workflow files or directories")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("lint", help="validate, then look for unreachable and dead-end states")
    p.add_argument("paths", nargs="+", help="workflow files or directories")
    p.add_argument("--strict", action="store_true", help="treat warnings as failures")
    p.set_defaults(func=_cmd_lint)

    p = sub.add_parser("diagram", help="draw a workflow (Mermaid text, or SVG with Graphviz)")
    p.add_argument("workflow", help="a workflow name or a workflow file")
    p.add_argument("--path", help="where to look for the workflow (default: workflows/)")
    p.add_argument("--format", choices=["mermaid", "svg"], default="mermaid")
    p.add_argument("--current", help="highlight this state")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.set_defaults(func=_cmd_diagram)

    p = sub.add_parser("demo", help="run the sales-order story on an SQLite file and explain it")
    p.add_argument("--db", default="crmflow-demo.db", help="SQLite file (recreated)")
    p.add_argument("--workflows", help="workflow directory (default: the shipped workflows/)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("worker", help="fire due timers and deliver notifications, in a loop")
    p.add_argument("--store", required=True, help="store URL (postgresql://... or sqlite:///...)")
    p.add_argument("--workflows", help="workflow directory (default: the shipped workflows/)")
    p.add_argument("--org", help="org directory YAML (recipients, managers, delegations)")
    p.add_argument("--calendar", help="business calendar YAML for working-time timers")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between idle ticks")
    p.add_argument(
        "--until-idle", action="store_true", help="stop after the first tick with nothing to do"
    )
    p.add_argument("--smtp", help="e-mail channel: smtp://user:pw@host:port?sender=...")
    p.add_argument("--webhook", help="webhook channel URL (HMAC-signed POSTs)")
    p.add_argument(
        "--webhook-secret-env",
        default="CRMFLOW_WEBHOOK_SECRET",
        help="environment variable holding the webhook secret",
    )
    p.set_defaults(func=_cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except DefinitionError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_PROBLEMS
    except CrmflowError as exc:
        print(f"crmflow: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    except OSError as exc:
        print(f"crmflow: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
