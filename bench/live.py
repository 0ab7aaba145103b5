"""Live attendance: a scan at a door until the number changes in an organizer's browser.

Everything is real: a ``checkin server``, a door (``checkin door`` on an ``images:``
folder) with its ``checkin sync`` daemon, and headless Debian chromium (Playwright) signed
in on the session's live attendance page. The clock starts when a badge's image is
renamed into the door's camera folder (the door sees it from then on) and stops when the
page's admitted count shows the new number: a MutationObserver in the page records
``performance.timeOrigin + performance.now()`` (wall time, in ms, as the browser saw the
change) for every change of ``#admitted-count``, compared with the wall time of the drop
(one machine, one clock). So the figure includes the door's decoding, its store, the
daemon's upload, the server's store, the live fan-out, the page's stream and its redraw.

With 100 simulated doors (:mod:`bench.simulated`: the real sync protocol over real
websockets, in this process) pushing a scan each at once, the clock runs from just before
the pushes until the page shows the count with all of them (the last of 100).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from playwright.async_api import Page, async_playwright

from bench.fixtures import SESSION, codes, event
from bench.report import Row, percentile
from bench.simulated import SimDoor, open_all, raise_fd_limit
from checkin.badges import Look, render_badge
from checkin.harness import Device, Server, WaitFailed, until

#: The goal, door to browser, at the 99th percentile.
GOAL_MS = 1000.0
#: The page measured (server/web), and its count of admitted attendees.
LIVE_PAGE = "/sessions/{session_id}/live"
ADMITTED = "#admitted-count"
CHROMIUM = Path(os.environ.get("CHECKIN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Nothing here should take this long; it only stops a hang.
STEP_TIMEOUT_S = 30.0

#: Records each new text of the admitted count with the browser's wall time (ms). Watches
#: the whole body: the page may redraw the count's element or only its text.
OBSERVER = """selector => {
  window.__admitted = [];
  const note = () => {
    const el = document.querySelector(selector);
    const text = el ? el.textContent.trim() : null;
    const seen = window.__admitted;
    if (text !== null && (seen.length === 0 || seen[seen.length - 1].text !== text)) {
      seen.push({text: text, at: performance.timeOrigin + performance.now()});
    }
  };
  new MutationObserver(note).observe(document.body,
      {childList: true, subtree: true, characterData: true});
  note();
}"""


async def _shown_at(page: Page, count: int) -> float:
    """The browser's wall time (s) when the admitted count first read *count*."""
    handle = await page.wait_for_function(
        "n => (window.__admitted.find(c => c.text === String(n)) || {}).at",
        arg=count, timeout=STEP_TIMEOUT_S * 1000, polling=2)
    return float(await handle.json_value()) / 1000


async def _sign_in(page: Page, server: Server, session_id: str) -> None:
    await page.goto("/signin")
    await page.fill("#token", server.admin_token)
    await page.click("#signin-button")
    await page.wait_for_url("**/sessions")
    await page.goto(LIVE_PAGE.format(session_id=session_id))
    await page.wait_for_selector(ADMITTED)
    await page.evaluate(OBSERVER, ADMITTED)


def _door(folder: Path, server: Server) -> Device:
    device = Device(folder, "door-live", server_url=server.sync_url,
                    camera={"fps": 40, "frames_per_image": 2},
                    scanner={"debounce_seconds": 0.1},
                    server={"retry_min_seconds": 0.1, "retry_max_seconds": 0.5,
                            "status_seconds": 1})
    device.token_file.write_text(server.provision("door-live", SESSION) + "\n")
    return device


def _connected(server: Server, device_id: str) -> bool:
    return any(d["device_id"] == device_id and d["connected"]
               for d in server.api("GET", "/api/devices"))


def _drop(device: Device, code: str) -> float:
    """Show *code* to the door; the wall time (s) when its image appeared."""
    device.shown += 1
    final = device.frame(device.shown)
    part = final.with_suffix(".part")
    render_badge(code, Look(), seed=device.shown).save(part, format="PNG")
    at = time.time()
    part.rename(final)
    device.frame(device.shown - 4).unlink(missing_ok=True)
    return at


