// The live pages: one EventSource per page; each "update" event carries the page's
// fresh numbers as JSON, written into the page with textContent only (names are
// attacker-controlled). EventSource reconnects by itself; the badge says "live" or
// "reconnecting". Also: the one-time sign-in link's form sends itself.
"use strict";
(() => {
  const auto = document.querySelector("form[data-autosubmit]");
  if (auto) { auto.submit(); return; }
  const page = document.getElementById("live-page");
  if (!page || !window.EventSource) return;
  const badge = document.getElementById("live-state");
  const setState = (state, text) => { badge.dataset.state = state; badge.textContent = text; };
  const $ = (id) => document.getElementById(id);
  const put = (id, value) => { const el = $(id); if (el) el.textContent = String(value); };
  const cell = (text, cls) => {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text === null || text === undefined ? "?" : String(text);
    return td;
  };
  const codeCell = (text) => {  // a code or a device id, in monospace, as the pages show it
    const code = document.createElement("code");
    code.textContent = text;
    const td = document.createElement("td");
    td.append(code);
    return td;
  };
  const fill = (table, rows, make) => {
    const body = $(table).tBodies[0];
    body.replaceChildren(...rows.map(make));
  };
  const link = (d) => (d.revoked ? "revoked" : d.connected ? "connected" : "offline") +
    (d.silent ? " · silent" : "");
  const SVG = "http://www.w3.org/2000/svg";
  // A stored time for people, as the server writes it: "21:52:11 UTC" today, with the
  // date on other days.
  const clock = (stamp, minutes) => {
    if (!stamp) return "";
    const at = new Date(stamp);
    if (Number.isNaN(at.getTime())) return stamp;
    const iso = at.toISOString();
    let shown = minutes ? iso.slice(11, 16) : iso.slice(11, 19);
    if (iso.slice(0, 10) !== new Date().toISOString().slice(0, 10)) shown = `${iso.slice(0, 10)} ${shown}`;
    return minutes ? shown : `${shown} UTC`;
  };

  function chart(series) {
    const svg = $("arrivals-chart");
    const top = Math.max(1, ...series.map((p) => p[1]));
    const width = 300 / Math.max(1, series.length);
    svg.replaceChildren(...series.map(([minute, n], i) => {
      const bar = document.createElementNS(SVG, "rect");
      const h = 95 * n / top;
      bar.setAttribute("x", (i * width).toFixed(2));
      bar.setAttribute("y", (100 - h).toFixed(2));
      bar.setAttribute("width", (width * 0.85).toFixed(2));
      bar.setAttribute("height", h.toFixed(2));
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${minute}: ${n}`;
      bar.append(title);
      return bar;
    }));
    put("arrivals-legend", series.length
      ? `${clock(series[0][0], true)}–${clock(series[series.length - 1][0], true)}, most ${top} a minute`
      : "No arrivals yet.");
  }

  const nameRow = (a) => {
    const tr = document.createElement("tr");
    tr.dataset.code = a.code;
    tr.append(cell(a.name), codeCell(a.code));
    return tr;
  };

  let listing = null;
  async function notArrived(data) {
    const query = page.dataset.query, number = page.dataset.page;
    if (!query && number === "1") {
      fill("not-arrived-table", data.not_arrived_page, nameRow);
      put("not-arrived-total", data.not_arrived_total);
      return;
    }
    if (listing) listing.abort();
    listing = new AbortController();
    try {
      const url = `/live/sessions/${encodeURIComponent(page.dataset.sessionId)}/not-arrived?` +
        new URLSearchParams({ q: query, page: number });
      const got = await fetch(url, { signal: listing.signal, credentials: "same-origin" });
      if (!got.ok) return;
      const list = await got.json();
      fill("not-arrived-table", list.rows, nameRow);
      put("not-arrived-total", list.total);
    } catch (e) { /* aborted by a newer update, or offline: the next update tries again */ }
  }

  // "Inside now: N of M", "(no capacity limit)" without one, and "full" at capacity.
  function insideNow(inside, capacity) {
    const limited = capacity !== null, full = limited && inside >= capacity;
    put("inside-count", inside);
    put("capacity-count", limited ? capacity : "");
    $("capacity-of").hidden = !limited;
    $("no-capacity").hidden = limited;
    $("at-capacity").hidden = !full;
    $("inside").classList.toggle("at-capacity", full);
  }

  const render = {
    session(data) {
      if (data.gone) { setState("gone", "session deleted"); source.close(); return; }
      for (const key of ["registered", "admitted", "not_arrived", "reentries", "rejected", "scans"]) {
        put(`${key.replace("_", "-")}-count`, data[key]);
      }
      insideNow(data.inside ?? 0, data.capacity ?? null);
      put("overrides-count", data.overrides ?? 0);
      const retimed = data.times_reconstructed ?? 0, unknown = data.times_unknown ?? 0;
      put("times-reconstructed-count", retimed);
      put("times-unknown-count", unknown);
      $("times").hidden = !(retimed || unknown);
      const over = data.over_capacity ?? 0, double = data.double_admissions ?? 0;
      put("over-capacity-count", over);
      put("double-admissions-count", double);
      $("audit-flags").hidden = !(over || double);
      put("last-scan", clock(data.last_scan_at) || "none yet");
      $("not-final").hidden = !data.not_final;
      put("not-final-why", data.not_final_why.join("; "));
      const reasons = Object.entries(data.rejected_by_reason).sort();
      fill("rejected-table", reasons, ([reason, n]) => {
        const tr = document.createElement("tr");
        tr.dataset.reason = reason;
        tr.append(cell(reason), cell(n, "num"));
        return tr;
      });
      fill("session-doors-table", data.doors, (d) => {
        const tr = document.createElement("tr");
        tr.dataset.deviceId = d.device_id;
        tr.append(cell(d.device_id), cell(link(d)), cell(d.scans_waiting, "num"),
                  cell(clock(d.last_seen_at) || "never"));
        return tr;
      });
      chart(data.arrivals_per_minute);
      notArrived(data);
    },
    overview(data) {
      fill("overview-table", data.sessions, (s) => {
        const tr = document.createElement("tr");
        tr.dataset.sessionId = s.session_id;
        const name = document.createElement("td");
        name.className = "name";
        const a = document.createElement("a");
        a.href = `/sessions/${encodeURIComponent(s.session_id)}/live`;
        a.textContent = s.name;
        name.append(a);
        const mark = (cls, text) => {
          const span = document.createElement("span");
          span.className = cls;
          span.textContent = text;
          name.append(" ", span);
        };
        if (s.not_final) mark("not-final-mark", "not final");
        if (s.flagged_admissions) mark("flag-mark", `${s.flagged_admissions} flagged`);
        const inside = s.capacity === null || s.capacity === undefined
          ? `${s.inside}` : `${s.inside} of ${s.capacity}`;
        const cells = [cell(s.registered, "num"), cell(s.admitted, "num"), cell(inside, "num"),
          cell(s.not_arrived, "num"), cell(s.rejected, "num"),
          cell(`${s.doors_online}/${s.doors}`, "num")];
        ["Registered", "Admitted", "Inside", "Not arrived", "Rejected", "Doors online"]
          .forEach((label, i) => { cells[i].dataset.label = label; });
        tr.append(name, ...cells);
        return tr;
      });
      $("no-sessions").hidden = data.sessions.length > 0;
    },
    doors(data) {
      const labels = ["Link", "Last seen", "Waiting", "Quarantined", "Software", "Clock offset", "Session"];
      fill("doors-table", data.doors, (d) => {
        const tr = document.createElement("tr");
        tr.dataset.deviceId = d.device_id;
        const off = d.clock_offset_s;
        const offset = off === null || off === undefined ? "?"
          : Math.abs(off) < 0.05 ? "0.0 s" : `${off > 0 ? "+" : ""}${off.toFixed(1)} s`;
        const cells = [cell(link(d)), cell(clock(d.last_seen_at) || "never"), cell(d.scans_waiting, "num"),
          cell(d.scans_quarantined, "num"), cell(d.software), cell(offset, "num"),
          cell(d.session_name || "—")];
        cells.forEach((td, i) => { td.dataset.label = labels[i]; });
        tr.append(codeCell(d.device_id), ...cells);
        return tr;
      });
      $("no-doors").hidden = data.doors.length > 0;
    },
  };

  const source = new EventSource(page.dataset.stream);
  setState("connecting", "connecting…");
  source.onopen = () => setState("live", "live");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) setState("stopped", "stopped: reload the page");
    else setState("reconnecting", "reconnecting…");
  };
  source.addEventListener("update", (event) => {
    const data = JSON.parse(event.data);
    render[page.dataset.live](data);
    if (data.at) put("updated-at", clock(data.at));
    if (!data.gone) setState("live", "live");
  });
})();
