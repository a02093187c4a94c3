"""The command line's grammar: global options, and each command's arguments in a function
of its own, listed in ``COMMANDS`` (in the order ``--help`` shows them).

``parse`` builds only what the call needs: when the arguments name a command, that
command's parser and no other (argparse builds a parser and a help formatter for each,
and under emulation building all of them cost ~100 ms per call). Output cannot differ:
a named command's parser is the only one argparse would use, and the usage line shows
``COMMAND``, not the list. When the command cannot be told from the arguments with
certainty (none, an unknown one, an abbreviated or unknown option before it, ``--help``),
everything is built, for ``--help`` and the errors that list the commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from .._version import __version__

Arguments = Callable[[argparse.ArgumentParser], None]

#: Global options that take a value (``--opt VALUE``): what ``command_in`` skips over. One
#: added to ``build`` but not here fails safe: ``command_in`` then finds no command, and
#: the whole grammar is built.
_VALUED = ("--allow", "--search-path", "--pool", "--cache", "--key-file")
_FLAGS = ("--json", "--verbose", "-v", "--offline", "--userland", "--force", "--cached", "--primary")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    return build(command_in(argv)).parse_args(argv)


def command_in(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs, when that is certain without argparse; else None."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUED:
            next(args, None)
        elif arg in _FLAGS or arg.split("=", 1)[0] in _VALUED and "=" in arg:
            continue
        else:  # the command, or something argparse must judge ("--" included)
            return arg if arg in COMMANDS else None
    return None


def build(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, that command's and no other."""
    parser = argparse.ArgumentParser(
        prog="dsg-storage", description="Transactional changes to ZFS repositories.", formatter_class=Formatter
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="POOL[/PREFIX]",
        help="pool or dataset prefix that may be changed (repeatable; adds to $DSG_STORAGE_ALLOW)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log ZFS steps to stderr")
    parser.add_argument("--offline", action="store_true", help="read an exported pool, imported read-only for the call")
    parser.add_argument(
        "--userland",
        action="store_true",
        help="read an exported pool in userland (libzpool in a helper process): no ZFS module, no root",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        # Not "force": bundle export's and lock's own --force (after the command) would
        # overwrite it with their default, and this one would be dropped without a word.
        dest="userland_force",
        help="with --userland: read a pool whose labels say it is in use elsewhere",
    )
    parser.add_argument(
        "--search-path",
        action="append",
        metavar="PATHS",
        help="with --offline: files, directories or devices to search (repeatable; colon-separated accepted)",
    )
    parser.add_argument("--pool", metavar="NAME|ID", help="with --offline: which pool, when the paths hold several")
    parser.add_argument(
        "--key-file",
        action="append",
        metavar="[ROOT=]FILE",
        help="with --userland: the key of encryption root ROOT (default: of every encrypted dataset) "
        "as zfs load-key reads it (repeatable; ./FILE for a file whose name holds '=')",
    )
    parser.add_argument(
        "--cache", metavar="FILE", help="read cache: live reads are recorded there ($DSG_STORAGE_CACHE)"
    )
    parser.add_argument(
        "--primary",
        action="store_true",
        help="act on a replica (a repository whose properties were received) as the primary",
    )
    parser.add_argument(
        "--cached", action="store_true", help="with --offline: if the pool cannot be found, serve reads from the cache"
    )
    parser.add_argument("--version", action="version", version=f"dsg-storage {__version__}")
    # prog given: argparse would otherwise format the usage to find it out.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog=parser.prog)
    for name, (help, arguments) in COMMANDS.items():
        if only is None or only == name:
            arguments(sub.add_parser(name, help=help, formatter_class=Formatter))
    return parser


# ------------------------------------------------------------------------------ commands
def _dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the steps it would take; change nothing")


