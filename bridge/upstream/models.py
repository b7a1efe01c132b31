"""The vendor push body's outer model (UPSTREAM.md), tolerant by design.

The vendor documents few fields and sends loose types, so `VendorModel` accepts
unknown fields (`extra="allow"`) and treats every field as optional; `LooseStr`
reads a value leniently (numbers as their text, anything else None) instead of
failing validation. Only the push endpoint needs a model at run time: the pure
normalizer (`bridge.normalize`) works on plain mappings with the same readers.
Typed views of the other payloads, which the tests check the normalizer against,
are in `tests/vendor_models.py`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from bridge.normalize import as_str

LooseStr = Annotated[str | None, BeforeValidator(as_str)]
"""A non-empty string (numbers as their text); else None."""


class VendorModel(BaseModel):
    """Base: unknown fields kept, nothing required."""

    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- vendor push


class VendorPush(VendorModel):
    """The outer body of a vendor webhook; `message` is itself a JSON string."""

    type: LooseStr = None
    hookName: LooseStr = None  # the vendor's field names
    messageId: LooseStr = None
    message: LooseStr = None
    signature: LooseStr = None
    kid: LooseStr = None