async def _admitted_now(page: Page) -> int:
    return int((await page.inner_text(ADMITTED)).strip())


async def _real_door(page: Page, device: Device, scans: list[str]) -> list[float]:
    """Seconds from each badge at the real door to the page's new count."""
    times = []
    for code in scans:
        before = await _admitted_now(page)
        dropped = _drop(device, code)
        try:
            shown = await _shown_at(page, before + 1)
        except Exception as exc:
            door = device.door_process.tail() if device.door_process else ""
            sync = device.sync.tail() if device.sync else ""
            raise WaitFailed(f"{code}: the count did not reach {before + 1}: {exc}\n"
                             f"door:\n{door}\nsync:\n{sync}") from exc
        times.append(shown - dropped)
        await asyncio.sleep(0.05)
    return times


async def _fleet(page: Page, doors: list[SimDoor], rounds: list[list[str]]) -> list[float]:
    """Seconds from each round of pushes (one scan a door, all at once) until the page's
    count includes the whole round."""
    times = []
    for batch in rounds:
        before = await _admitted_now(page)
        started = time.time()
        await asyncio.gather(*(door.push(code) for door, code in zip(doors, batch, strict=True)))
        shown = await _shown_at(page, before + len(batch))
        times.append(shown - started)
        for door in doors:
            door.check()
        await asyncio.sleep(0.2)
    return times


async def _measure(server: Server, folder: Path, real: list[str],
                   rounds: list[list[str]]) -> tuple[list[float], list[float]]:
    device = _door(folder / "door-live", server)
    doors = [SimDoor(f"sim-{i:03d}", server.provision(f"sim-{i:03d}", SESSION))
             for i in range(len(rounds[0]))]
    args = CHROMIUM_ARGS + (["--no-sandbox"] if os.geteuid() == 0 else [])
    try:
        device.start_sync()
        device.start_door(pipe=False)
        await until(lambda: _connected(server, "door-live"), 60,
                    "the door's daemon to connect", interval=0.1)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                       headless=True, args=args)
            try:
                context = await browser.new_context(base_url=server.url,
                                                    viewport={"width": 414, "height": 896})
                context.set_default_timeout(STEP_TIMEOUT_S * 1000)
                page = await context.new_page()
                await _sign_in(page, server, SESSION)
                one = await _real_door(page, device, real)
                await open_all(doors, server.sync_url)
                many = await _fleet(page, doors, rounds)
            finally:
                await browser.close()
        return one, many
    finally:
        await asyncio.gather(*(d.close() for d in doors))
        device.stop(timeout=10)


def run(quick: bool) -> list[Row]:
    scans, fleet, rounds = (10, 100, 3) if quick else (60, 100, 50)
    raise_fd_limit(2 * fleet + 200)
    real = codes("LIVE", scans)
    simulated = codes("FLEET", fleet * rounds)
    everyone = real + simulated
    with event(everyone, everyone) as bench:
        one, many = asyncio.run(_measure(
            bench.server, bench.folder, real,
            [simulated[i * fleet:(i + 1) * fleet] for i in range(rounds)]))
    rows = []
    for label, times, unit in ((f"1 real door, {scans} scans", one, "scan"),
                               (f"last of {fleet} simulated doors at once, {rounds} rounds",
                                many, "round")):
        p50, p99 = percentile(times, 50) * 1e3, percentile(times, 99) * 1e3
        print(f"  live page, {label}: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
              f"(of {len(times)} {unit}s)", file=sys.stderr, flush=True)
        rows.append(Row(f"scan to live page, {label}, p50", p50, None, "", "ms", "", None))
        rows.append(Row(f"scan to live page, {label}, p99", p99, None, "", "ms",
                        f"p99 < {GOAL_MS:g} ms", p99 < GOAL_MS))
    return rows


def _main() -> None:  # pragma: no cover - ``python -m bench.live [--quick]``
    rows = run("--quick" in sys.argv)
    from bench.report import show
    print(show(rows))


if __name__ == "__main__":
    _main()