def _repo_tx(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("tx")
    _dry_run(p)


def _begin(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("--mountpoint", help="where the repository is mounted (required for init)")
    p.add_argument("--owner", metavar="UID:GID", help="owner of the repository's root directory")
    p.add_argument("--mode", metavar="OCTAL", help="mode of the repository's root directory, e.g. 0750")
    p.add_argument(
        "--property",
        dest="properties",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a ZFS user property (org.example:job=nightly) the workspace is created with and the "
        "repository keeps after commit (repeatable; through sudo, only those the policy's [properties] allows)",
    )
    _dry_run(p)


def _commit(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("tx")
    p.add_argument(
        "--wait",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="wait this long for a process writing in the repository to finish (default: refuse at once)",
    )
    p.add_argument("-m", "--message", help="recorded on the commit snapshot")
    _dry_run(p)


def _recover(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo", nargs="?", help="the repository (or --pool)")
    p.add_argument(
        "--pool",
        dest="recover_pool",
        metavar="POOL",
        help="every allowed repository of POOL instead, one after the other (after a reboot: the zedlet runs it)",
    )
    p.add_argument(
        "--abort-stale",
        metavar="AGE",
        type=duration,
        help="also roll back open transactions older than AGE (seconds, or 90m, 12h, 7d) that nobody uses",
    )
    _dry_run(p)


def _repo(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")


def _repos(p: argparse.ArgumentParser) -> None:
    p.add_argument("under", nargs="?")


def _ls(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("path", nargs="?", default="")
    p.add_argument("--commit", metavar="SNAPSHOT", help="a commit (short snapshot name); default: the head")


def _stat(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("path")
    p.add_argument("--commit", metavar="SNAPSHOT")


def _bundle(p: argparse.ArgumentParser) -> None:
    bundle_sub = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION", prog=p.prog)
    b = bundle_sub.add_parser(
        "export", help="write a bundle (full, or incremental with --since)", formatter_class=Formatter
    )
    b.add_argument("repo")
    b.add_argument("--snapshot", metavar="SNAP", help="last snapshot to carry (default: the latest)")
    b.add_argument("--since", metavar="SNAP", help="make an incremental bundle from this base")
    b.add_argument("-o", "--output", required=True, metavar="FILE")
    b.add_argument("--force", action="store_true", help="through sudo: replace FILE if it exists")
    _sign_arguments(b)
    _audit_argument(b)
    b = bundle_sub.add_parser("inspect", help="what a bundle holds (no pool touched)", formatter_class=Formatter)
    b.add_argument("file")
    b = bundle_sub.add_parser(
        "verify", help="check a bundle's structure, streams, checksums and signature", formatter_class=Formatter
    )
    b.add_argument("file")
    _signature_arguments(b)
    b = bundle_sub.add_parser(
        "import", help="verify, then receive a bundle: all of it or nothing", formatter_class=Formatter
    )
    b.add_argument("file")
    b.add_argument("--into", required=True, metavar="REPO")
    b.add_argument("--mountpoint", help="for a full bundle: where the new repository is mounted")
    b.add_argument("--owner", metavar="UID:GID", help="owner of the repository's root (default: the invoking user)")
    b.add_argument("--mode", metavar="OCTAL", help="mode of the repository's root (default: 0755)")
    _signature_arguments(b)
    _audit_argument(b)
    b.add_argument(
        "--check-streams",
        action="store_true",
        help="also check every stream byte against the bundle's digests while ZFS receives, as verify does "
        "(default: ZFS's own stream checksums)",
    )
    b.add_argument(
        "--dry-run", action="store_true", help="check the bundle, print what it would receive; change nothing"
    )


def _lock(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    p.add_argument("--force", action="store_true", help="through sudo: replace FILE if it exists")
    _sign_arguments(p)


def _verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock", required=True, metavar="FILE")
    p.add_argument("repo")
    _signature_arguments(p)


def _snapshot(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("--name", help="snapshot name (default dsg-snapshot-<UTC time>)")
    p.add_argument("--queue", action="store_true", help="if the pool is unavailable, queue the request")
    _dry_run(p)


def _snapshot_ok(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "datasets",
        nargs="*",
        metavar="DATASET",
        help="at or under which (default: $SANOID_TARGETS or $ZREPL_FS, as the tool sets them)",
    )


def _queue(p: argparse.ArgumentParser) -> None:
    queue_sub = p.add_subparsers(dest="queue_command", required=True, metavar="ACTION", prog=p.prog)
    queue_sub.add_parser(
        "list", help="every item: id, kind, target, state, attempts, last error, age", formatter_class=Formatter
    )
    queue_sub.add_parser("stats", help="counts per state, age of the oldest pending item", formatter_class=Formatter)
    flush = queue_sub.add_parser("flush", help="run every pending item now, due or not", formatter_class=Formatter)
    flush.add_argument(
        "--pool", dest="queue_pool", help="only the items of this pool (the zedlet runs this when a pool is imported)"
    )
    flush.add_argument("--dry-run", action="store_true", help="list the ZFS steps it would take; change nothing")
    drop = queue_sub.add_parser("drop", help="remove an item", formatter_class=Formatter)
    drop.add_argument("id", type=int)


def _gc(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", dest="queue_pool", help="only the items of this pool")
    p.add_argument("--dry-run", action="store_true", help="list the ZFS steps it would take; change nothing")


def _prune(p: argparse.ArgumentParser) -> None:
    from ..core.periods import PERIODS  # the periods alone, without the retention rules

    p.add_argument("repo")
    p.add_argument("--keep-last", type=int, default=0, metavar="N", help="the newest N commits")
    for period in PERIODS:
        p.add_argument(
            f"--keep-{period}",
            type=int,
            default=0,
            metavar="N",
            help=f"the newest commit of each of N {period} periods (UTC)",
        )
    p.add_argument("--save-policy", action="store_true", help="store these rules on the repository for later prunes")
    p.add_argument("--dry-run", action="store_true", help="show what would be destroyed; change nothing")


def _keep(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("commit", help="the commit's snapshot name (after '@')")
    p.add_argument("--remove", action="store_true")


def _metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--under",
        action="append",
        default=[],
        metavar="DATASET",
        help="repositories at or below it (repeatable; default: the allow-list)",
    )
    p.add_argument(
        "--textfile", metavar="DIR", help="write DIR/dsg_storage.prom atomically (node_exporter) instead of printing"
    )


def _install_hooks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zedlet-dir", metavar="DIR", help="install the zedlet there (ZED's: /etc/zfs/zed.d)")
    p.add_argument("--systemd-dir", metavar="DIR", help="install the units there (e.g. /etc/systemd/system)")
    p.add_argument("--print", action="store_true", help="print the files instead of installing them")
    p.add_argument(
        "--command",
        dest="hook_command",
        metavar="ARGV",
        help="the dsg-storage command the hooks run (default: this one)",
    )


def _cache(p: argparse.ArgumentParser) -> None:
    cache_sub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION", prog=p.prog)
    cache_sub.add_parser("stats", help="reads held per kind, oldest and newest, file size", formatter_class=Formatter)
    clear = cache_sub.add_parser("clear", help="forget cached reads", formatter_class=Formatter)
    clear.add_argument("--kind", choices=("history", "repositories"), help="only this kind")


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parent", default="dsgtest/demo", help="dataset to work under (default: dsgtest/demo)")
    p.add_argument("--mount-dir", help="directory for the demo's mount paths (default: a new temporary one)")


#: Command -> (its help, what adds its arguments), in the order ``--help`` lists them.
COMMANDS: dict[str, tuple[str, Arguments]] = {
    "begin": ("open a transaction (init or sync, chosen automatically)", _begin),
    "commit": ("make a transaction's workspace the repository", _commit),
    "rollback": ("throw a transaction's workspace away", _repo_tx),
    "abort": ("roll back an open (possibly stale) transaction", _repo_tx),
    "recover": ("finish interrupted steps (also done by every changing command)", _recover),
    "status": ("pending transactions, mountpoint, owner, last commit", _repo),
    "history": ("commits, oldest first", _repo),
    "repos": ("repositories at or below a dataset (default: the offline pool)", _repos),
    "ls": ("files of the head or of a commit", _ls),
    "stat": ("one file's type, size, mode, owner and time", _stat),
    "cat": ("one file's contents to stdout", _stat),
    "bundle": ("repository snapshots as a verified file: export, inspect, verify, import", _bundle),
    "lock": ("write a lock file: the repository's commits with their GUIDs", _lock),
    "verify": ("does the repository match a lock file?", _verify),
    "snapshot": ("take a snapshot now, or queue it while the pool is away", _snapshot),
    "snapshot-ok": ("for snapshot tools' hooks: exit 6 while a transaction is in flight there", _snapshot_ok),
    "queue": ("work that could not run yet: list, stats, flush, drop", _queue),
    "gc": ("run the queue once (the items that are due)", _gc),
    "prune": ("destroy commits a retention policy lets go (--dry-run: only show)", _prune),
    "keep": ("mark a commit so that prune never destroys it (--remove: unmark)", _keep),
    "metrics": ("Prometheus metrics: queue, open transactions, latest commits", _metrics),
    "install-hooks": ("install (or --print) the ZED zedlet and systemd units that run the queue", _install_hooks),
    "cache": ("the read cache: stats, clear", _cache),
    "demo": ("show a transaction on real ZFS (used by the README's first command)", _demo),
}


# ------------------------------------------------------------------------------ helpers
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``3600``, ``90m``, ``12h``, ``7d``: seconds."""
    unit = text[-1:] if text[-1:] in _UNITS else "s"
    number = text[:-1] if text[-1:] in _UNITS else text
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age (seconds, or e.g. 90m, 12h, 7d)") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an age (seconds, or e.g. 90m, 12h, 7d)")
    return value


def _sign_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sign", metavar="KEY", help="sign with this OpenSSH private key (signature in FILE.sig)")


def _signature_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allowed-signers", metavar="FILE", help="check FILE.sig against this OpenSSH allowed-signers file")
    p.add_argument("--require-signature", action="store_true", help="refuse a file without a good signature (exit 9)")


class Formatter(argparse.HelpFormatter):
    """argparse's formatter, looking up the terminal's width only when help is formatted.

    argparse builds a formatter for every argument it adds, only to check its metavar,
    and each looks up the width through shutil (30 ms to import under emulation), which
    no command that prints no help needs."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, 80 if width is None else width)
        self._width_known = width is not None
        self._asked_help_position = max_help_position

    def format_help(self) -> str:
        if not self._width_known:  # what HelpFormatter.__init__ does when given no width
            import shutil

            self._width = shutil.get_terminal_size().columns - 2
            self._max_help_position = min(self._asked_help_position, max(self._width - 20, self._indent_increment * 2))
            self._width_known = True
        return super().format_help()


class _AuditLogHelp(Formatter):
    """Shows ``--audit-log``'s default, read from ``transfer.audit`` only when help is printed."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "audit_log":
            from ..transfer.audit import DEFAULT_PATH

            return f"default: {DEFAULT_PATH}"
        return action.help


def _audit_argument(p: argparse.ArgumentParser) -> None:
    # None stands for the default (``transfer.audit.DEFAULT_PATH``), resolved by commands._audit_log.
    p.formatter_class = _AuditLogHelp
    p.add_argument("--audit-log", metavar="FILE", help="default: the audit log's standard path")
