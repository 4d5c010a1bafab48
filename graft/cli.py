"""`graft`: the command line for a Graft server (argparse + rich), on graft.Client.

Run `graft --help` (or `graft <group> --help`) for the commands. The URL and key come from
--url/--key or GRAFT_URL/GRAFT_KEY; --json prints the server's JSON instead of tables. The
exit codes (EXIT_CODES below) are part of the interface: scripts may rely on them.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from graft.client import DEFAULT_URL, Client
from graft.errors import BadRequest, ConnectionFailed, GraftError, ServerError
from graft.types import ENDED, Event, Job

OK, JOB_NOT_OK, USAGE, CANNOT_CONNECT, REFUSED, SERVER_ERROR, DETACHED = 0, 1, 2, 3, 4, 5, 130

EPILOG = f"""\
exit codes:
  0    ok
  1    the job ended failed or cancelled, or was not promoted (finetune --wait, jobs wait)
  2    usage error: bad flags or arguments, an unreadable file
  3    cannot connect to the server (is it running? right --url?)
  4    the server refused the request (4xx); its message says what to fix
  5    server error (5xx)
  130  interrupted while waiting for a job, which keeps running (detached)

environment:
  GRAFT_URL     the server (default {DEFAULT_URL})
  GRAFT_KEY     the API key: the admin key, or a tenant's key
  GRAFT_TENANT  the default --tenant

examples:
  export GRAFT_KEY=$(cat .graft/admin.key)
  graft tenants create acme
  graft adapters create --tenant acme --adapter support --labels refund shipping account
  graft predict --tenant acme --adapter support "my parcel never arrived"
  graft finetune examples.jsonl --tenant acme --adapter support --epochs 30 --wait
"""


class UsageError(Exception):
    """A mistake in the command itself (exit 2)."""


class Detached(Exception):
    """Ctrl-C while waiting, and the job was left running (exit 130)."""


class Output:
    """Tables and messages for people, or the server's JSON (--json) for scripts.
    Results go to stdout; progress, notes and errors to stderr."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        # soft_wrap: a message stays one line (for logs and greps) whatever the terminal's width
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        for console in (self.out, self.err):
            if not console.is_terminal and "COLUMNS" not in os.environ:
                console.width = 160  # piped or captured: room for whole tables, not 80 columns

    def result(self, data: Any, render: Callable[[Any], None]) -> None:
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2) + "\n")
            sys.stdout.flush()
        else:
            render(data)

    def say(self, text: str) -> None:
        """A plain line on stdout (no rich markup: names come from users and the server)."""
        self.out.print(text, markup=False)

    def note(self, text: str) -> None:
        if not self.json:
            self.err.print(text, markup=False)


