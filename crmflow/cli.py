"""The ``crmflow`` command line: validate, lint, diagram, simulate, demo, worker, outbox."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from crmflow._errors import CrmflowError, DefinitionError
from crmflow._suggest import suggest
from crmflow.engine._check import check_path
from crmflow.engine._diagram import history_path, mermaid, render
from crmflow.engine._loader import load_definitions, load_workflow_file
from crmflow.engine._model import WorkflowDef
from crmflow.engine._scenario import default_workflows_path

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


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


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


def _find_workflow(name_or_file: str, search: Path) -> WorkflowDef | None:
    """The workflow a command names: a file, or a name under ``search`` (printed if unknown)."""
    candidate = Path(name_or_file)
    if candidate.is_file():
        return load_workflow_file(candidate)
    known = {d.name: d for d in load_definitions(search)}
    if name_or_file in known:
        return known[name_or_file]
    hint = suggest(name_or_file, list(known))
    also = f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else ""
    print(f"no workflow named {name_or_file!r} under {search}{also}", file=sys.stderr)
    return None


def _cmd_diagram(args: argparse.Namespace) -> int:
    search = Path(args.path) if args.path else default_workflows_dir()
    defn = _find_workflow(args.workflow, search)
    if defn is None:
        return EXIT_USAGE
    path: list[str] = []
    taken: set[tuple[str, str, str]] = set()
    if args.instance:
        if not args.store:
            print("--instance needs --store URL (where the instance is kept)", file=sys.stderr)
            return EXIT_USAGE
        from crmflow.engine import Engine

        with Engine([defn], store=args.store, load_entry_points=False) as engine:
            instance = engine.get(args.instance)
            entries = [
                (h.from_state, h.to_state, h.trigger)
                for h in engine.history(args.instance)
                if h.kind not in ("refused", "denied")
            ]
        if instance.workflow != defn.name:
            print(
                f"instance {args.instance!r} runs {instance.workflow!r}, not {defn.name!r}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        path, taken = history_path(entries)
        args.current = args.current or instance.state
    if args.current is not None and args.current not in defn.states:
        hint = suggest(args.current, list(defn.states))
        also = f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else ""
        print(f"workflow {defn.name!r} has no state {args.current!r}{also}", file=sys.stderr)
        return EXIT_USAGE
    if args.format in ("svg", "png"):
        image = render(defn, args.format, current=args.current, path=path, taken=taken)
        if image is None:
            print(
                f"{args.format.upper()} needs Graphviz's `dot` on PATH (apt-get install "
                "graphviz); use --format mermaid",
                file=sys.stderr,
            )
            return EXIT_USAGE
        output: str | bytes = image
    else:
        output = mermaid(defn, current=args.current, path=path)
    if args.output:
        mode = "wb" if isinstance(output, bytes) else "w"
        with open(args.output, mode) as handle:
            handle.write(output)
    elif isinstance(output, bytes):
        sys.stdout.buffer.write(output)
    else:
        print(output)
    return EXIT_OK


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when it is below it (shorter messages)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


class _Progress:
    """A one-line progress bar on standard error (plain lines when it is not a terminal)."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled
        self.total = 0
        self.done = 0
        self.failed = 0
        self.tty = sys.stderr.isatty()

    def start(self, total: int) -> None:
        self.total = total
        if self.enabled is None:
            # Worth it only when the run takes a while and someone is watching.
            self.enabled = self.tty and total >= 10

    def step(self, name: str, passed: bool) -> None:
        self.done += 1
        self.failed += not passed
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        failed = f", {self.failed} failed" if self.failed else ""
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}{failed}"
        if self.tty:
            end = "\n" if self.done == self.total else ""
            print(f"\r{line}  {name[:40]:<40}", end=end, file=sys.stderr, flush=True)
        else:
            print(f"{line}  {name}", file=sys.stderr, flush=True)


def _cmd_explore(args: argparse.Namespace) -> int:
    from crmflow.engine._explore import explore, format_exploration

    search = Path(args.workflows) if args.workflows else default_workflows_dir()
    known = {d.name: d for d in load_definitions(search)}
    chosen: list[WorkflowDef] = []
    for name in args.paths or list(known):
        defn = known[name] if name in known else _find_workflow(name, search)
        if defn is None:
            return EXIT_USAGE
        chosen.append(defn)
    failed = False
    for defn in chosen:
        report = explore(defn, walks=args.explore, seed=args.seed, org=args.org)
        print(format_exploration(report))
        failed = failed or not report.ok
    return EXIT_PROBLEMS if failed else EXIT_OK


