"""``zfs.listing.CommandListing``: the lists read from ``zfs list|get -j -p`` (canned
output, as OpenZFS 2.3 prints it) in the shape the channel programs give. That both
listings agree on a real pool is tests/zfs/test_listing.py."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from dsg_storage import names
from dsg_storage.errors import DatasetNotFoundError, ZfsError
from dsg_storage.zfs import programs
from dsg_storage.zfs.listing import CommandError, CommandListing, ZfsCommand, snapshot_of, table
from dsg_storage.zfs.port import Snapshot

PREFIX = "dsg-storage:"
REPO, WS = "tank/data/a", "tank/data/a.dsg-ws-20261203T000000Z-abcdef"


def _ds(name: str, props: dict[str, tuple[str, str]]) -> dict[str, Any]:
    return {
        "name": name,
        "properties": {k: {"value": v, "source": {"type": t, "data": "-"}} for k, (v, t) in props.items()},
    }


class Canned(ZfsCommand):
    """Answers each ``zfs`` command from a table: the first key all of whose words are in
    it (None: the dataset does not exist)."""

    def __init__(self, answers: dict[tuple[str, ...], Any]) -> None:
        super().__init__()
        self.answers = answers
        self.ran: list[tuple[str, ...]] = []

    def __call__(self, *args: str) -> str:
        self.ran.append(args)
        for words, datasets in self.answers.items():
            if all(w in args for w in words):
                if datasets is None:
                    raise DatasetNotFoundError(f"zfs: {args[-1]}: dataset does not exist", dataset=args[-1])
                if "name,property,value,source" in args:
                    return as_text(datasets, args[-2].split(","))
                if "-H" in args:  # names alone, one a line
                    return "".join(f"{name}\n" for name in datasets)
                return json.dumps({"output_version": {"command": f"zfs {args[0]}"}, "datasets": datasets})
        raise AssertionError(f"unexpected zfs {args}")


def _source(kind: str) -> str:
    return {"LOCAL": "local", "RECEIVED": "received", "INHERITED": "inherited from tank", "NONE": "-"}[kind]


def as_text(datasets: dict[str, Any], props: list[str]) -> str:
    """``datasets`` (JSON) as ``zfs get -H -p -o name,property,value,source PROPS``
    prints them: a line per dataset and property asked for, ``-`` where not set."""
    lines = []
    for name, info in datasets.items():
        for key in props:
            got = info["properties"].get(key)
            value, source = (got["value"], _source(got["source"]["type"])) if got else ("-", "-")
            lines.append(f"{name}\t{key}\t{value}\t{source}\n")
    return "".join(lines)


def family_answers() -> dict[tuple[str, ...], Any]:
    return {
        ("list", "-H", "tank/data"): {"tank/data": {}, REPO: {}, WS: {}, "tank/data/ab": {}},
        ("get", "all", "tank/data", REPO, WS): {
            "tank/data": _ds("tank/data", {"mountpoint": ("/srv", "LOCAL"), "origin": ("-", "NONE")}),
            REPO: _ds(
                REPO,
                {
                    "mountpoint": ("/srv/a", "INHERITED"),
                    "origin": ("-", "NONE"),
                    "dsg-storage:owner": ("1000:1000", "LOCAL"),
                    "dsg-storage:inherited": ("x", "INHERITED"),  # not its own
                    "com.example:note": ("a\tb\nc", "LOCAL"),  # another tool's, set here: kept
                    "compression": ("lz4", "LOCAL"),  # native: not a family property
                    "zoned": ("off", "DEFAULT"),
                },
            ),
            WS: _ds(
                WS,
                {
                    "mountpoint": ("/srv/a.ws", "LOCAL"),
                    "origin": (f"{REPO}@dsg-base-x", "NONE"),
                    "dsg-storage:tx": ("T", "LOCAL"),
                    "zoned": ("on", "LOCAL"),
                },
            ),
        },
    }


def test_the_family_is_described_as_the_channel_program_describes_it() -> None:
    run = Canned(family_answers())
    assert CommandListing(run).family(REPO, PREFIX) == {
        REPO: {"dsg-storage:owner": "1000:1000", "com.example:note": "a\tb\nc", "mountpoint": "/srv/a"},
        WS: {"dsg-storage:tx": "T", "zoned": "on", "origin": f"{REPO}@dsg-base-x", "mountpoint": "/srv/a.ws"},
        "tank/data": {"mountpoint": "/srv"},
    }
    assert "tank/data/ab" not in run.ran[1]  # a sibling's properties are never asked for


def test_a_replica_is_one_whose_properties_of_ours_were_all_received() -> None:
    answers = family_answers()
    answers[("get", "all", "tank/data", REPO, WS)][REPO] = _ds(
        REPO,
        {
            "mountpoint": ("/srv/a", "INHERITED"),
            "dsg-storage:owner": ("1000:1000", "RECEIVED"),
            "com.example:x": ("1", "RECEIVED"),  # not ours: not kept
        },
    )
    family = CommandListing(Canned(answers)).family(REPO, PREFIX)
    assert family[REPO] == {"dsg-storage:owner": "1000:1000", "@received": "yes", "mountpoint": "/srv/a"}


def test_a_missing_parent_is_an_empty_family() -> None:
    assert CommandListing(Canned({("list",): None})).family(REPO, PREFIX) == {}


class ByProgram(Canned):
    """``zfs program`` answered with ``program`` (text, or an error to raise); every other
    command as ``Canned`` answers it."""

    def __init__(self, answers: dict[tuple[str, ...], Any], program: str | ZfsError) -> None:
        super().__init__(answers)
        self.program = program
        self.stdin: list[str | None] = []

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        if args[0] != "program":
            return super().__call__(*args)
        self.ran.append(args)
        self.stdin.append(stdin)
        if isinstance(self.program, ZfsError):
            raise self.program
        return self.program


def test_as_root_the_family_is_the_channel_program_run_by_one_zfs_program() -> None:
    answer = {REPO: {"mountpoint": "/srv/a", "dsg-storage:owner": "1000:1000"}, "tank/data": {"mountpoint": "/srv"}}
    run = ByProgram({}, json.dumps({"return": answer}))
    assert CommandListing(run, programs=True).family(REPO, PREFIX) == answer
    assert run.ran == [("program", "-n", "-j", "tank", "/dev/stdin", "tank/data", REPO, PREFIX)]
    assert run.stdin == [programs.FAMILY]


def test_a_pool_that_refuses_the_program_is_read_by_the_commands() -> None:
    for refusal in (
        "Channel program execution failed: pool is read-only",
        "cannot open 'tank': no such pool",
        "Channel program execution failed:\nPermission denied. Channel programs must be run as root.",
    ):
        run = ByProgram(family_answers(), CommandError(f"zfs program -n -j tank: {refusal}", said=refusal))
        assert CommandListing(run, programs=True).family(REPO, PREFIX) == CommandListing(
            Canned(family_answers())
        ).family(REPO, PREFIX)
        assert [args[0] for args in run.ran] == ["program", "list", "get"]


def test_a_program_that_fails_otherwise_is_our_error() -> None:
    timed_out = "Channel program execution failed:\nTimed out."
    # A dataset may be named like a refusal (names may hold spaces): only what zfs said counts.
    named = f"zfs program -n -j tank /dev/stdin tank/data tank/data/no such pool {PREFIX}: {timed_out}"
    for answer in (CommandError(named, said=timed_out), "{", '{"x": 1}', "[]"):
        with pytest.raises(ZfsError):
            CommandListing(ByProgram(family_answers(), answer), programs=True).family(REPO, PREFIX)


def test_snapshots_carry_only_their_own_properties_of_ours() -> None:
    snap, other = f"{REPO}@dsg-commit-1", f"{REPO}@autosnap"
    natives = {"guid": ("18446744073709551615", "NONE"), "createtxg": ("9", "NONE"), "creation": ("5", "NONE")}
    run = Canned(
        {
            ("list", "snapshot"): {
                snap: _ds(snap, natives),
                other: _ds(other, {"guid": ("7", "NONE"), "createtxg": ("12", "NONE"), "creation": ("6", "NONE")}),
            },
            ("get", "snapshot"): {
                snap: _ds(snap, {"dsg-storage:tx": ("T", "LOCAL"), "com.sun:auto-snapshot": ("false", "LOCAL")}),
                other: _ds(other, {"dsg-storage:tx": ("U", "RECEIVED")}),
            },
        }
    )
    listed = {s["name"]: s for s in CommandListing(run).snapshots(REPO, PREFIX)}
    assert listed[snap]["user"] == {"dsg-storage:tx": "T"} and listed[snap]["guid"] == "18446744073709551615"
    assert listed[other]["user"] == {"dsg-storage:tx": "U"} and listed[other]["createtxg"] == "12"


def test_filesystems_of_a_missing_dataset_are_none() -> None:
    assert CommandListing(Canned({("list",): None, ("get",): None})).filesystems("tank/none", PREFIX) == {}


def test_output_that_is_not_zfs_json_is_our_error_never_a_traceback() -> None:
    rng = random.Random(20261203)
    good = json.dumps({"datasets": family_answers()[("get", "all", "tank/data", REPO, WS)]})
    names = f"tank/data\n{REPO}\n{WS}\n"
    for _ in range(500):
        cut = rng.randrange(len(good))
        junk = good[:cut] + rng.choice(["", "}", "\x00", '"x"', "[]", "null", "{}"]) + good[cut + rng.randrange(3) :]

        class Junk(ZfsCommand):
            def __call__(self, *args: str, out: str = junk) -> str:
                return names if "-H" in args else out

        try:
            CommandListing(Junk()).family(REPO, PREFIX)
        except ZfsError:
            pass


def test_with_our_properties_known_a_snapshot_list_is_one_zfs_get_of_them() -> None:
    snap = f"{REPO}@dsg-commit-1"
    run = Canned(
        {
            ("get", "snapshot"): {
                snap: _ds(
                    snap,
                    {
                        "guid": ("18446744073709551615", "NONE"),
                        "createtxg": ("9", "NONE"),
                        "creation": ("5", "NONE"),
                        "dsg-storage:tx": ("T", "LOCAL"),
                        "dsg-storage:owner": ("0:0", "INHERITED"),  # the repository's: not the snapshot's
                        "dsg-storage:message": ("-", "NONE"),  # not set
                    },
                )
            }
        }
    )
    (listed,) = CommandListing(run, known=names.OUR_PROPS).snapshots(REPO, PREFIX)
    assert len(run.ran) == 1 and "all" not in run.ran[0] and "dsg-storage:message" in run.ran[0][-2]
    assert snapshot_of(listed).user_props == {"dsg-storage:tx": "T"}
    assert snapshot_of(listed).guid == 2**64 - 1


def test_with_our_properties_known_filesystems_are_one_zfs_get() -> None:
    run = Canned(
        {
            ("get", "-r"): {
                REPO: _ds(
                    REPO,
                    {
                        "mountpoint": ("/srv/a", "INHERITED"),
                        "origin": ("-", "NONE"),
                        "dsg-storage:owner": ("0:0", "LOCAL"),
                    },
                )
            }
        }
    )
    assert CommandListing(run, known=names.OUR_PROPS).filesystems(REPO, PREFIX) == {
        REPO: {"dsg-storage:owner": "0:0", "mountpoint": "/srv/a"}
    }
    assert len(run.ran) == 1 and "-H" in run.ran[0]


def test_with_our_properties_known_a_history_is_one_zfs_get_of_the_origin_and_the_snapshots() -> None:
    snap, child = f"{REPO}@dsg-commit-1", f"{REPO}/nested"
    unset = ("-", "NONE")
    run = Canned(
        {
            ("get", "-d", "filesystem,snapshot"): {
                REPO: _ds(
                    REPO,
                    {
                        "guid": ("5", "NONE"),
                        "origin": (f"{REPO}.dsg-old-T@dsg-commit-0", "NONE"),
                        "dsg-storage:tx": unset,
                    },
                ),
                snap: _ds(
                    snap,
                    {
                        "guid": ("18446744073709551615", "NONE"),
                        "createtxg": ("9", "NONE"),
                        "creation": ("5", "NONE"),
                        "origin": unset,  # not a snapshot's: zfs get prints '-'
                        "dsg-storage:tx": ("T", "LOCAL"),
                        "dsg-storage:owner": ("0:0", "INHERITED"),  # the repository's
                    },
                ),
                child: _ds(child, {"mountpoint": ("/srv/a/nested", "INHERITED")}),
            }
        }
    )
    listing = CommandListing(run, known=names.OUR_PROPS, on_snapshots=names.SNAPSHOT_PROPS)
    origin, snapshots = listing.origin_and_snapshots(REPO, PREFIX)
    assert len(run.ran) == 1 and "-j" in run.ran[0]  # messages may hold newlines: not -H text
    # only what a snapshot list needs, and the origin: each property asked costs a lookup per snapshot
    assert run.ran[0][-2].split(",") == ["guid", "createtxg", "creation", "origin", *names.SNAPSHOT_PROPS]
    assert origin == f"{REPO}.dsg-old-T@dsg-commit-0"
    assert [snapshot_of(s) for s in snapshots] == [Snapshot(snap, 2**64 - 1, 9, 5, {"dsg-storage:tx": "T"})]


def test_a_history_of_a_repository_that_is_no_clone_has_no_origin() -> None:
    run = Canned({("get", "-d"): {REPO: _ds(REPO, {"guid": ("5", "NONE")})}})  # origin printed as '-'
    assert CommandListing(run, known=names.OUR_PROPS).origin_and_snapshots(REPO, PREFIX) == ("", [])


def test_whether_a_name_exists_is_one_zfs_list() -> None:
    there = Canned({("list", "-H"): {REPO: _ds(REPO, {})}})
    assert CommandListing(there).exists(REPO) is True and there.ran == [("list", "-H", "-o", "name", REPO)]
    assert CommandListing(Canned({("list",): None})).exists(f"{REPO}@gone") is False


def test_the_guards_of_snapshots_are_one_zfs_get_of_holds_and_clones() -> None:
    a, b = f"{REPO}@dsg-commit-1", f"{REPO}@dsg-commit-2"
    run = Canned(
        {
            ("get", "userrefs,clones"): {
                a: _ds(a, {"userrefs": ("2", "NONE"), "clones": (f"{WS},tank/other", "NONE")}),
                b: _ds(b, {"userrefs": ("0", "NONE"), "clones": ("", "NONE")}),
            }
        }
    )
    guards = CommandListing(run, known=names.OUR_PROPS).snapshot_guards(REPO)
    assert guards == {a: (2, [WS, "tank/other"]), b: (0, [])} and len(run.ran) == 1
    forged = Canned({("get",): {a: _ds(a, {"userrefs": ("lots", "NONE"), "clones": ("-", "NONE")})}})
    with pytest.raises(ZfsError, match="userrefs"):  # our error, not a ValueError
        CommandListing(forged, known=names.OUR_PROPS).snapshot_guards(REPO)


def test_snapshots_read_guarded_carry_their_holds_and_clones_from_the_same_zfs_get() -> None:
    """``prune --dry-run``'s read: the commits and what keeps them, one process."""
    a, b = f"{REPO}@dsg-commit-1", f"{REPO}@dsg-commit-2"
    snap = {"guid": ("7", "NONE"), "createtxg": ("9", "NONE"), "creation": ("5", "NONE")}
    run = Canned(
        {
            ("get", "-d"): {
                REPO: _ds(REPO, {"origin": ("-", "NONE")}),
                a: _ds(a, {**snap, "userrefs": ("1", "NONE"), "clones": (f"{WS},tank/other", "NONE")}),
                b: _ds(b, {**snap, "userrefs": ("0", "NONE"), "clones": ("", "NONE")}),
            }
        }
    )
    listing = CommandListing(run, known=names.OUR_PROPS, on_snapshots=names.SNAPSHOT_PROPS)
    origin, items = listing.origin_and_snapshots(REPO, PREFIX, guarded=True)
    assert len(run.ran) == 1 and {"userrefs", "clones"} <= set(run.ran[0][-2].split(","))
    got = {s.name: (s.holds, s.clones) for s in map(snapshot_of, items)}
    assert origin == "" and got == {a: (1, (WS, "tank/other")), b: (0, ())}
    forged = Canned({("get", "-d"): {REPO: _ds(REPO, {}), a: _ds(a, {**snap, "userrefs": ("-1", "NONE")})}})
    with pytest.raises(ZfsError, match="userrefs"):
        CommandListing(forged, known=names.OUR_PROPS).origin_and_snapshots(REPO, PREFIX, guarded=True)
    unguarded = Canned({("get", "-d"): {REPO: _ds(REPO, {}), a: _ds(a, snap)}})
    _, plain = CommandListing(unguarded, known=names.OUR_PROPS).origin_and_snapshots(REPO, PREFIX)
    assert "userrefs" not in unguarded.ran[0][-2] and snapshot_of(plain[0]).holds is None


