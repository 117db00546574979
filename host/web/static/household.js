// The household's own readings, decrypted in this browser with WebCrypto.
// Each copy is a protocol frame (protocol/SPEC.md): 40-byte header, 16-byte IV, AES-128-CBC body
// (PKCS#7), first 16 bytes of HMAC-SHA256 over header + IV + body. Keys come from the household key
// by HKDF-SHA256 with the protocol's salt and labels, exactly as a meter derives its frame keys.
// The key never leaves this page: it is read from the input, used, and not stored anywhere.
"use strict";
(function () {
  const script = document.currentScript;
  const METER = script ? script.dataset.meter : "";
  const enc = new TextEncoder();
  const SALT = enc.encode("meterveil/v1/hkdf-salt");
  const INFO_AES = enc.encode("meterveil/v1/aes-128-cbc");
  const INFO_MAC = enc.encode("meterveil/v1/hmac-sha256");
  const HEADER_LEN = 40, IV_LEN = 16, TAG_LEN = 16, KIND_READING = 1;
  const FLAG_NAMES = {1: "clock unsynced", 2: "partial", 4: "clamped", 8: "ADC clipped"};

  function hexToBytes(text) {
    const hex = text.replace(/\s+/g, "");
    if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error("The household key is 64 hexadecimal characters.");
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

  function sameBytes(a, b) {  // the tag is public once sent; still, no early exit
    let d = a.length ^ b.length;
    for (let i = 0; i < Math.min(a.length, b.length); i++) d |= a[i] ^ b[i];
    return d === 0;
  }

  function parseHeader(f) {
    const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
    if (f.length < HEADER_LEN + IV_LEN + TAG_LEN || f[0] !== 0x4d || f[1] !== 0x56 || f[2] !== 1) throw new Error("not a v1 frame");
    let id = "";
    for (let i = 4; i < 20 && f[i] !== 0; i++) id += String.fromCharCode(f[i]);
    return {kind: f[3], meter: id, counter: v.getUint32(20), start: v.getUint32(24), len: v.getUint16(28),
            bodyLen: v.getUint16(38)};
  }

  async function openFrame(keys, f) {
    const h = parseHeader(f);
    const end = HEADER_LEN + IV_LEN + h.bodyLen;
    if (h.kind !== KIND_READING || f.length !== end + TAG_LEN) throw new Error("unexpected frame kind or length");
    const tag = new Uint8Array(await crypto.subtle.sign("HMAC", keys.mac, f.subarray(0, end))).subarray(0, TAG_LEN);
    if (!sameBytes(tag, f.subarray(end))) throw new Error("tag");
    const body = new DataView(await crypto.subtle.decrypt({name: "AES-CBC", iv: f.subarray(HEADER_LEN, HEADER_LEN + IV_LEN)},
                                                          keys.aes, f.subarray(HEADER_LEN + IV_LEN, end)));
    return {meter: h.meter, counter: h.counter, start: h.start, len: h.len, wh: body.getUint32(0), flags: body.getUint16(8)};
  }

  // Exposed for tests and the benchmark: decrypt base64 frames with a hex key -> readings.
  async function decryptAll(hexKey, frames) {
    const keys = await deriveKeys(hexToBytes(hexKey));
    const out = [];
    let bad = 0;
    for (const text of frames) {
      try {
        const r = await openFrame(keys, b64(text));
        if (METER && r.meter !== METER) { bad++; continue; }
        out.push(r);
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

  async function onSubmit(ev) {
    ev.preventDefault();
    const status = $("decrypt-status");
    const input = $("household-key");
    status.textContent = "Fetching your sealed readings…";
    try {
      const month = $("month").value;
      const resp = await fetch(`/household/copies.json?month=${encodeURIComponent(month)}`, {credentials: "same-origin"});
      if (!resp.ok) throw new Error(`server said ${resp.status}`);
      const data = await resp.json();
      const t0 = performance.now();
      const {readings, bad} = await decryptAll(input.value, data.frames);
      const ms = performance.now() - t0;
      window.meterveilLast = {count: readings.length, bad, ms, readings};
      if (!readings.length) {
        status.textContent = data.frames.length ? "None of your readings opened with this key: check the key on your card." : "No readings stored for this month.";
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
      sel.onchange = () => showDay(byDay, sel.value);
      const total = readings.reduce((s, r) => s + r.wh, 0);
      $("month-total").textContent = `${month}: ${(total / 1000).toFixed(3)} kWh in ${readings.length} intervals`;
      $("result").hidden = false;
      showDay(byDay, sel.value);
      status.textContent = `Decrypted ${readings.length} intervals in your browser in ${ms.toFixed(0)} ms` +
        (bad ? ` (${bad} did not open with this key and are not shown)` : "") + ".";
      status.dataset.done = "1";
    } catch (e) {
      status.textContent = e.message || String(e);
    }
  }

  const form = $("decrypt-form");
  if (form) form.addEventListener("submit", onSubmit);
})();
