"""Which pools and dataset prefixes the caller allowed dsg-storage to change."""

from __future__ import annotations

import dataclasses

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Protocol

    class PlaceRule(Protocol):
        """Where root may mount, chown or set a mountpoint (``SudoPolicy.check_place``)."""

        def check_place(self, path: str, *, what: str = "mountpoint") -> str: ...


from ..errors import InvalidNameError, NotAllowedError

ENV_VAR = "DSG_STORAGE_ALLOW"


# A dataclass, not attrs: every command builds one, `queue stats` included, which loads
# neither attrs nor typing (README "Start-up cost").
@dataclasses.dataclass(frozen=True, slots=True)
class AllowList:
    """Pools or dataset prefixes that mutating calls may touch; empty allows nothing.

    An entry ``tank`` allows every dataset of pool ``tank``; ``tank/data`` allows
    ``tank/data`` and everything below it (not ``tank/database``).

    ``places`` (through sudo: the policy) also confines where root acts on the host's
    filesystem for these datasets: every mount, mountpoint, owner and mode goes through
    ``check_place`` (``zfs.host.Guard``), so code that builds the boundary from this
    allow-list cannot forget it. None: the caller is root itself, or unprivileged.
    """

    prefixes: tuple[str, ...] = ()
    places: PlaceRule | None = None

    @classmethod
    def parse(cls, text: str | Iterable[str] | None) -> AllowList:
        if text is None:
            return cls()
        items = text.split(",") if isinstance(text, str) else list(text)
        prefixes = []
        for item in (i.strip().rstrip("/") for i in items):
            if not item:
                continue
            if "@" in item or "#" in item or ".." in item or "//" in item or item.startswith("/"):
                raise InvalidNameError(f"allow-list entry {item!r} is not a pool or dataset prefix")
            prefixes.append(item)
        return cls(tuple(prefixes))

    def __or__(self, other: AllowList) -> AllowList:
        return AllowList(
            self.prefixes + tuple(p for p in other.prefixes if p not in self.prefixes), self.places or other.places
        )

    def allows(self, dataset: str) -> bool:
        filesystem = dataset.split("@", 1)[0].split("#", 1)[0]
        return any(filesystem == p or filesystem.startswith(p + "/") for p in self.prefixes)

    def check(self, dataset: str) -> None:
        """Raise NotAllowedError unless ``dataset`` lies under an allowed prefix."""
        if not self.allows(dataset):
            allowed = ", ".join(self.prefixes) or "nothing"
            raise NotAllowedError(
                f"{dataset!r} is outside the allowed pools/prefixes ({allowed})",
                dataset=dataset,
                hint=f"allow it with --allow POOL[/PREFIX] or {ENV_VAR}",
            )

    def check_place(self, path: str, *, what: str = "mountpoint") -> str:
        """``path`` as the rule accepts it (normalized), or NotAllowedError; without a
        rule every path is the caller's own business."""
        return path if self.places is None else self.places.check_place(path, what=what)