def test_a_history_of_a_missing_dataset_is_not_found() -> None:
    with pytest.raises(DatasetNotFoundError):
        CommandListing(Canned({("get",): None}), known=names.OUR_PROPS).origin_and_snapshots("tank/none", PREFIX)


def test_every_property_of_ours_is_known() -> None:
    """A property added and not to OUR_PROPS would vanish from status and history (they
    list the known ones by name): every one is defined in names.py, and listed."""
    defined = {v for k, v in vars(names).items() if k.startswith("P_") and v.startswith(names.PROP_PREFIX)}
    assert defined == set(names.OUR_PROPS)
    assert set(names.SNAPSHOT_PROPS) <= defined
    src = Path(names.__file__).parent
    elsewhere = {
        names.prop(name)
        for path in src.rglob("*.py")
        for name in re.findall(r"\bprop\(\s*[\"']([^\"']+)[\"']", path.read_text())
    }
    assert elsewhere <= set(names.OUR_PROPS), "define our properties in names.py (OUR_PROPS)"


def test_a_snapshot_listed_without_its_numbers_is_our_error() -> None:
    with pytest.raises(ZfsError):
        snapshot_of({"name": f"{REPO}@x", "guid": "1"})


def test_the_families_of_a_pool_are_one_zfs_get_of_our_properties() -> None:
    run = Canned(
        {
            ("get", "-r"): {
                "tank/data": _ds("tank/data", {"mountpoint": ("/srv", "LOCAL"), "origin": ("-", "NONE")}),
                REPO: _ds(REPO, {"mountpoint": ("/srv/a", "INHERITED"), "dsg-storage:owner": ("0:0", "RECEIVED")}),
                WS: _ds(
                    WS, {"mountpoint": ("/w", "LOCAL"), "zoned": ("on", "LOCAL"), "dsg-storage:tx": ("T", "LOCAL")}
                ),
            }
        }
    )
    found = CommandListing(run, known=names.OUR_PROPS).families("tank/data", PREFIX)
    assert len(run.ran) == 1 and "zoned" in run.ran[0][-2] and "-H" in run.ran[0]
    assert found == {
        "tank/data": {"mountpoint": "/srv"},
        REPO: {"dsg-storage:owner": "0:0", "@received": "yes", "mountpoint": "/srv/a"},
        WS: {"dsg-storage:tx": "T", "zoned": "on", "mountpoint": "/w"},
    }


