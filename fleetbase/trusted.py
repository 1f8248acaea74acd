"""Pydantic models built from trusted values in bulk: the planner's device plans, stored reports.

``BaseModel.model_construct`` skips validation but still walks every field's
default on each call; a plan of 100k devices or 100k stored reports pays that
100k times. ``trusted_builder`` gives a function that only installs a complete
dict of field values as the instance's ``__dict__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["trusted_builder"]

M = TypeVar("M", bound=BaseModel)

_new = object.__new__
_set = object.__setattr__
# BaseModel keeps these in slots; their descriptors set them without a lookup by name.
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def trusted_builder(model: type[M]) -> Callable[[dict[str, Any]], M]:
    """A function making ``model`` instances from dicts of every field's value, unvalidated.

    The instance is what ``model.model_construct(**values)`` makes when ``values``
    holds every field (``values`` itself becomes its ``__dict__``, so the caller
    must not change it afterwards). All instances share one fields-set, which
    holds every field name: pydantic reads it and copies it (``model_copy``), and
    a frozen model never adds to it. Only for frozen models without private
    attributes or extra fields (raises TypeError otherwise).
    """
    config = model.model_config
    if not config.get("frozen") or config.get("extra") == "allow" or model.__private_attributes__:
        raise TypeError(f"{model.__name__} is not a frozen model without private or extra fields")
    fields_set = set(model.model_fields)

    def build(values: dict[str, Any]) -> M:
        instance: M = _new(model)
        _set(instance, "__dict__", values)
        _set_fields_set(instance, fields_set)
        _set_extra(instance, None)
        _set_private(instance, None)
        return instance

    build.__doc__ = f"A {model.__name__} from every field's value, unvalidated."
    return build
