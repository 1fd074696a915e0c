// The live page of one network: recent history first, then every new sample over MQTT-over-WebSocket.
"use strict";
(function () {
  const STORE = "radio-key";
  const MAX_POINTS = 600;
  const page = document.getElementById("page").dataset;
  const network = page.network;
  const statusEl = document.getElementById("status");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key");
  const keyError = document.getElementById("key-error");
  const fields = document.querySelector("#fields tbody");
  const meta = document.getElementById("latest-meta");
  const plotEl = document.getElementById("plot");
  const plotEmpty = document.getElementById("plot-empty");

  const times = [];
  const columns = new Map(); // numeric field -> values, aligned with times
  let plot = null;
  let client = null;
  let lastHistoryPayload = null;

  function status(text, kind) {
    statusEl.textContent = text;
    statusEl.className = "status" + (kind ? " " + kind : "");
  }

  function shown(value) {
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function showLatest(data, when, seq) {
    fields.replaceChildren();
    const entries = data !== null && typeof data === "object" && !Array.isArray(data)
      ? Object.entries(data) : [["value", data]];
    for (const [name, value] of entries) {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = name;
      const td = document.createElement("td");
      td.dataset.field = name;
      td.textContent = shown(value);
      row.append(th, td);
      fields.append(row);
    }
    meta.textContent = (seq !== undefined ? "#" + seq + ", " : "") + new Date(when * 1000).toLocaleTimeString();
  }

  function numericFields(data) {
    const found = [];
    if (data !== null && typeof data === "object" && !Array.isArray(data)) {
      for (const [name, value] of Object.entries(data)) {
        if (typeof value === "number" && Number.isFinite(value)) found.push([name, value]);
      }
    } else if (typeof data === "number" && Number.isFinite(data)) {
      found.push(["value", data]);
    }
    return found;
  }

  function addPoint(data, when) {
    const numbers = numericFields(data);
    let rebuild = false;
    for (const [name] of numbers) {
      if (!columns.has(name)) {
        columns.set(name, times.map(() => null));
        rebuild = true;
      }
    }
    times.push(when);
    const byName = new Map(numbers);
    for (const [name, values] of columns) values.push(byName.has(name) ? byName.get(name) : null);
    if (times.length > MAX_POINTS) {
      times.shift();
      for (const values of columns.values()) values.shift();
    }
    return rebuild;
  }

  function palette(i) {
    return "hsl(" + ((i * 67) % 360) + ", 65%, 45%)";
  }

  function draw(rebuild) {
    if (columns.size === 0) return;
    plotEmpty.hidden = true;
    const data = [times, ...columns.values()];
    if (plot && !rebuild) {
      plot.setData(data);
      spreadAlone();
      return;
    }
    if (plot) plot.destroy();
    const series = [{}];
    let i = 0;
    for (const name of columns.keys()) series.push({ label: name, stroke: palette(i++), width: 1.5, spanGaps: true });
    plot = new uPlot(
      {
        width: Math.max(320, plotEl.clientWidth || 800),
        height: 320,
        series,
        scales: { x: { time: true } },
      },
      data,
      plotEl,
    );
    spreadAlone();
  }

  function spreadAlone() {
    // One sample alone would stretch the time axis over years: show a minute around it.
    if (times.length === 1) plot.setScale("x", { min: times[0] - 30, max: times[0] + 30 });
  }

  function accept(data, when, seq) {
    showLatest(data, when, seq);
    draw(addPoint(data, when));
  }

  function askForKey(message) {
    sessionStorage.removeItem(STORE);
    form.hidden = false;
    keyError.textContent = message || "";
    status("needs a key", "error");
  }

  async function secretUsername(secret) {
    // The username a secret implies (key- and 16 hex digits of its SHA-256), as every Radio client
    // sends it; Mosquitto checks it. Outside a secure context there is no digest: any label works
    // on the embedded broker.
    if (!window.crypto || !crypto.subtle) return "radio-page";
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(secret));
    const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
    return "key-" + hex.slice(0, 16);
  }

  async function loadHistory(key) {
    const headers = key ? { "API-KEY": key } : {};
    const response = await fetch(page.samples + "?limit=" + page.limit, { headers });
    let body = {};
    try { body = await response.json(); } catch (_) { /* not JSON: reported below */ }
    if (response.status === 401 || response.status === 403) {
      askForKey(body.error);
      return false;
    }
    if (!response.ok) {
      status("no history: " + (body.error || response.status), "error");
      return true; // live samples still come
    }
    if (!Array.isArray(body.samples)) {
      status("no history: the answer holds no samples", "error");
      return true; // live samples still come
    }
    // One bad sample costs only itself: the others are shown.
    for (const sample of body.samples) {
      if (!sample || sample.invalid !== undefined || sample.data === undefined) continue;
      try {
        accept(sample.data, Date.parse(sample.received_at) / 1000, sample.seq);
        lastHistoryPayload = JSON.stringify(sample.data);
      } catch (error) {
        console.warn("skipped sample", sample.seq, error);
      }
    }
    return true;
  }

  async function connect(key) {
    const options = { protocolVersion: 4, clean: true, reconnectPeriod: 2000, connectTimeout: 10000 };
    if (key) {
      options.username = await secretUsername(key);
      options.password = key;
    }
    client = mqtt.connect(page.websocket, options);
    let first = true;
    client.on("connect", () => {
      first = true;
      client.subscribe("networks/" + network + "/#", { qos: 0 }, (error, granted) => {
        if (error || (granted && granted.some((g) => g.qos === 128))) {
          status("not allowed to read " + network, "error");
          return;
        }
        status("live", "live");
      });
    });
    client.on("reconnect", () => status("reconnecting"));
    client.on("offline", () => status("offline", "error"));
    client.on("error", (error) => status(String(error.message || error), "error"));
    client.on("message", (_topic, payload, packet) => {
      const text = payload.toString();
      let data;
      try { data = JSON.parse(text); } catch (_) { return; } // not a sample
      if (packet.retain && first && lastHistoryPayload !== null && JSON.stringify(data) === lastHistoryPayload) {
        first = false;
        return; // the retained sample the subscription brings: shown already, from the history
      }
      first = false;
      try {
        accept(data, Date.now() / 1000);
      } catch (error) {
        console.warn("skipped a sample", error);
      }
    });
  }

  async function start() {
    const key = sessionStorage.getItem(STORE);
    if (page.public !== "true" && !key) {
      askForKey("");
      return;
    }
    form.hidden = true;
    status("loading history");
    if (!(await loadHistory(key))) return;
    status("connecting");
    await connect(key);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    input.value = "";
    if (!key) return;
    sessionStorage.setItem(STORE, key);
    if (client) client.end(true);
    start();
  });
  start();
})();