def test_without_our_properties_known_the_families_are_two_commands_whatever_their_number() -> None:
    listed = {
        n: _ds(n, {"mountpoint": (f"/srv/{i}", "INHERITED"), "origin": ("-", "NONE")}) for i, n in enumerate([REPO, WS])
    }
    run = Canned(
        {
            ("list", "-r"): listed,
            ("get", "-r"): {
                REPO: _ds(REPO, {"dsg-storage:owner": ("0:0", "RECEIVED"), "com.example:x": ("1", "LOCAL")}),
                WS: _ds(WS, {"zoned": ("on", "LOCAL"), "dsg-storage:tx": ("T", "LOCAL")}),
            },
        }
    )
    found = CommandListing(run).families("tank/data", PREFIX)
    assert len(run.ran) == 2
    assert found == {
        REPO: {"dsg-storage:owner": "0:0", "com.example:x": "1", "@received": "yes", "mountpoint": "/srv/0"},
        WS: {"dsg-storage:tx": "T", "zoned": "on", "mountpoint": "/srv/1"},
    }


def test_a_value_with_a_newline_is_read_again_as_json_and_kept_whole() -> None:
    message = "fix\n\nlonger\ttext"
    run = Canned(
        {
            ("get", "-r"): {
                REPO: _ds(REPO, {"mountpoint": ("/srv/a", "LOCAL"), "dsg-storage:owner": ("0:0", "LOCAL")}),
                WS: _ds(WS, {"mountpoint": ("/w", "LOCAL"), "dsg-storage:commit-message": (message, "LOCAL")}),
            }
        }
    )
    found = CommandListing(run, known=names.OUR_PROPS).families("tank/data", PREFIX)
    assert [("-H" in ran, "-j" in ran) for ran in run.ran] == [(True, False), (False, True)]
    assert found[WS]["dsg-storage:commit-message"] == message
    assert found[REPO] == {"dsg-storage:owner": "0:0", "mountpoint": "/srv/a"}


def test_forged_values_never_change_or_hide_a_real_dataset_in_the_text_read() -> None:
    """Seeded: values drawn from pieces of real lines, tabs and newlines; the text read
    is either refused (None: the caller reads JSON) or gives every real dataset exactly
    its properties, and names nothing real it should not."""
    rng = random.Random(20261205)
    props = ["mountpoint", "dsg-storage:owner", "dsg-storage:commit-message"]
    names_ = ["tank/a", "tank/b", "tank/c"]
    pieces = ["\t", "\n", "local", "-", "tank/b", "tank/x", *props, "v"]
    refused = 0
    for _ in range(3000):
        real = {
            n: {p: ("".join(rng.choice(pieces) for _ in range(rng.randrange(6))), "LOCAL") for p in props}
            for n in names_
        }
        text = "".join(f"{n}\t{p}\t{v}\tlocal\n" for n, ps in real.items() for p, (v, _) in ps.items())
        got = table(text, props)
        if got is None:
            refused += 1
            continue
        for n in names_:
            assert got[n] == real[n]
    assert 0 < refused < 3000
