// The live page: follows /api/live (Server-Sent Events) and draws each verdict as text.
// Everything from the server goes in with textContent: process names are not trusted.
"use strict";
(function () {
  var RECONNECTING_FOR = 2000;   // ms of "reconnecting" before the page says "offline"
  var RETRY_FULL = 10000;        // ms between tries while the exporter has too many viewers
  var RETRY_DOWN = 2000;         // ms between tries while the exporter does not answer

  var $ = function (id) { return document.getElementById(id); };
  var state = "connecting", source = null, timer = null;
  var lastUpdate = null;          // verdict time (unix seconds) of the last update shown
  var lastMessage = 0;            // Date.now() when the last verdict arrived
  var staleAfter = 5000;          // ms without a verdict before the numbers stop being current
  var lostAt = null;

  // -- words and units -----------------------------------------------------------------------
  function num(x, digits) {
    return x.toLocaleString("en-US", { minimumFractionDigits: digits || 0, maximumFractionDigits: digits || 0 });
  }
  function pct(r) { return r == null ? "–" : num(r * 100) + "%"; }
  function celsius(c) { return c == null ? "–" : num(c) + " °C"; }
  function bytes(n) {
    if (n == null) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? num(n) + " B" : num(n, n < 100 ? 1 : 0) + " " + units[i];
  }
  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  }
  function ago(t) {
    var s = Math.max(0, Math.round(Date.now() / 1000 - t));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min ago";
  }
  function owner(o) {
    if (!o) return "–";
    var i = o.indexOf("/");
    return i > 0 ? o.slice(0, i) + " " + o.slice(i + 1) : o;
  }
  function gpuName(g) { return /^\d+$/.test(String(g)) ? "GPU" + g : String(g); }

  // -- DOM helpers ---------------------------------------------------------------------------
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function replace(list, items, empty) {
    list.textContent = "";
    if (!items.length) { list.appendChild(el("li", "empty", empty)); return; }
    items.forEach(function (i) { list.appendChild(i); });
  }
  function bar(name, sub, value, limit, ratio, heat) {
    var li = el("li"), row = el("div", "row"), left = el("span", "name", name);
    if (sub) { left.appendChild(document.createTextNode(" ")); left.appendChild(el("span", "limit", sub)); }
    row.appendChild(left);
    row.appendChild(el("span", "value", value));
    li.appendChild(row);
    if (limit) li.appendChild(el("div", "limit", limit));
    if (ratio != null) {
      var track = el("div", "track"), fill = el("div", "fill" + (heat ? " " + heat : ""));
      track.setAttribute("aria-hidden", "true");
      fill.style.width = Math.max(0, Math.min(100, ratio * 100)).toFixed(1) + "%";
      track.appendChild(fill);
      li.appendChild(track);
    }
    return li;
  }

  // -- drawing -------------------------------------------------------------------------------
  function drawLoad(v) {
    var items = [], cpu = v.cpu || {}, mem = v.memory;
    var cores = cpu.cores ? " of " + num(cpu.cores) + " cores" : "";
    items.push(bar("CPU", null, cpu.usage_ratio == null ? "measuring…" : pct(cpu.usage_ratio) + " busy" + cores,
      null, cpu.usage_ratio, heatRatio(cpu.usage_ratio)));
    if (mem && mem.total_bytes) {
      items.push(bar("Memory", null, bytes(mem.used_bytes) + " of " + bytes(mem.total_bytes) + " (" + pct(mem.usage_ratio) + ")",
        null, mem.usage_ratio, heatRatio(mem.usage_ratio)));
    }
    (v.gpus || []).forEach(function (g) {
      var bits = [g.utilization_ratio == null ? "busy share unknown" : pct(g.utilization_ratio) + " busy"];
      if (g.temperature_celsius != null) bits.push(celsius(g.temperature_celsius));
      if (g.power_watts != null) bits.push(num(g.power_watts) + " W");
      var about = g.name ? [g.name] : [];
      if (g.memory_total_bytes) about.push("memory " + bytes(g.memory_used_bytes) + " of " + bytes(g.memory_total_bytes));
      items.push(bar(g.display || gpuName(g.gpu), null, bits.join(" · "), about.join(" · ") || null, g.utilization_ratio,
        heatRatio(g.utilization_ratio)));
    });
    replace($("load"), items, "No load readings.");
  }
  function sub(name, chip) { return chip && (name || "").indexOf(chip) < 0 ? chip : null; }
  function heatRatio(r) { return r == null ? "" : r > 0.9 ? "hot" : r > 0.75 ? "warm" : ""; }
  function drawTemperatures(v) {
    var items = (v.temperatures || []).slice(0, 8).map(function (t) {
      var top = t.critical_celsius || t.max_celsius, limits = [];
      if (t.max_celsius != null) limits.push("max " + celsius(t.max_celsius));
      if (t.critical_celsius != null) limits.push("critical " + celsius(t.critical_celsius));
      var hot = t.celsius > 85 || (t.max_celsius != null && t.celsius >= t.max_celsius - 10);
      var warm = t.max_celsius != null && t.celsius >= t.max_celsius - 20;
      return bar(t.name || t.label || t.sensor, sub(t.name, t.chip), celsius(t.celsius), limits.join(" · ") || "no limit reported",
        t.celsius / (top || 100), hot ? "hot" : warm ? "warm" : "");
    });
    replace($("temperatures"), items, "No temperature readings.");
  }
  function drawFans(v) {
    var items = (v.fans || []).slice(0, 8).map(function (f) {
      var bits = [];
      if (f.rpm != null) bits.push(num(f.rpm) + " rpm");
      if (f.ratio != null) bits.push(pct(f.ratio) + " of max");
      return bar(f.name || f.label || f.fan, sub(f.name, f.chip), bits.join(" · ") || "–", null, f.ratio,
        f.ratio != null && f.ratio > 0.9 ? "hot" : "");
    });
    replace($("fans"), items, "No fan readings: a virtual machine, sensor modules not loaded, or fans only on the BMC.");
  }
  function cell(tr, label, text, cls) {
    var td = el("td", (cls || "") + (text === "–" ? " na" : ""), text);
    td.setAttribute("data-label", label);
    tr.appendChild(td);
    return td;
  }
  function drawCulprits(v) {
    var body = $("culprits").tBodies[0];
    body.textContent = "";
    var list = v.culprits || [];
    if (!list.length) {
      var tr = el("tr"), td = cell(tr, "", v.measuring ? "Measuring…" : "Nothing busy.", "empty");
      td.colSpan = 9;
      body.appendChild(tr);
      return;
    }
    list.forEach(function (c) {
      var tr = el("tr");
      cell(tr, "#", String(c.rank), "rank");
      var name = cell(tr, "Name", c.name + (c.pid != null ? " (pid " + c.pid + ")" : ""), "name");
      if (c.text) name.appendChild(el("span", "why", c.text));
      cell(tr, "Kind", c.kind === "process" ? "process" : c.processes + " processes", "kind");
      cell(tr, "User", c.user || "–");
      cell(tr, "Container or unit", owner(c.owner));
      cell(tr, "CPU", c.cores == null ? "–" : num(c.cores, 2) + " cores", "num");
      cell(tr, "Memory", bytes(c.memory_bytes), "num");
      var gpu = Object.keys(c.gpu || {}).map(function (g) { return gpuName(g) + " " + pct(c.gpu[g]); }).join(", ");
      cell(tr, "GPU", gpu || "–", "num");
      cell(tr, "Power", c.watts == null ? "–" : num(c.watts) + " W", "num");
      body.appendChild(tr);
    });
  }
  function drawWarnings(ws) {
    var items = (ws || []).map(function (w) {
      var li = el("li", w.level === "critical" ? "hot" : "", w.text);
      li.appendChild(el("span", "since", "since " + clock(w.since) + " (" + ago(w.since) + ")"));
      return li;
    });
    var list = $("warnings");
    list.textContent = "";
    if (!items.length) { list.appendChild(el("li", "none", "None.")); return; }
    items.forEach(function (i) { list.appendChild(i); });
  }
  function draw(msg) {
    var v = msg.verdict;
    if (msg.interval_seconds) staleAfter = Math.max(5000, msg.interval_seconds * 3000 + 2000);
    $("host").textContent = v.host || "hoofhearted";
    document.title = (v.host || "hoofhearted") + " · hoofhearted";
    $("sentence").textContent = v.sentence;
    replace($("notes"), (v.notes || []).map(function (n) { return el("li", null, n); }), "");
    if (!(v.notes || []).length) $("notes").textContent = "";
    drawWarnings(msg.warnings);
    drawLoad(v);
    drawTemperatures(v);
    drawFans(v);
    drawCulprits(v);
    lastUpdate = v.time;
  }

  // -- connection ----------------------------------------------------------------------------
  var SAID = { live: "Live.", reconnecting: "Connection lost, reconnecting.", offline: "Offline: the numbers are not current.",
               full: "Too many viewers.", denied: "Not authorised." };
  function setState(s) {
    // the status line changes every second; a screen reader hears only a change of state
    if (s !== state && SAID[s]) $("announce").textContent = SAID[s];
    state = s;
    $("status").setAttribute("data-state", s);
    $("main").setAttribute("data-current", s === "live" ? "true" : "false");
    showStatus();
  }
  function showStatus() {
    var last = lastUpdate ? "last update " + clock(lastUpdate) + " (" + ago(lastUpdate) + ")" : "no update yet";
    var text = {
      connecting: "Connecting…",
      live: "Live · updated " + (lastUpdate ? clock(lastUpdate) : "–"),
      reconnecting: "Reconnecting… " + last,
      offline: "Offline · " + last,
      full: "Too many viewers: this exporter serves a limited number of live pages. Retrying… " + last,
      denied: "Not authorised for live updates · " + last
    }[state];
    $("status-text").textContent = text;
  }
  function later(fn, ms) { clearTimeout(timer); timer = setTimeout(fn, ms); }
  function close() { if (source) { source.close(); source = null; } }
  function connect() {
    close();
    var es = source = new EventSource("api/live");
    es.addEventListener("verdict", function (e) {
      if (es !== source) return;
      try { draw(JSON.parse(e.data)); } catch (err) { console.warn("bad update", err); return; }
      lastMessage = Date.now();
      lostAt = null;
      setState("live");
    });
    es.onerror = function () {
      if (es !== source) return;
      if (lostAt === null) lostAt = Date.now();
      if (es.readyState === EventSource.CLOSED) {   // refused with a status: ask why
        close();
        probe();
      } else if (state !== "offline") {
        setState(Date.now() - lostAt < RECONNECTING_FOR ? "reconnecting" : "offline");
      }
    };
  }
  // EventSource does not tell why a connection was refused; a HEAD request does.
  function probe() {
    fetch("api/live", { method: "HEAD", cache: "no-store" }).then(function (r) {
      if (r.status === 503) { setState("full"); later(probe, RETRY_FULL); }
      else if (r.status === 401 || r.status === 403) { setState("denied"); later(probe, RETRY_FULL); }
      else if (r.ok) { connect(); }
      else { setState("offline"); later(probe, RETRY_DOWN); }
    }, function () {
      setState(lostAt && Date.now() - lostAt < RECONNECTING_FOR ? "reconnecting" : "offline");
      later(probe, RETRY_DOWN);
    });
  }
  function watchdog() {
    var now = Date.now();
    if (state === "live" && now - lastMessage > staleAfter) {
      // Connected but silent: the numbers are no longer current; start over.
      lostAt = now - RECONNECTING_FOR;
      setState("offline");
      close();
      probe();
    } else if (state === "reconnecting" && lostAt !== null && now - lostAt >= RECONNECTING_FOR) {
      setState("offline");
    } else {
      showStatus();
    }
  }
  window.hoofhearted = { state: function () { return state; }, lastUpdate: function () { return lastUpdate; } };
  connect();
  setInterval(watchdog, 500);
})();