# -- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graft", description="Command line for a Graft server: tenants, keys, adapters, fine-tunes, predictions.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help=f"the server (default: GRAFT_URL, else {DEFAULT_URL})")
    parser.add_argument("--key", default=None, help="API key (default: GRAFT_KEY)")
    parser.add_argument("--json", action="store_true", help="print the server's JSON (for scripts)")
    parser.add_argument("--version", action="version", version=f"graft {_version()}")
    # The global flags work after the subcommand too (`graft adapters list --json`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--key", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    def command(sub: Any, name: str, handler: Callable[..., int | None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common], epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        return p

    def group(name: str, help: str) -> Any:
        g = groups.add_parser(name, help=help, description=help)
        return g.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tenant_env = os.environ.get("GRAFT_TENANT") or None

    def tenant(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tenant", "-t", default=tenant_env, required=tenant_env is None,
                       help="tenant id (default: GRAFT_TENANT)")

    def adapter(p: argparse.ArgumentParser, default: str | None = "default") -> None:
        tenant(p)
        p.add_argument("--adapter", "-a", default=default, required=default is None,
                       help="adapter name" + (f" (default: {default})" if default else ""))

    tenants = group("tenants", "create or erase tenants (admin key)")
    p = command(tenants, "create", cmd_tenant_create, "create a tenant and its first key (shown once)")
    p.add_argument("tenant", help="tenant id: lowercase letters, digits, '-'")
    p = command(tenants, "delete", cmd_tenant_delete, "erase a tenant and everything Graft holds for it")
    p.add_argument("tenant")

    keys = group("keys", "issue, list and revoke a tenant's keys (admin key)")
    p = command(keys, "issue", cmd_key_issue, "issue another key for the tenant (shown once)")
    tenant(p)
    p.add_argument("--expires-in", type=float, metavar="SECONDS", help="the key stops working after this long")
    p = command(keys, "list", cmd_key_list, "list the tenant's keys")
    tenant(p)
    p = command(keys, "revoke", cmd_key_revoke, "revoke a key by its id (the middle part of graft_<id>_<secret>)")
    tenant(p)
    p.add_argument("key_id")

    adapters = group("adapters", "zero-shot adapters, versions, promote, rollback, delete")
    p = command(adapters, "create", cmd_adapter_create, "create a zero-shot adapter from label names")
    adapter(p)
    p.add_argument("--labels", nargs="+", required=True, metavar="LABEL",
                   help="class names (space or comma separated, at least 2)")
    p.add_argument("--describe", action="append", default=[], metavar="LABEL=TEXT",
                   help="a text embedded instead of the bare label name (repeatable)")
    p.add_argument("--backbone", help="text backbone id (default: the server's)")
    p = command(adapters, "list", cmd_adapter_list, "list the tenant's adapters")
    tenant(p)
    p = command(adapters, "versions", cmd_versions, "list an adapter's versions with their metrics")
    adapter(p)
    p = command(adapters, "promote", cmd_promote, "make a version the one that serves")
    adapter(p)
    p.add_argument("version", type=int)
    p.add_argument("--allow-dropped-labels", action="store_true",
                   help="promote even if the version drops labels the active version serves")
    p = command(adapters, "rollback", cmd_rollback, "serve the version before the active one again")
    adapter(p)
    p = command(adapters, "delete", cmd_adapter_delete, "delete an adapter and its versions (stops its jobs)")
    adapter(p, default=None)

    p = command(groups, "finetune", cmd_finetune, "fine-tune an adapter from a JSONL, CSV or zip file")
    p.add_argument("file", help="JSONL ({\"text\", \"label\"} per line), CSV (columns text,label) "
                                "or zip (one folder of images per label)")
    adapter(p)
    p.add_argument("--backbone", help="backbone id (default: the server's)")
    p.add_argument("--method", choices=["auto", "head", "lexical", "hybrid", "lora", "unfreeze", "setfit"],
                   help="auto (default: the server tries the candidates and keeps the best), head, lexical, hybrid, "
                        "lora, unfreeze or setfit (few-shot)")
    p.add_argument("--head", choices=["linear", "mlp"], help="the head's kind")
    p.add_argument("--epochs", type=int, help="at most this many epochs")
    p.add_argument("--params", metavar="JSON", help='more params as JSON, e.g. \'{"lr": 0.005, "seed": 1}\'')
    p.add_argument("--wait", action="store_true",
                   help="follow the job to its end: progress, epoch metrics, the evaluation (Ctrl-C: cancel or detach)")
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help="how often --wait asks (default 1)")

    jobs = group("jobs", "fine-tune jobs: show, events, cancel, wait, list")
    for name, handler, help in (("show", cmd_job_show, "a job's status, progress and metrics"),
                                ("events", cmd_job_events, "a job's events so far"),
                                ("cancel", cmd_job_cancel, "cancel a job"),
                                ("wait", cmd_job_wait, "follow a job to its end (exit 1 unless it succeeded and was promoted)")):
        p = command(jobs, name, handler, help)
        p.add_argument("job_id")
        if name == "wait":
            p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS")
    p = command(jobs, "list", cmd_job_list, "list the tenant's jobs")
    tenant(p)

    p = command(groups, "predict", cmd_predict, "classify texts (or images) with an adapter")
    adapter(p)
    p.add_argument("text", nargs="*", help="texts to classify")
    p.add_argument("--file", "-f", help="a file with one text per line ('-': stdin)")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="a PNG or JPEG image (repeatable)")
    p.add_argument("--top-k", type=int, default=1, help="labels ranked per item (default 1)")

    p = command(groups, "embed", cmd_embed, "embed texts (or images) with a frozen backbone")
    p.add_argument("text", nargs="*", help="texts to embed")
    p.add_argument("--file", "-f", help="a file with one text per line ('-': stdin)")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="a PNG or JPEG image (repeatable)")
    p.add_argument("--backbone", help="backbone id (default: the server's)")
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("graft")
    except Exception:
        return "unknown"


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse exits 2
    out = Output(args.json)
    try:
        with Client(args.url, args.key) as client:
            code = args.handler(client, args, out)
        return OK if code is None else code
    except UsageError as e:
        out.err.print(f"graft: error: {e}", markup=False)
        return USAGE
    except Detached:
        return DETACHED
    except GraftError as e:
        return report_error(e, out.err)
    except KeyboardInterrupt:
        out.err.print("graft: interrupted", markup=False)
        return DETACHED


