"""Both decoders on the real QR corpus and on generated phone-screen frames."""

from __future__ import annotations

import numpy as np
import pytest

from checkin.badges import Look, render_badge
from device.config import DECODERS
from device.scanner.decoders import PipelineDecoder, make_decoder
from device.scanner.images import load_grey
from tests.conftest import CORPUS

#: Floors a little under what each decoder reads of the 141 corpus images today
#: (zxing-cpp 112, pyzbar 95): a regression in our adapters shows up here.
FLOORS = {"pipeline": 114, "zxing-cpp": 108, "pyzbar": 90}


def corpus() -> list[tuple[str, bytes]]:
    manifest = (CORPUS / "manifest.tsv").read_text().splitlines()[1:]
    return [(image, (CORPUS / expected).read_bytes())
            for image, expected, *_ in (line.split("\t") for line in manifest)]


@pytest.mark.parametrize("name", DECODERS)
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


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("look", LOOKS)
def test_decoder_reads_phone_screens(name: str, look: str) -> None:
    frame = np.asarray(render_badge("https://tickets.example/t/ATT-0042", LOOKS[look], seed=3))
    assert make_decoder(name).decode(frame) == [b"https://tickets.example/t/ATT-0042"]


@pytest.mark.parametrize("name", DECODERS)
def test_no_code_in_view_gives_nothing(name: str) -> None:
    decoder = make_decoder(name)
    for seed in range(5):
        assert decoder.decode(np.asarray(render_badge(None, seed=seed))) == []
    noise = np.random.default_rng(1).integers(0, 256, (480, 640), dtype=np.uint8)
    assert decoder.decode(noise) == []


@pytest.mark.parametrize("name", DECODERS)
def test_strided_views_are_read(name: str) -> None:
    padded = np.full((480, 768), 90, dtype=np.uint8)
    padded[:, :640] = np.asarray(render_badge("ATT-7"))
    assert make_decoder(name).decode(padded[:, :640]) == [b"ATT-7"]


@pytest.mark.parametrize("name", DECODERS)
def test_binary_payloads_come_back_as_raw_bytes(name: str) -> None:
    raw = bytes(range(0, 256, 3))
    frame = np.asarray(render_badge(raw))
    assert make_decoder(name).decode(frame) == [raw]


def test_an_unknown_decoder_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown decoder"):
        make_decoder("opencv")


def test_the_pipeline_reads_every_code_either_library_reads() -> None:
    pipeline, zxing, zbar = (make_decoder(n) for n in ("pipeline", "zxing-cpp", "pyzbar"))
    missed = []
    for image, expected in corpus():
        grey = load_grey(CORPUS / image)
        either = expected in zxing.decode(grey) or expected in zbar.decode(grey)
        if either and expected not in pipeline.decode(grey):
            missed.append(image)
    assert missed == []


def test_the_pipeline_calls_zbar_only_for_symbols_it_saw(mocker) -> None:
    pipeline = PipelineDecoder()
    zbar = mocker.spy(pipeline._zbar, "decode")
    blank = np.asarray(render_badge(None, seed=3))
    assert pipeline.decode(blank) == []
    assert zbar.call_count == 0  # nothing in view: two zxing-cpp passes, no ZBar
    checksum_error = load_grey(CORPUS / "qrcode-4/08.webp")  # zxing-cpp sees it, cannot read it
    assert pipeline.decode(checksum_error)
    assert zbar.call_count >= 1
    region = zbar.call_args.args[0]
    assert region.size < checksum_error.size  # only the symbol's region, not the frame


def test_the_pipeline_works_without_libzbar(mocker) -> None:
    mocker.patch("device.scanner.decoders.PyzbarDecoder", side_effect=ImportError("no zbar"))
    pipeline = PipelineDecoder()
    assert pipeline.decode(np.asarray(render_badge("ATT-1", seed=1))) == [b"ATT-1"]
    assert pipeline.decode(load_grey(CORPUS / "qrcode-4/08.webp")) == []
