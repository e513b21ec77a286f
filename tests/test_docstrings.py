"""Every public module, function, class, method and property of the API has a docstring.

The public API is ``rlrp_ref`` with all its submodules and ``weights_import``
with its submodules. Public means: a name without a leading underscore,
defined in the module being checked (re-exports are checked where they are
defined). For methods and properties the docstring may be inherited from a
base class (``inspect.getdoc``), so a subclass's ``forward`` is documented by
``Layer.forward``. Dunder methods are not checked.

The project's convention (ARCHITECTURE.md) is that a docstring gives the
formula and its reference where there is one; this test can only check that
the docstring exists and is not empty.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

PACKAGES = ("rlrp_ref", "weights_import")
# the extras of pyproject.toml (viz, bench, crosscheck), by import name
OPTIONAL_DEPENDENCIES = {"PIL", "matplotlib", "tqdm", "threadpoolctl", "torch", "torchvision", "zennit", "keras"}


def module_names() -> list[str]:
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if not any(part.startswith("_") for part in info.name.split(".")[1:]) or info.name.endswith("__main__"):
                names.append(info.name)
    return sorted(n for n in set(names) if not n.endswith("__main__"))


def _has_doc(obj) -> bool:
    doc = inspect.getdoc(obj)
    return bool(doc and doc.strip())


def _own_members(cls):
    """Public methods and properties defined in ``cls`` itself (not inherited ones)."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            yield name, getattr(cls, name)
        elif isinstance(value, property) or inspect.isfunction(value):
            yield name, value


def _method_doc(cls, name, value) -> bool:
    if _has_doc(value):
        return True
    for base in cls.__mro__[1:]:  # inherited documentation of the same member
        inherited = vars(base).get(name)
        if inherited is not None and _has_doc(inherited):
            return True
    return False


def undocumented(module) -> list[str]:
    """Qualified names of the public objects defined in ``module`` that lack a docstring."""
    missing = []
    if not _has_doc(module):
        missing.append(f"{module.__name__} (module docstring)")
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            if not obj.__doc__ or not obj.__doc__.strip():
                missing.append(f"{module.__name__}.{name}")
            for member, value in _own_members(obj):
                if not _method_doc(obj, member, value):
                    missing.append(f"{module.__name__}.{name}.{member}")
        elif inspect.isfunction(obj):
            if not _has_doc(obj):
                missing.append(f"{module.__name__}.{name}")
    return missing


MODULES = module_names()


def test_the_walk_finds_the_core():
    for name in ("rlrp_ref", "rlrp_ref.layers", "rlrp_ref.model", "rlrp_ref.kernels", "rlrp_ref.canonize",
                 "weights_import"):
        assert name in MODULES


@pytest.mark.parametrize("module_name", MODULES)
def test_public_api_has_docstrings(module_name):
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in OPTIONAL_DEPENDENCIES:  # a broken import of our own must fail, not skip
            raise
        pytest.skip(f"{module_name} needs the optional dependency {missing!r}, which is not installed")
    missing = undocumented(module)
    assert not missing, f"{len(missing)} public objects without a docstring:\n  " + "\n  ".join(missing)


def test_checker_catches_a_missing_docstring():
    import types

    module = types.ModuleType("fake", "A fake module.")

    def documented():
        """Has one."""

    def bare():
        return None

    class Thing:
        """A class."""

        def method(self):
            return None

    for obj in (documented, bare, Thing):
        obj.__module__ = "fake"
        setattr(module, obj.__name__, obj)
    assert undocumented(module) == ["fake.bare", "fake.Thing.method"]