def report_error(e: GraftError, err: Console) -> int:
    """One clear message on stderr for an error; the exit code for it."""
    if isinstance(e, ConnectionFailed):
        if e.code == "bad_url":
            err.print(f"graft: {e.message}: give --url (or GRAFT_URL) as http://host:port", markup=False)
        elif e.code == "timeout":
            err.print(f"graft: {e.message}: the server may be overloaded or the network slow; retry", markup=False)
        else:
            err.print(f"graft: {e.message}: is the server running? Start it with `make serve`, "
                      f"or point --url / GRAFT_URL at it.", markup=False)
        return CANNOT_CONNECT
    what = f"{e.status} {e.code}" if e.code else str(e.status)
    if isinstance(e, BadRequest):
        err.print(f"graft: refused ({what}): {e.message}", markup=False)
        problems = e.details if isinstance(e.details, list) else []
        if len(problems) > 1:
            for p in problems:
                if isinstance(p, dict) and "where" in p:
                    err.print(f"  - {p['where']}: {p.get('problem', '')}", markup=False)
        hint = _hint(e)
        if hint:
            err.print(f"  fix: {hint}", markup=False)
        return REFUSED
    if isinstance(e, ServerError):
        again = f"; retry in {e.retry_after:g}s" if e.retry_after else "; retry shortly"
        where = "" if e.status == 503 else " (the server's log has the details)"
        err.print(f"graft: server error ({what}): {e.message}{where}{again}", markup=False)
        return SERVER_ERROR
    err.print(f"graft: {e}", markup=False)
    return SERVER_ERROR


def _hint(e: GraftError) -> str:
    if e.status == 400:
        return "correct the input named above and run the command again"
    if e.status == 401:
        return "pass a valid key with --key or GRAFT_KEY (a local server's admin key is in .graft/admin.key)"
    if e.status == 403:
        return "this needs the admin key (--key or GRAFT_KEY)"
    if e.status == 404:
        return "check the names and ids in the command (`graft adapters list --tenant T`, `graft jobs list --tenant T`)"
    if e.status == 405:
        return "this server does not offer that operation (an older server?)"
    if e.status == 413:
        return "send fewer or smaller items (the limit is named above)"
    if e.status == 429:
        return f"retry in {e.retry_after:g}s" if e.retry_after else "retry later"
    return ""


# -- tenants and keys ----------------------------------------------------------------------------


def cmd_tenant_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    created = client.create_tenant(args.tenant)

    def render(c: dict[str, Any]) -> None:
        out.say(f"tenant {c['tenant']} created; its key (shown once, keep it):")
        out.say(c["api_key"])
    out.result(created, render)


def cmd_tenant_delete(client: Client, args: argparse.Namespace, out: Output) -> None:
    gone = client.delete_tenant(args.tenant)
    out.result(gone, lambda g: out.say(
        f"tenant {g['tenant']} erased: " + ", ".join(f"{k} {v}" for k, v in g["removed"].items())))


def cmd_key_issue(client: Client, args: argparse.Namespace, out: Output) -> None:
    key = client.issue_key(args.tenant, args.expires_in)

    def render(k: dict[str, Any]) -> None:
        expires = f", expires {k['expires_at']}" if k.get("expires_at") else ""
        out.say(f"key {k['key_id']} for {k['tenant']}{expires} (shown once, keep it):")
        out.say(k["api_key"])
    out.result(key, render)


def _keys_table(keys: dict[str, Any], out: Output) -> None:
    table = Table(title=f"keys of {escape(keys['tenant'])}")
    for col in ("key id", "created", "expires", "revoked"):
        table.add_column(col)
    for k in keys["keys"]:
        table.add_row(escape(k["key_id"]), k["created_at"], k.get("expires_at") or "never", "yes" if k["revoked"] else "")
    out.out.print(table)


def cmd_key_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    out.result(client.list_keys(args.tenant), lambda k: _keys_table(k, out))


def cmd_key_revoke(client: Client, args: argparse.Namespace, out: Output) -> None:
    keys = client.revoke_key(args.tenant, args.key_id)
    out.note(f"key {args.key_id} revoked")
    out.result(keys, lambda k: _keys_table(k, out))