def _cmd_forecast(args: argparse.Namespace) -> int:
    from crmflow.engine._forecast import (
        forecast,
        format_forecast,
        load_forecast_file,
        plot_forecast,
    )

    # Like a scenario file: the workflows above its forecasts/ directory, else beside it.
    search = Path(args.workflows) if args.workflows else default_workflows_path(args.file)
    definitions = {d.name: d for d in load_definitions(search)}
    spec = load_forecast_file(args.file, workflows=definitions)
    report = forecast(definitions[spec.workflow], spec, leads=args.leads, seed=args.seed)
    print(format_forecast(report))
    if args.plot:
        if plot_forecast(report, args.plot):
            print(f"plot written to {args.plot}")
        else:
            print("the plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.explore is not None:
        ignored = [
            option
            for option, given in (
                ("--junit", args.junit),
                ("--coverage", args.coverage),
                ("-k", args.name),
                ("--store", args.store != "memory://"),
            )
            if given
        ]
        if ignored:
            print(
                f"crmflow: --explore does not take {', '.join(ignored)} (those are for scenario "
                "runs); run them as a separate crmflow simulate",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return _cmd_explore(args)
    from crmflow._junit import write_junit
    from crmflow.engine._simulate import ScenarioResult, junit_suites, simulate

    workflows: Path | None = Path(args.workflows) if args.workflows else None
    paths = [Path(p) for p in args.paths]
    if not paths:
        base = workflows or _relative(default_workflows_dir())
        workflows = base
        paths = [base / "scenarios"]
    for path in paths:
        if not path.exists():
            print(f"crmflow: no such file or directory: {path}", file=sys.stderr)
            return EXIT_USAGE
    if workflows is not None and not workflows.exists():
        print(f"crmflow: no such workflow directory: {workflows}", file=sys.stderr)
        return EXIT_USAGE
    progress = _Progress(args.progress)

    def show(result: ScenarioResult) -> None:
        progress.step(result.scenario.name, result.passed)
        if not args.quiet or not result.passed:
            if progress.enabled and progress.tty and progress.done < progress.total:
                print(file=sys.stderr)  # keep the bar off the timeline's line
            print(result.timeline())
            print()

    report = simulate(
        paths,
        workflows=workflows,
        store=args.store,
        name_filter=args.name,
        on_start=progress.start,
        on_result=show,
    )
    sys.stdout.flush()
    for error in report.errors:
        print(error.render(), file=sys.stderr)
    sys.stderr.flush()
    if not report.results and not report.errors:
        where = ", ".join(str(p) for p in paths)
        print(f"crmflow: no scenarios found in {where}", file=sys.stderr)
        return EXIT_USAGE
    failed = [r for r in report.results if not r.passed]
    if failed:
        print("failed scenarios:")
        for result in failed:
            print(f"  {result.location}: {result.scenario.name}")
            for line in result.failure_message().splitlines()[1:]:
                print(f"    {line}")
    coverage_failed = False
    if args.coverage:
        print("coverage:")
        for line in report.coverage.render().splitlines():
            print(f"  {line}")
        coverage_failed = args.coverage == "strict" and not report.coverage.complete
    if args.junit:
        write_junit(args.junit, junit_suites(report), name="crmflow simulate")
    print(report.summary())
    if coverage_failed:
        print("coverage is incomplete (--coverage=strict)", file=sys.stderr)
    return EXIT_OK if report.ok and not coverage_failed else EXIT_PROBLEMS


def _cmd_demo(args: argparse.Namespace) -> int:
    from crmflow._demo import run_demo

    return run_demo(
        Path(args.db), Path(args.workflows) if args.workflows else default_workflows_dir()
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    import os
    import threading

    from crmflow._clock import parse_duration
    from crmflow.engine import Engine
    from crmflow.plugins.notifiers import Channel, RetryPolicy, SmtpChannel, WebhookChannel
    from crmflow.worker import run_worker, stop_on_signals

    retry_config = {
        key: value
        for key, value in (
            ("max_attempts", args.max_attempts),
            ("base", args.retry_base),
            ("cap", args.retry_cap),
        )
        if value is not None
    }
    # One bound given alone moves the other default out of its way: a first wait longer than
    # the default cap raises the cap, a cap shorter than the default first wait lowers it.
    defaults = RetryPolicy()
    base_alone = "base" in retry_config and "cap" not in retry_config
    cap_alone = "cap" in retry_config and "base" not in retry_config
    try:
        if base_alone and parse_duration(args.retry_base) > defaults.cap:
            retry_config["cap"] = args.retry_base
        if cap_alone and parse_duration(args.retry_cap) < defaults.base:
            retry_config["base"] = args.retry_cap
    except ValueError:
        pass  # from_mapping says what is wrong with the value
    try:
        retry = RetryPolicy.from_mapping(retry_config)
    except ValueError as exc:
        print(f"crmflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
        default_channels=tuple(args.default_channel or ("inbox",)),
        retry=retry,
        lease=args.lease,
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
        f"{total.delivered} delivered, {total.retrying} to retry, {total.dead} dead, "
        f"{total.failed} failed"
    )
    return EXIT_OK


def _cmd_outbox(args: argparse.Namespace) -> int:
    from crmflow._outbox_cli import run_outbox

    if args.ids and not args.requeue:
        print("crmflow: notification IDs are for --requeue", file=sys.stderr)
        return EXIT_USAGE
    if args.requeue and args.status not in (None, "dead"):
        print("crmflow: --requeue sends dead notifications only", file=sys.stderr)
        return EXIT_USAGE
    if args.ids and (args.key or args.channel or args.recipient):
        print(
            "crmflow: give notification IDs or --key/--channel/--recipient, not both",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return run_outbox(args)


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
    p.add_argument("--format", choices=["mermaid", "svg", "png"], default="mermaid")
    p.add_argument("--current", help="highlight this state")
    p.add_argument(
        "--instance", help="highlight this instance's state and the path its history took"
    )
    p.add_argument(
        "--store", help="store URL holding --instance (sqlite:///... or postgresql://...)"
    )
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.set_defaults(func=_cmd_diagram)

    p = sub.add_parser(
        "simulate",
        help="run scenario files on a virtual clock and check what they expect",
        description="Run scenarios (YAML stories with expectations) against the workflows. "
        "Exit code 0 when every scenario passes, 1 when one fails or a file has errors "
        "(or coverage is incomplete with --coverage=strict), 2 for usage errors.",
    )
    p.add_argument(
        "paths",
        nargs="*",
        help="scenario files or directories (default: the scenarios/ directory of the workflows)",
    )
    p.add_argument(
        "--workflows",
        help="workflow directory for scenario files that do not name one (default: the "
        "directory above their scenarios/ directory; without PATH, workflows/)",
    )
    p.add_argument(
        "--store",
        default="memory://",
        help="store URL for the engines (default: a fresh in-memory store per scenario; "
        "sqlite:///FILE keeps every scenario's instances in one file)",
    )
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    p.add_argument(
        "--coverage",
        nargs="?",
        const="report",
        choices=["report", "strict"],
        help="print which transitions and rule refusals the scenarios exercised per "
        "workflow; --coverage=strict also fails (exit 1) when something is missing",
    )
    p.add_argument(
        "-k", "--name", help="run only scenarios whose name contains this text (any case)"
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="print timelines of failed scenarios only"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on standard error (default: on a terminal, from 10 scenarios)",
    )
    p.add_argument(
        "--explore",
        type=_count(0),
        metavar="N",
        help="instead of scenarios: N seeded random walks per workflow (PATH: workflow names "
        "or files; default all) checking for stuck instances and unhandled errors",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of --explore (default 1)")
    p.add_argument("--org", help="org directory YAML whose users act in --explore")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "forecast",
        help="Monte Carlo pipeline forecast from a forecast file (funnel, time to close)",
    )
    p.add_argument("file", help="a forecast file (see docs/simulation.md)")
    p.add_argument(
        "--workflows",
        help="workflow directory (default: the directory above the file's forecasts/ "
        "directory, else the file's own directory)",
    )
    p.add_argument("--leads", type=_count(1), help="number of leads (default: the file's)")
    p.add_argument("--seed", type=int, help="random seed (default: the file's)")
    p.add_argument("--plot", help="also draw the funnel and times to PNG/SVG (needs matplotlib)")
    p.set_defaults(func=_cmd_forecast)

    p = sub.add_parser("demo", help="run the sales-order story on an SQLite file and explain it")
    p.add_argument("--db", default="crmflow-demo.db", help="SQLite file (recreated)")
    p.add_argument("--workflows", help="workflow directory (default: ./workflows/, else shipped)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("worker", help="fire due timers and deliver notifications, in a loop")
    p.add_argument("--store", required=True, help="store URL (postgresql://... or sqlite:///...)")
    p.add_argument("--workflows", help="workflow directory (default: ./workflows/, else shipped)")
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
    p.add_argument(
        "--default-channel",
        action="append",
        metavar="NAME",
        help="channel for notifications that name none (repeatable; default: inbox)",
    )
    p.add_argument(
        "--max-attempts", type=int, help="delivery attempts before a notification is dead (8)"
    )
    p.add_argument("--retry-base", metavar="DURATION", help="wait after the first failure (30s)")
    p.add_argument("--retry-cap", metavar="DURATION", help="longest wait between attempts (1h)")
    p.add_argument(
        "--lease",
        metavar="DURATION",
        default="5m",
        help="how long a claim lasts; a dead worker's work is taken over after it (5m)",
    )
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser(
        "outbox", help="list notifications with their delivery status; send dead ones again"
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="notifications to requeue")
    p.add_argument("--store", required=True, help="store URL (postgresql://... or sqlite:///...)")
    p.add_argument("--status", choices=["pending", "delivered", "dead"], help="only this status")
    p.add_argument("--channel", help="only this channel")
    p.add_argument("--key", help="only notifications about this instance")
    p.add_argument("--recipient", help="only this recipient")
    p.add_argument(
        "--requeue",
        action="store_true",
        help="send the given IDs again, or with no ID every dead one the filters select",
    )
    p.set_defaults(func=_cmd_outbox)
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
