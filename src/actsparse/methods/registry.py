"""A name -> implementation registry per method family, and a sweep's parsed entries.

A family's package registers every module in it (`discover`): a new method is its module,
its conf file and its test, with no import list to extend.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

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

    def discover(self, package: str, path: Iterable[str]) -> None:
        """Import every module of a method family's package, so that each registers the
        methods it defines (`package`, `path`: the package's `__name__` and `__path__`)."""
        for info in pkgutil.iter_modules(path):
            importlib.import_module(f"{package}.{info.name}")


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


@dataclass(frozen=True)
class MethodEntry:
    """One entry of a sweep's `methods` (`sparsify.methods.teal_greedy`), parsed once: its
    name, the registered method that runs it and that method's typed config.

    The plan lays jobs out from it; `job_config()` is the part a job's spec carries (which
    levels, ratios and models the entry runs are the plan's business, not the job's
    identity); the stage reads that back with `for_job`, through the same parser."""

    name: str
    cfg: Any  # the registered method's config dataclass; `cfg.method` names the method
    impl: type  # the registered class

    SWEEP_KEYS: ClassVar[tuple[str, ...]] = ("levels", "ratios", "models")

    @classmethod
    def parse(cls, registry: Registry, name: str, raw: dict[str, Any], where: str) -> MethodEntry:
        impl = registry.get(str(raw.get("method")))
        return cls(name, impl.parse(raw, where), impl)

    @classmethod
    def for_job(cls, registry: Registry, name: str, raw: dict[str, Any], where: str) -> MethodEntry:
        """A job's entry from its spec's `method` mapping; ValueError naming the entry and
        every problem of its config."""
        impl = registry.get(str(raw.get("method")))
        # a job runs its one model and level: the sweep's keys do not reach its spec
        sweep = {k: None for k in cls.SWEEP_KEYS if k in impl.Config.__dataclass_fields__}
        entry = cls.parse(registry, name, {**sweep, **raw}, where)
        problems = entry.cfg.problems()
        if problems:
            raise ValueError(
                f"{registry.family} method {name!r}: " + "; ".join(f"{k}: {m}" for k, m in problems)
            )
        return entry

    @property
    def method(self) -> str:
        return str(self.cfg.method)

    @property
    def levels(self) -> list[float] | None:
        """The entry's own levels (sparsity, predictors); None: the sweep's."""
        return getattr(self.cfg, "levels", None)

    @property
    def ratios(self) -> list[float] | None:
        """The entry's own ratios (low rank); None: the sweep's."""
        return getattr(self.cfg, "ratios", None)

    @property
    def models(self) -> list[str] | None:
        """The study models the entry runs on (None: every one)."""
        return self.cfg.models

    def method_instance(self) -> Any:
        return self.impl()

    def job_config(self) -> dict[str, Any]:
        """The entry's config as a job's spec carries it: every key but the sweep's."""
        from actsparse.schema.study import to_dict

        return {k: v for k, v in to_dict(self.cfg).items() if k not in self.SWEEP_KEYS}