# -- adapters ------------------------------------------------------------------------------------


def cmd_adapter_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    labels = [label.strip() for item in args.labels for label in item.split(",") if label.strip()]
    descriptions = {}
    for item in args.describe:
        label, sep, text = item.partition("=")
        if not sep or not label.strip():
            raise UsageError(f"--describe {item!r}: expected LABEL=TEXT")
        descriptions[label.strip()] = text
    created = client.create_adapter(args.tenant, args.adapter, labels, descriptions=descriptions or None,
                                    backbone=args.backbone)
    out.result(created, lambda c: out.say(
        f"{c['tenant']}/{c['adapter']} version {c['version']} (zero-shot on {c['backbone']}) serves: "
        + ", ".join(c["labels"])))


def cmd_adapter_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    def render(listing: dict[str, Any]) -> None:
        if not listing["adapters"]:
            out.say(f"{listing['tenant']} has no adapters yet")
            return
        table = Table(title=f"adapters of {escape(listing['tenant'])}")
        for col in ("adapter", "backbone", "active version", "versions"):
            table.add_column(col)
        for a in listing["adapters"]:
            table.add_row(escape(a["adapter"]), escape(a["backbone"]),
                          str(a["active_version"]) if a["active_version"] is not None else "-", str(a["versions"]))
        out.out.print(table)
    out.result(client.list_adapters(args.tenant), render)


