// The household's own readings, decrypted in this browser with WebCrypto.
// Each copy is what an end-to-end meter sealed for its household (protocol/e2e.py, protocol/SPEC.md
// "Kind 3"): 16-byte IV, AES-128-CBC of the 14-byte reading (PKCS#7), and the first 16 bytes of
// HMAC-SHA256 over (meter id, counter, interval start, interval length) + IV + ciphertext, so a copy
// opens only as the reading it was sealed for. Keys come from the household key by HKDF-SHA256 with
// the protocol's salt and household labels, exactly as the meter derives them.
// The key never leaves this page: it is read from the input, used, and not stored anywhere.
"use strict";
(function () {
  const script = document.currentScript;
  const METER = script ? script.dataset.meter : "";
  const enc = new TextEncoder();
  const SALT = enc.encode("meterveil/v1/hkdf-salt");
  const INFO_AES = enc.encode("meterveil/v1/household-aes-128-cbc");
  const INFO_MAC = enc.encode("meterveil/v1/household-hmac-sha256");
  const CARD_PREFIX = "meterveil-household:v1:";
  const IV_LEN = 16, CT_LEN = 16, TAG_LEN = 16, BODY_LEN = 14, ID_LEN = 16;
  const FLAG_NAMES = {1: "clock unsynced", 2: "partial", 4: "clamped", 8: "ADC clipped"};

  class KeyError extends Error {}

  // The key as typed (64 hex digits) or the whole card line (what its QR code holds).
  function parseKey(text) {
    let hex = text.trim();
    if (hex.startsWith(CARD_PREFIX)) {
      const rest = hex.slice(CARD_PREFIX.length), cut = rest.lastIndexOf(":");
      const meter = rest.slice(0, cut);
      if (METER && meter !== METER) throw new KeyError(`This card is for meter ${meter}, not for meter ${METER}.`);
      hex = rest.slice(cut + 1);
    }
    hex = hex.replace(/\s+/g, "");
    if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new KeyError("The household key is 64 hexadecimal characters (or the whole line on your card).");
    const out = new Uint8Array(32);
    for (let i = 0; i < 32; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
    return out;
  }

  function b64(text) {
    const s = atob(text);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  async function deriveKeys(master) {
    const ikm = await crypto.subtle.importKey("raw", master, "HKDF", false, ["deriveBits"]);
    const bits = (info, n) => crypto.subtle.deriveBits({name: "HKDF", hash: "SHA-256", salt: SALT, info}, ikm, n);
    const aesRaw = await bits(INFO_AES, 128), macRaw = await bits(INFO_MAC, 256);
    return {
      aes: await crypto.subtle.importKey("raw", aesRaw, "AES-CBC", false, ["decrypt"]),
      mac: await crypto.subtle.importKey("raw", macRaw, {name: "HMAC", hash: "SHA-256"}, false, ["sign"]),
    };
  }

  function sameBytes(a, b) {  // no early exit
    let d = a.length ^ b.length;
    for (let i = 0; i < Math.min(a.length, b.length); i++) d |= a[i] ^ b[i];
    return d === 0;
  }

  // protocol/e2e.py household_aad: meter id (16 bytes, zero padded), counter, start (u32), length (u16).
  function aad(meter, counter, start, len) {
    const out = new Uint8Array(ID_LEN + 10);
    const id = enc.encode(meter);
    if (id.length > ID_LEN) throw new Error("meter id too long");
    out.set(id, 0);
    const v = new DataView(out.buffer);
    v.setUint32(ID_LEN, counter);
    v.setUint32(ID_LEN + 4, start);
    v.setUint16(ID_LEN + 8, len);
    return out;
  }

  async function openCopy(keys, meter, c) {
    const blob = b64(c.copy);
    if (blob.length !== IV_LEN + CT_LEN + TAG_LEN) throw new Error("copy length");
    const iv = blob.subarray(0, IV_LEN), ct = blob.subarray(IV_LEN, IV_LEN + CT_LEN);
    const a = aad(meter, c.counter, c.start, c.len);
    const signed = new Uint8Array(a.length + IV_LEN + CT_LEN);
    signed.set(a, 0);
    signed.set(blob.subarray(0, IV_LEN + CT_LEN), a.length);
    const tag = new Uint8Array(await crypto.subtle.sign("HMAC", keys.mac, signed)).subarray(0, TAG_LEN);
    if (!sameBytes(tag, blob.subarray(IV_LEN + CT_LEN))) throw new Error("tag");
    const body = new DataView(await crypto.subtle.decrypt({name: "AES-CBC", iv}, keys.aes, ct));
    if (body.byteLength !== BODY_LEN) throw new Error("body length");
    // protocol/e2e.py HOUSEHOLD_FMT ">IHIHH": billing_wh, flags, samples, clipped, missing_s
    return {counter: c.counter, start: c.start, len: c.len, wh: body.getUint32(0), flags: body.getUint16(4),
            missing: body.getUint16(12)};
  }

  // Exposed for tests and the benchmark: open copies ({counter, start, len, copy}) with the key text.
  async function decryptAll(keyText, meter, copies) {
    const keys = await deriveKeys(parseKey(keyText));
    const out = [];
    let bad = 0;
    for (const c of copies) {
      try {
        out.push(await openCopy(keys, meter, c));
      } catch (e) { bad++; }
    }
    return {readings: out, bad};
  }
  window.meterveilDecrypt = decryptAll;

  const $ = (id) => document.getElementById(id);
  const SVGNS = "http://www.w3.org/2000/svg";
  const utc = (t) => new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ");

  function el(name, attrs, text) {
    const e = document.createElementNS(SVGNS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function drawDay(readings) {
    const W = 880, H = 250, L = 48, B = 28, T = 24;
    const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "energy per 15 minutes"});
    const max = Math.max(1, ...readings.map((r) => r.wh));
    const slot = (W - L - 10) / 96;
    for (const f of [0, 0.5, 1]) {
      const y = T + (H - T - B) * (1 - f);
      svg.appendChild(el("line", {class: "grid", x1: L, x2: W - 10, y1: y, y2: y}));
      svg.appendChild(el("text", {class: "tick", x: L - 6, y: y + 4, "text-anchor": "end"}, String(Math.round(max * f))));
    }
    for (const r of readings) {
      const i = Math.floor((r.start % 86400) / 900);
      const h = (H - T - B) * r.wh / max;
      svg.appendChild(el("rect", {class: "bar", x: L + i * slot + 1, y: T + (H - T - B) - h, width: Math.max(1, slot - 2), height: h}));
    }
    for (let hr = 0; hr <= 24; hr += 3) {
      svg.appendChild(el("text", {class: "tick", x: L + hr * 4 * slot, y: H - 8, "text-anchor": hr === 24 ? "end" : "middle"}, `${String(hr).padStart(2, "0")}:00`));
    }
    svg.appendChild(el("text", {class: "axis", x: L - 6, y: 12, "text-anchor": "end"}, "Wh"));
    const box = $("day-chart");
    box.replaceChildren(svg);
  }

  function showDay(byDay, day) {
    const rows = byDay.get(day) || [];
    drawDay(rows);
    const tbody = $("intervals").querySelector("tbody");
    tbody.replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.start = String(r.start);
      const flags = Object.keys(FLAG_NAMES).filter((b) => r.flags & b).map((b) => FLAG_NAMES[b]).join(", ");
      for (const [text, cls] of [[utc(r.start), ""], [String(r.wh), "num"], [flags, "small"]]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  function clearResult() {  // a failed attempt shows no values, not even the last good ones
    $("result").hidden = true;
    for (const id of ["day-chart", "day", "month-total"]) $(id).replaceChildren();
    $("intervals").querySelector("tbody").replaceChildren();
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    const status = $("decrypt-status");
    const input = $("household-key");
    status.textContent = "Fetching your sealed readings…";
    status.className = "muted";
    try {
      const month = $("month").value;
      const resp = await fetch(`/household/copies.json?month=${encodeURIComponent(month)}`, {credentials: "same-origin"});
      if (!resp.ok) throw new Error(`server said ${resp.status}`);
      const data = await resp.json();
      const t0 = performance.now();
      const {readings, bad} = await decryptAll(input.value, data.meter_id, data.copies);
      const ms = performance.now() - t0;
      window.meterveilLast = {count: readings.length, bad, ms, readings};
      if (!readings.length) {
        clearResult();
        status.textContent = data.copies.length ? "None of your readings opened with this key: check the key on your card." : "No readings stored for this month.";
        status.dataset.error = data.copies.length ? "wrong-key" : "";
        if (data.copies.length) status.className = "notice bad";
        return;
      }
      readings.sort((a, b) => a.start - b.start);
      const byDay = new Map();
      for (const r of readings) {
        const d = utc(r.start).slice(0, 10);
        if (!byDay.has(d)) byDay.set(d, []);
        byDay.get(d).push(r);
      }
      const sel = $("day");
      sel.replaceChildren(...[...byDay.keys()].map((d) => { const o = document.createElement("option"); o.textContent = d; return o; }));
      sel.value = [...byDay.keys()].pop();  // the most recent day first
      sel.onchange = () => showDay(byDay, sel.value);
      const total = readings.reduce((s, r) => s + r.wh, 0);
      $("month-total").textContent = `${month}: ${(total / 1000).toFixed(3)} kWh in ${readings.length} intervals`;
      $("result").hidden = false;
      showDay(byDay, sel.value);
      status.textContent = `Decrypted ${readings.length} intervals in your browser in ${ms.toFixed(0)} ms` +
        (bad ? ` (${bad} did not open with this key and are not shown)` : "") + ".";
      status.dataset.done = "1";
      status.dataset.error = "";
    } catch (e) {
      clearResult();
      window.meterveilLast = {count: 0, bad: 0, ms: 0, readings: []};
      status.textContent = e.message || String(e);
      status.dataset.error = e instanceof KeyError ? "bad-key" : "failed";
      status.className = "notice bad";
    }
  }

  const form = $("decrypt-form");
  if (form) form.addEventListener("submit", onSubmit);
})();
