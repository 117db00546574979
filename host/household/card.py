"""The household card: the one copy of a household key outside its meter (text + QR code PNG).

Why a card: the utility keeps only the key's fingerprint (registry ``household_fingerprint``), so the
household is the only party besides its meter that can read its fine-grained readings. The text file is
what ``meterveil household show --card`` reads; the PNG carries the same line as a QR code for a phone.

Card line (also the QR payload): ``meterveil-household:v1:<meter_id>:<64 hex digits>``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import segno

from meterveil.host.common.files import write_private
from meterveil.protocol import household as hh

PREFIX = "meterveil-household:v1:"
CARD_TEXT = "household-card.txt"
CARD_PNG = "household-card.png"


class CardError(ValueError):
    """A card file is missing, malformed, or does not match what it is used with."""


@dataclass(frozen=True)
class HouseholdCard:
    meter_id: str
    key: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return hh.fingerprint(self.key)

    @property
    def line(self) -> str:
        return f"{PREFIX}{self.meter_id}:{self.key.hex()}"


def new_key() -> bytes:
    return secrets.token_bytes(hh.KEY_LEN)


def parse_line(text: str) -> HouseholdCard:
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(PREFIX):
            meter_id, _, key_hex = line[len(PREFIX):].partition(":")
            try:
                key = bytes.fromhex(key_hex)
            except ValueError:
                key = b""
            if not meter_id or len(key) != hh.KEY_LEN:
                raise CardError("household card line is malformed")
            return HouseholdCard(meter_id, key)
    raise CardError(f"no '{PREFIX}...' line on the card")


def read_card(path: str | os.PathLike[str]) -> HouseholdCard:
    """The card from its text file (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / CARD_TEXT
    try:
        return parse_line(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"cannot read household card {p}: {exc}") from None


def write_card(directory: str | os.PathLike[str], card: HouseholdCard) -> tuple[Path, Path]:
    """Write the text card and its QR code PNG (both 0600: whoever holds them reads the household's data)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = (f"meterveil household card: meter {card.meter_id}\n"
            f"This key opens your own 15-minute readings; your utility does not have it. Keep it safe.\n"
            f"fingerprint (your utility can check this): {card.fingerprint}\n"
            f"{card.line}\n")
    txt = write_private(d / CARD_TEXT, text)
    png_path = d / CARD_PNG
    qr = segno.make(card.line, error="m")
    fd = os.open(png_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        qr.save(f, kind="png", scale=6, border=4)
    return txt, png_path
