"""A tiny named registry, in the spirit of timm's ``register_model``.

Each kind of pluggable thing (pre-training methods, downstream tasks, dataset readers) owns
one ``Registry``; entries are factories stored under a name, each with the place it came from
(the package, an installed distribution's entry point, a module named by ``imports`` /
``--import``), so that ``clapbench list`` can say it and a name clash can name both sides.

A registry may be given ``discover``: called once, before the first look-up, to register what
lives outside the module that defines it (the built-ins' module, the entry points; see
``clap_bench.plugins``).
"""

from __future__ import annotations

import contextlib
import fnmatch
from typing import Any, Callable, Dict, Iterator, List, Optional

from clap_bench.config import STORE_FOLDER_NAME_RE

_ORIGIN_STACK: List[str] = []


@contextlib.contextmanager
def registering_from(origin: str) -> Iterator[None]:
    """Entries registered inside this block record ``origin`` as where they come from."""
    _ORIGIN_STACK.append(origin)
    try:
        yield
    finally:
        _ORIGIN_STACK.pop()


def default_origin(module: Optional[str]) -> str:
    if module and (module == "clap_bench" or module.startswith("clap_bench.")):
        return "built-in"
    return f"module {module}" if module else "unknown"


def check_folder_name(kind: str, name: str, reserved: Callable[[str], Optional[str]] = lambda name: None) -> None:
    """Refuse a ``kind`` name that cannot be a run-store folder of its own (the rule profile names
    follow, ``STORE_FOLDER_NAME_RE``), or that ``reserved`` says is taken (it returns what takes it)."""
    if not isinstance(name, str) or not STORE_FOLDER_NAME_RE.fullmatch(name):
        raise ValueError(f"{kind} name {name!r}: expected letters, digits, '.', '_', '+' and '-', not starting with '_' or '.' "
                         "(it names a folder of the run store)")
    taken = reserved(name)
    if taken:
        raise ValueError(f"{kind} name {name!r} is taken: {taken}")


class Registry:
    def __init__(self, kind: str, discover: Optional[Callable[[], None]] = None,
                 check_name: Optional[Callable[[str], None]] = None):
        self.kind = kind
        self._check_name = check_name
        self._entries: Dict[str, Callable[..., Any]] = {}
        self._origins: Dict[str, str] = {}
        self._discover = discover
        self._discovered = discover is None

    def _ensure_discovered(self) -> None:
        if not self._discovered:
            self._discovered = True  # before the call: discovery registers, and may look up
            try:
                self._discover()
            except BaseException:
                self._discovered = False  # a failed discovery is retried (and fails again, loudly)
                raise

    def register(self, name: str, origin: Optional[str] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if self._check_name is not None:
            self._check_name(name)

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            where = origin or (_ORIGIN_STACK[-1] if _ORIGIN_STACK else default_origin(getattr(factory, "__module__", None)))
            if name in self._entries:
                if self._entries[name] is factory:
                    return factory  # the same object registered again (a module imported under two names)
                raise ValueError(
                    f"{self.kind} {name!r} is registered twice: by {self._origins[name]} "
                    f"({_qualname(self._entries[name])}) and by {where} ({_qualname(factory)})"
                )
            self._entries[name] = factory
            self._origins[name] = where
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        self._ensure_discovered()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def origin(self, name: str) -> str:
        """Where entry ``name`` was registered from (``built-in``, ``entry point ...``, ``module ...``)."""
        self.get(name)
        return self._origins[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        # None means "not given": the factory's own default wins over a CLI default.
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def list(self, pattern: str = "*") -> List[str]:
        self._ensure_discovered()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        self._ensure_discovered()
        return name in self._entries


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__name__)}"
