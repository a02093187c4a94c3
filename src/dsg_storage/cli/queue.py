"""``queue list|stats|flush|drop`` and ``gc``: work that could not run yet.

Through sudo the caller sees, counts, drops and runs only the items of datasets its
policy (narrowed by ``--allow``) allows: the queue is root's, shared by every caller.
``list`` and ``stats`` load no ZFS code, attrs or typing (README "Start-up cost"); each
handler imports what it uses inside its function (see ``commands``).
"""

from __future__ import annotations

from ..errors import NotAllowedError
from ..present import shown

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..queue import Item
    from .context import Context


def item_json(item: Item, now: float) -> dict[str, Any]:
    return {
        "item": item.id,
        "id": item.id,
        "kind": item.kind.value,
        "target": item.target,
        "state": item.state.value,
        "attempts": item.attempts,
        "last_error": item.last_error,
        "age": round(item.age(now), 3),
        "next_at": item.next_at,
    }


def _item_line(item: Item, now: float) -> str:
    return (
        f"{item.id}\t{item.state.value}\t{item.kind.value}\t{shown(item.target)}\tattempts={item.attempts}"
        f"\tage={item.age(now):.0f}s\t{shown(item.last_error or '')}"
    ).rstrip()


def _only(ctx: Context) -> Callable[[str], bool] | None:
    """Through sudo, the test an item's target must pass to be seen: the allow-list's."""
    return ctx.allow.allows if ctx.caller.sudo else None


def list_items(ctx: Context) -> int:
    only = _only(ctx)
    with ctx.queue() as queue:
        now = queue.clock()
        items = [i for i in queue.items() if only is None or only(i.target)]
        ctx.emit([item_json(i, now) for i in items], "\n".join(_item_line(i, now) for i in items))
    return 0


def stats(ctx: Context) -> int:
    with ctx.queue() as queue:
        found = queue.stats(only=_only(ctx))
    oldest = found["oldest_pending_age"]
    text = " ".join(f"{k}={v}" for k, v in found["counts"].items())
    ctx.emit(
        found,
        f"{text} oldest_pending_age={'-' if oldest is None else f'{oldest:.0f}s'} "
        f"max_pending={found['max_pending']} free={found['free']}",
    )
    return 0


def drop(ctx: Context) -> int:
    args, only = ctx.args, _only(ctx)
    with ctx.queue() as queue:
        now = queue.clock()
        if only is not None and not only(queue.get(args.id).target):  # its target is not named
            raise NotAllowedError(
                f"queue item {args.id} is on a dataset outside those allowed "
                f"({', '.join(ctx.allow.prefixes) or 'none'}): nothing was dropped"
            )
        item = queue.drop(args.id)
        ctx.emit({"dropped": item_json(item, now)}, f"dropped {_item_line(item, now)}")
    return 0


def flush(ctx: Context) -> int:
    """Every pending item of the pool (or all), due or not."""
    return _run(ctx, due_only=False)


def gc(ctx: Context) -> int:
    """The items that are due."""
    return _run(ctx, due_only=True)


def _run(ctx: Context, *, due_only: bool) -> int:
    args, only = ctx.args, _only(ctx)
    with ctx.queue() as queue:
        now = queue.clock()
        if args.dry_run:
            items = [i for i in queue.due(due_only=due_only, pool=args.queue_pool) if only is None or only(i.target)]
            steps = [{**item_json(i, now), "step": f"{i.kind.value} {i.target}"} for i in items]
            ctx.emit(steps, "\n".join(shown(f"would {s['step']} (item {s['id']})") for s in steps) or "nothing to do")
        else:
            items = queue.run(ctx.zfs(), due_only=due_only, pool=args.queue_pool, only_allowed=ctx.caller.sudo)
            ctx.emit([item_json(i, now) for i in items], "\n".join(_item_line(i, now) for i in items))
    return 0
