"""Both decoders on the real QR corpus and on generated phone-screen frames."""

from __future__ import annotations

import numpy as np
import pytest

from checkin.badges import Look, render_badge
from device.scanner.decoders import make_decoder
from device.scanner.images import load_grey
from tests.conftest import CORPUS

#: Floors a little under what each decoder reads of the 141 corpus images today
#: (zxing-cpp 112, pyzbar 95): a regression in our adapters shows up here.
FLOORS = {"zxing-cpp": 108, "pyzbar": 90}


def corpus() -> list[tuple[str, bytes]]:
    manifest = (CORPUS / "manifest.tsv").read_text().splitlines()[1:]
    return [(image, (CORPUS / expected).read_bytes())
            for image, expected, *_ in (line.split("\t") for line in manifest)]


@pytest.mark.parametrize("name", ["zxing-cpp", "pyzbar"])
def test_decoder_reads_the_corpus(name: str) -> None:
    decoder = make_decoder(name)
    images = corpus()
    assert len(images) == 141
    found = sum(expected in decoder.decode(load_grey(CORPUS / image)) for image, expected in images)
    assert found >= FLOORS[name], f"{name} read {found} of {len(images)}"


LOOKS = {
    "straight": Look(),
    "rotated": Look(angle=33),
    "upside down": Look(angle=180),
    "blurred": Look(blur=1.2),
    "low contrast": Look(contrast=0.35),
    "glare": Look(glare=True),
    "moire": Look(moire=True),
    "small": Look(module_px=3, offset=(-150, 60)),
}


@pytest.mark.parametrize("name", ["zxing-cpp", "pyzbar"])
@pytest.mark.parametrize("look", LOOKS)
def test_decoder_reads_phone_screens(name: str, look: str) -> None:
    frame = np.asarray(render_badge("https://tickets.example/t/ATT-0042", LOOKS[look], seed=3))
    assert make_decoder(name).decode(frame) == [b"https://tickets.example/t/ATT-0042"]


@pytest.mark.parametrize("name", ["zxing-cpp", "pyzbar"])
def test_no_code_in_view_gives_nothing(name: str) -> None:
    decoder = make_decoder(name)
    for seed in range(5):
        assert decoder.decode(np.asarray(render_badge(None, seed=seed))) == []
    noise = np.random.default_rng(1).integers(0, 256, (480, 640), dtype=np.uint8)
    assert decoder.decode(noise) == []


@pytest.mark.parametrize("name", ["zxing-cpp", "pyzbar"])
def test_strided_views_are_read(name: str) -> None:
    padded = np.full((480, 768), 90, dtype=np.uint8)
    padded[:, :640] = np.asarray(render_badge("ATT-7"))
    assert make_decoder(name).decode(padded[:, :640]) == [b"ATT-7"]


@pytest.mark.parametrize("name", ["zxing-cpp", "pyzbar"])
def test_binary_payloads_come_back_as_raw_bytes(name: str) -> None:
    raw = bytes(range(0, 256, 3))
    frame = np.asarray(render_badge(raw))
    assert make_decoder(name).decode(frame) == [raw]


def test_an_unknown_decoder_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown decoder"):
        make_decoder("opencv")