def _f(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def cmd_versions(client: Client, args: argparse.Namespace, out: Output) -> None:
    def render(listing: dict[str, Any]) -> None:
        table = Table(title=f"versions of {escape(listing['tenant'])}/{escape(listing['adapter'])}")
        for col in ("version", "active", "created", "kind", "labels", "macro-F1", "accuracy", "parent"):
            table.add_column(col)
        for v in listing["versions"]:
            kind = v.get("training", {}).get("method") or v.get("method", "")
            if kind != "zero-shot":
                kind = f"{kind} ({v.get('method')}, {v.get('head')})"
            m = v.get("metrics") or {}
            table.add_row(str(v["version"]), "*" if v["active"] else "", v["created_at"][:19], escape(kind),
                          escape(", ".join(v["labels"])), _f(m.get("macro_f1")), _f(m.get("accuracy")),
                          str(v["parent_version"]) if v.get("parent_version") else "")
        out.out.print(table)
    out.result(client.versions(args.tenant, args.adapter), render)


def cmd_promote(client: Client, args: argparse.Namespace, out: Output) -> None:
    active = client.promote(args.tenant, args.adapter, args.version, allow_dropped_labels=args.allow_dropped_labels)
    out.result(active, lambda a: out.say(f"{a['tenant']}/{a['adapter']}: version {a['active_version']} serves"))


def cmd_rollback(client: Client, args: argparse.Namespace, out: Output) -> None:
    active = client.rollback(args.tenant, args.adapter)
    out.result(active, lambda a: out.say(f"{a['tenant']}/{a['adapter']}: rolled back, version {a['active_version']} serves"))


def cmd_adapter_delete(client: Client, args: argparse.Namespace, out: Output) -> None:
    gone = client.delete_adapter(args.tenant, args.adapter)
    out.result(gone, lambda d: out.say(f"{d['tenant']}/{d['adapter']} deleted"))


# -- fine-tuning ---------------------------------------------------------------------------------


def finetune_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.params:
        try:
            params = json.loads(args.params)
        except ValueError as e:
            raise UsageError(f"--params is not JSON: {e}") from e
        if not isinstance(params, dict):
            raise UsageError("--params must be a JSON object, e.g. '{\"epochs\": 30}'")
    for name in ("method", "head", "epochs"):  # the flags win over --params
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    return params


def cmd_finetune(client: Client, args: argparse.Namespace, out: Output) -> int | None:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {args.file}")
    params = finetune_params(args)
    job = client.finetune(args.tenant, args.adapter, file=path, backbone=args.backbone, params=params or None)
    if not args.wait:
        out.result(job, lambda j: out.say(
            f"job {j['job_id']} {j['status']} for {j['tenant']}/{j['adapter']}; "
            f"follow it: graft jobs wait {j['job_id']}"))
        return None
    out.note(f"job {job['job_id']} {job['status']} for {job['tenant']}/{job['adapter']} (Ctrl-C: cancel or detach)")
    return follow(client, job["job_id"], out, args.poll)


def cmd_job_wait(client: Client, args: argparse.Namespace, out: Output) -> int:
    return follow(client, args.job_id, out, args.poll)


class Follower:
    """Renders a job's events while it runs: a progress bar with the latest epoch's metrics,
    one line per milestone (and per epoch that improves the validation macro-F1)."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.best: float | None = None
        self.epoch = ""
        self.promotion: dict[str, Any] | None = None
        self.progress: Progress | None = None
        self.task: Any = None

    def start(self) -> None:
        if self.out.json:
            return
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TaskProgressColumn(), TimeElapsedColumn(), console=self.out.err)
        self.progress.start()
        self.task = self.progress.add_task("waiting", total=100)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)

    def on_status(self, job: Job) -> None:
        if self.progress is not None:
            desc = job["status"] + (f" · {self.epoch}" if self.epoch else "")
            self.progress.update(self.task, completed=100 * float(job.get("progress") or 0), description=desc)

    def on_event(self, e: Event) -> None:
        ev: dict[str, Any] = dict(e)
        kind = ev.get("kind", "")
        if kind == "promotion":
            self.promotion = ev
        if kind == "epoch":
            f1 = ev.get("val_macro_f1")
            self.epoch = describe(ev)
            if isinstance(f1, (int, float)) and (self.best is None or f1 > self.best):
                self.best = f1
                self.line(f"  {self.epoch} (best so far)")
            return
        self.line("  " + describe(ev))


def describe(ev: dict[str, Any]) -> str:
    """One line for a job event."""
    kind = ev.get("kind", "")
    if kind == "queued":
        return f"queued ({ev.get('examples')} examples)"
    if kind == "started":
        return f"started (attempt {ev.get('attempt')})"
    if kind == "validation":
        per = ", ".join(f"{k}: {v}" for k, v in (ev.get("per_class") or {}).items())
        return f"{ev.get('examples')} examples, {ev.get('classes')} classes ({per})"
    if kind == "split":
        test = f", {ev['test']} to test" if ev.get("test") else ""
        return f"split: {ev.get('train')} to train, {ev.get('validation')} to validate{test} (seed {ev.get('seed')})"
    if kind == "candidate":
        return (f"candidate {ev.get('candidate')}: validation macro-F1 {_f(ev.get('validation_macro_f1'))} "
                f"in {_f(ev.get('seconds'), 1)} s")
    if kind == "candidate_skipped":
        return f"candidate {ev.get('candidate')} skipped: {ev.get('reason')}"
    if kind == "chosen":
        return f"chosen: {ev.get('candidate')} ({ev.get('reason')})"
    if kind == "early_stop":
        return f"early stop at epoch {ev.get('epoch')}: best epoch {ev.get('best_epoch')} (patience {ev.get('patience')})"
    if kind == "evaluation":
        return f"evaluation: macro-F1 {_f(ev.get('macro_f1'))}, accuracy {_f(ev.get('accuracy'))}"
    if kind == "epoch":
        return (f"epoch {ev.get('epoch')} · loss {_f(ev.get('train_loss'), 4)} · val loss {_f(ev.get('val_loss'), 4)}"
                f" · val macro-F1 {_f(ev.get('val_macro_f1'))}")
    if kind == "promotion":
        verdict = "promoted" if ev.get("promoted") else "kept as a candidate"
        return f"version {ev.get('version')} {verdict}: {ev.get('reason', ev.get('decision', ''))}"
    if kind == "succeeded":
        return f"succeeded: version {ev.get('version')}"
    if kind == "failed":
        return f"failed: {ev.get('error') or ev.get('reason') or 'see `graft jobs show`'}"
    if kind == "cancelled":
        return f"cancelled (by {ev.get('by', 'request')})"
    if kind == "cancel_requested":
        return "cancel requested: the job stops at its next epoch"
    rest = {k: v for k, v in ev.items() if k not in ("n", "at", "kind")}
    return kind + (f" {json.dumps(rest, separators=(', ', ': '))}" if rest else "")


def follow(client: Client, job_id: str, out: Output, poll_s: float = 1.0) -> int:
    """Wait for the job with a progress bar; print the evaluation; the exit code (0 only when
    it succeeded and its version was promoted). Ctrl-C asks whether to cancel the job."""
    view = Follower(out)
    view.start()
    try:
        job = client.wait(job_id, on_event=view.on_event, on_status=view.on_status, poll_s=poll_s)
    except KeyboardInterrupt:
        view.stop()
        job = interrupted(client, job_id, out, poll_s)
    finally:
        view.stop()
    if view.promotion is None and job["status"] == "succeeded":  # events missed (e.g. after Ctrl-C)
        view.promotion = next((dict(e) for e in client.events(job_id) if e["kind"] == "promotion"), None)
    out.result(job, lambda j: render_outcome(j, view.promotion, out))
    return OK if job["status"] == "succeeded" and job["promoted"] else JOB_NOT_OK


def ask(prompt: str, err: Console) -> bool:
    """A y/N question on stderr, answered on stdin (no answer, EOF or Ctrl-C: no)."""
    err.print(prompt, end="", markup=False)
    err.file.flush()
    try:
        answer = sys.stdin.readline()
    except (KeyboardInterrupt, OSError, ValueError):
        answer = ""
    if not answer.endswith("\n"):
        err.print()
    return answer.strip().lower() in ("y", "yes")


def interrupted(client: Client, job_id: str, out: Output, poll_s: float) -> Job:
    """Ctrl-C while following: cancel the job if the user says so (and wait for it to stop),
    else detach and say how to follow it again."""
    if not ask(f"cancel the job {job_id}? [y/N] ", out.err):
        out.err.print(f"detached: job {job_id} keeps going; follow it again with `graft jobs wait {job_id}` "
                      f"(cancel it with `graft jobs cancel {job_id}`)", markup=False)
        raise Detached()
    job = client.cancel(job_id)
    out.err.print(f"cancel requested: job {job_id} is {job['status']}", markup=False)
    try:
        return client.wait(job_id, poll_s=min(poll_s, 0.5), timeout=120)
    except (KeyboardInterrupt, TimeoutError):
        out.err.print(f"the job stops at its next epoch; check with `graft jobs show {job_id}`", markup=False)
        raise Detached() from None


def render_outcome(job: dict[str, Any], promotion: dict[str, Any] | None, out: Output) -> None:
    """The ended job: the evaluation table (this version against the baselines on the same
    validation split), per-class scores, and whether it serves."""
    ref = f"{job['tenant']}/{job['adapter']}"
    if job["status"] == "failed":
        err = job.get("error") or {}
        out.say(f"job {job['job_id']} failed: {err.get('code')}: {err.get('message') or ''}".rstrip(": "))
        return
    if job["status"] == "cancelled":
        out.say(f"job {job['job_id']} was cancelled; nothing was published for {ref}")
        return
    metrics = job.get("metrics") or {}
    table = Table(title=f"evaluation of {escape(ref)} version {job['version']} "
                        f"(validation split, n={metrics.get('n', '?')})")
    for col in ("model", "macro-F1", "accuracy"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row(f"version {job['version']} (this job)", _f(metrics.get("macro_f1")), _f(metrics.get("accuracy")),
                  style="bold")
    for name, b in (metrics.get("baselines") or {}).items():
        label = f"active version {b['version']}" if name == "active" and "version" in b else name.replace("_", "-")
        table.add_row(escape(label), _f(b.get("macro_f1")), _f(b.get("accuracy")))
    out.out.print(table)
    per_class = metrics.get("per_class") or {}
    if per_class:
        classes = Table(title="per class")
        for col in ("label", "precision", "recall", "F1", "support"):
            classes.add_column(col, justify="left" if col == "label" else "right")
        for label, s in per_class.items():
            classes.add_row(escape(label), _f(s.get("precision")), _f(s.get("recall")), _f(s.get("f1")),
                            str(s.get("support", "")))
        out.out.print(classes)
    reason = f": {promotion['reason']}" if promotion and promotion.get("reason") else ""
    if job["promoted"]:
        out.say(f"version {job['version']} promoted: it serves {ref}{reason}")
    else:
        out.say(f"version {job['version']} kept as a candidate{reason}")
        dropped = ((job.get("metrics") or {}).get("label_changes") or {}).get("dropped")
        out.say(f"promote it with: graft adapters promote --tenant {job['tenant']} --adapter {job['adapter']} "
                f"{job['version']}" + (" --allow-dropped-labels" if dropped else ""))


def cmd_job_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    def render(j: dict[str, Any]) -> None:
        table = Table(show_header=False, title=f"job {escape(j['job_id'])}")
        table.add_column("field")
        table.add_column("value")
        for k in ("tenant", "adapter", "backbone", "status", "progress", "version", "promoted", "attempts",
                  "created_at", "finished_at"):
            v = j.get(k)
            table.add_row(k, escape(f"{v:.0%}" if k == "progress" else ("-" if v is None else str(v))))
        if j.get("error"):
            table.add_row("error", escape(f"{j['error']['code']}: {j['error'].get('message') or ''}"))
        m = j.get("metrics") or {}
        if m:
            table.add_row("macro-F1", _f(m.get("macro_f1")))
            table.add_row("accuracy", _f(m.get("accuracy")))
        out.out.print(table)
    out.result(client.job(args.job_id), render)


def cmd_job_events(client: Client, args: argparse.Namespace, out: Output) -> None:
    def render(events: list[dict[str, Any]]) -> None:
        table = Table(title=f"events of job {escape(args.job_id)}")
        for col in ("n", "at", "event"):
            table.add_column(col)
        for e in events:
            table.add_row(str(e.get("n")), str(e.get("at", ""))[:23], escape(describe(e)))
        out.out.print(table)
    out.result(client.events(args.job_id), render)


def cmd_job_cancel(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.cancel(args.job_id)
    out.result(job, lambda j: out.say(
        f"job {j['job_id']}: {j['status']}" + ("" if j["status"] in ENDED else " (it stops at its next epoch)")))


def cmd_job_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    def render(jobs: list[dict[str, Any]]) -> None:
        table = Table(title=f"jobs of {escape(args.tenant)}")
        for col in ("job id", "adapter", "status", "progress", "version", "promoted", "created"):
            table.add_column(col)
        for j in jobs:
            table.add_row(escape(j["job_id"]), escape(j["adapter"]), j["status"], f"{j['progress']:.0%}",
                          str(j["version"] or "-"), "yes" if j["promoted"] else "", j["created_at"][:19])
        out.out.print(table)
    out.result(client.jobs(args.tenant), render)


# -- inference -----------------------------------------------------------------------------------


def read_inputs(args: argparse.Namespace) -> tuple[list[Any], list[str]]:
    """The items to send and a short name for each (for tables)."""
    texts: list[str] = list(args.text)
    if args.file:
        try:
            lines = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read {args.file}: {e.strerror or e}") from e
        texts += [line for line in lines.splitlines() if line.strip()]
    items: list[Any] = list(texts)
    names = [t if len(t) <= 60 else t[:57] + "..." for t in texts]
    for image in args.image:
        try:
            data = Path(image).read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {image}: {e.strerror or e}") from e
        items.append({"image": base64.b64encode(data).decode()})
        names.append(image)
    if not items:
        raise UsageError("nothing to send: give texts, --file or --image")
    return items, names


def cmd_predict(client: Client, args: argparse.Namespace, out: Output) -> None:
    items, names = read_inputs(args)
    result = client.predict(args.tenant, items, adapter=args.adapter, top_k=args.top_k)

    def render(r: dict[str, Any]) -> None:
        table = Table(title=f"{escape(r['tenant'])}/{escape(r['adapter'])} version {r['version']}")
        for col in ("input", "label", "score"):
            table.add_column(col, justify="right" if col == "score" else "left")
        if args.top_k > 1:
            table.add_column("top")
        for name, p in zip(names, r["predictions"]):
            row = [escape(name), escape(p["label"]), _f(p["score"])]
            if args.top_k > 1:
                row.append(escape(", ".join(f"{t['label']} {t['score']:.3f}" for t in p["top"])))
            table.add_row(*row)
        out.out.print(table)
    out.result(result, render)


def cmd_embed(client: Client, args: argparse.Namespace, out: Output) -> None:
    items, names = read_inputs(args)
    result = client.embed(items, backbone=args.backbone)

    def render(r: dict[str, Any]) -> None:
        table = Table(title=f"{escape(r['backbone'])}: {r['dim']}-d, L2-normalised (--json for every value)")
        for col in ("input", "first values", "truncated"):
            table.add_column(col)
        for i, (name, row) in enumerate(zip(names, r["embeddings"])):
            head = ", ".join(f"{v:+.4f}" for v in row[:4]) + ", ..."
            table.add_row(escape(name), head, "yes" if i in r["truncated"] else "")
        out.out.print(table)
    out.result(result, render)


if __name__ == "__main__":
    sys.exit(main())
