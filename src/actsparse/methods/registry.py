"""A name -> implementation registry, one per method family."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, family: str):
        self.family = family
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@SPARSITY.register("teal")`. A name may be registered once."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.family} method {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.family} method {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def parse_entry(schema: type, raw: dict[str, Any], where: str) -> Any:
    """A method entry's typed config (the method's dataclass merged with `raw`);
    ValueError naming `where.<key>` on an unknown key, a wrong type or a missing value."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        raise ValueError(f"{where}.{key}: {msg}") from None


def checked_entry(registry: Registry, raw: dict[str, Any], where: str, who: str) -> tuple[Any, Any]:
    """(method instance, typed config) of a job's method entry; ValueError naming `who` and
    every problem of the config."""
    method = registry.get(str(raw.get("method")))()
    cfg = method.parse(raw, where)
    problems = cfg.problems()
    if problems:
        raise ValueError(f"{who}: " + "; ".join(f"{k}: {m}" for k, m in problems))
    return method, cfg
