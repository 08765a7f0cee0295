/* The ckptstore dashboard page: renders a store snapshot (ckptstore/dashboard/_collect.py).
   Charts are drawn by uPlot (bundled above); this file only lays out data and tables.
   window.ckptDashboard exposes the state for tests: {data, charts, diff, renders, ready}. */
(function () {
  "use strict";
  var D = { data: null, charts: {}, diff: null, renders: 0, ready: false, lastError: null };
  window.ckptDashboard = D;
  var $ = function (id) { return document.getElementById(id); };

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], v = Number(n), i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? v.toFixed(0) + " B" : v.toFixed(1) + " " + units[i];
  }
  function fmtDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + sec + "s";
    return sec + "s";
  }
  function fmtTime(t) {
    var d = new Date(t * 1000), p = function (x) { return (x < 10 ? "0" : "") + x; };
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function fmtNum(v) {
    if (typeof v === "string") return v;  // "NaN", "Infinity"
    if (v === null || v === undefined) return "–";
    var a = Math.abs(v);
    return (a !== 0 && (a < 1e-3 || a >= 1e6)) ? v.toExponential(3) : String(Number(v.toPrecision(5)));
  }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function card(label, value, sub, cls) {
    return '<div class="card ' + (cls || "") + '"><div class="label">' + esc(label) + '</div><div class="value">' +
      esc(value) + "</div>" + (sub ? '<div class="sub">' + esc(sub) + "</div>" : "") + "</div>";
  }
  function showError(msg) { var e = $("error"); e.textContent = msg; e.hidden = false; }
  function clearError() { $("error").hidden = true; }

  // -- overview: progress and health -------------------------------------------------------------
  function renderOverview(data) {
    var cps = data.checkpoints, p = data.progress, html = "";
    if (data.error) {
      $("overview").innerHTML = '<div class="empty">' + esc(data.error) + "</div>";
      return;
    }
    if (!data.exists) {
      $("overview").innerHTML = '<div class="empty">No checkpoint store at this location yet. ' +
        (window.CKPT_MODE === "live" ? "This page updates when the first checkpoint is saved." : "") + "</div>";
      return;
    }
    html += card("checkpoints", String(cps.length), data.damaged.length ? data.damaged.length + " damaged" : "all readable",
      data.damaged.length ? "bad" : "");
    if (p) {
      var stepText = p.total_steps ? p.step + " / " + p.total_steps : String(p.step);
      var sub = p.total_steps ? (100 * p.fraction).toFixed(1) + " %" : "total steps unknown";
      html += card("step", stepText, sub + (p.epoch !== null ? " · epoch " + p.epoch : ""));
      var eta = p.eta_seconds === null ? "–" : fmtDuration(p.eta_seconds);
      var rate = p.steps_per_second ? (p.steps_per_second * 3600).toFixed(0) + " steps/h between saves" : "rate unknown";
      html += card("ETA", eta, rate);
      html += '<div class="card" id="since-card"><div class="label">since the last checkpoint</div>' +
        '<div class="value" id="since"></div><div class="sub" id="since-sub"></div></div>';
    } else {
      html += card("step", "–", "no checkpoint yet");
    }
    if (data.config_problem) {
      html += card("ckptstore.json", "damaged", data.config_problem, "bad");
    }
    var unhealthy = cps.filter(function (c) { return c.missing_objects > 0; }).length;
    html += card("objects", unhealthy ? unhealthy + " checkpoint(s) incomplete" : "all present",
      "bytes not re-hashed here: ckptstore verify --read-data", unhealthy ? "bad" : "");
    if (data.backup) {
      var b = data.backup;
      var v = b.error ? "unavailable" : b.holds + " / " + cps.length;
      html += card("backup holds", v, b.error || b.uri, b.error ? "bad" : (b.holds < cps.length ? "warn" : ""));
    }
    $("overview").innerHTML = html;
    tick();
  }
  function tick() {
    var p = D.data && D.data.progress, el = $("since");
    if (!p || !el) return;
    var live = window.CKPT_MODE === "live";
    var ago = (live ? Date.now() / 1000 : D.data.generated_t) - p.last_save_t;
    el.textContent = fmtDuration(ago);
    var lost = p.steps_per_second ? " (≈ " + Math.round(ago * p.steps_per_second) + " steps)" : "";
    $("since-sub").textContent = (live ? "a crash now loses this much training" :
      "when this snapshot was taken") + lost;
  }

  function renderDamaged(data) {
    var sec = $("damaged-section");
    sec.hidden = !data.damaged.length;
    $("damaged").innerHTML = data.damaged.map(function (d) {
      return "<li>step " + d.step + " (" + esc(d.short_id) + "): " + esc(d.error) + "</li>";
    }).join("");
  }

  // -- charts ------------------------------------------------------------------------------------
  function dropCharts() {
    Object.keys(D.charts).forEach(function (k) { D.charts[k].destroy(); });
    D.charts = {};
  }
  function chartWidth(el) { return Math.max(300, Math.min(720, (el.clientWidth || 480) - 4)); }

  function metricChart(host, name, info, cps) {
    var div = document.createElement("div");
    div.className = "chart";
    div.dataset.metric = name;
    var note = info.points + " point(s)";
    if (info.missing) note += ", missing on " + info.missing;
    if (info.not_finite) note += ", " + info.not_finite + " NaN/inf (gaps)";
    var best = info.best_step === null ? "" : ' · <span class="best">best (' + info.mode + "): " +
      fmtNum(info.best_value) + " at step " + info.best_step + "</span>";
    div.innerHTML = "<h3>" + esc(name) + (info.log ? " (log scale)" : "") + '</h3><div class="note">' + note + best + "</div>";
    host.appendChild(div);
    return function () {
      var xs = [], ys = [], bs = [];
      cps.forEach(function (c) {
        if (!(name in c.metrics)) return;
        xs.push(c.step);
        ys.push(num(c.metrics[name]));
        bs.push(c.id === info.best_id ? num(c.metrics[name]) : null);
      });
      var opts = {
        width: chartWidth(div), height: 220,
        scales: { x: { time: false }, y: info.log ? { distr: 3 } : {} },
        axes: [{ label: "step" }, { size: 60, values: function (u, v) { return v.map(fmtNum); } }],
        series: [
          { label: "step" },
          { label: name, stroke: "#2b6cb0", width: 1.5, points: { show: true, size: 5 }, spanGaps: false },
          { label: "best", stroke: "#d97706", fill: "#f59e0b", width: 0, points: { show: true, size: 11, width: 2 } },
        ],
    };
    D.charts["metric:" + name] = new uPlot(opts, [xs, ys, bs], div);
    };
  }

  function storageChart(host, st) {
    var div = document.createElement("div");
    div.className = "chart";
    div.innerHTML = "<h3>logical bytes vs bytes written, cumulative over time</h3>" +
      '<div class="note">the gap is what deduplication and compression saved</div>';
    host.appendChild(div);
    var s = st.series;
    var opts = {
      width: chartWidth(div), height: 220,
      scales: { x: { time: true } },
      axes: [{}, { size: 70, values: function (u, v) { return v.map(fmtBytes); } }],
      series: [
        {},
        { label: "logical", stroke: "#2b6cb0", width: 1.5, points: { show: true, size: 4 }, value: function (u, v) { return fmtBytes(v); } },
        { label: "written", stroke: "#17803d", width: 1.5, points: { show: true, size: 4 }, value: function (u, v) { return fmtBytes(v); } },
      ],
    };
    D.charts.storage = new uPlot(opts, [s.t, s.logical_cum, s.written_cum], div);
  }

  function renderCharts(data) {
    dropCharts();
    var m = $("metrics"), s = $("storage");
    m.innerHTML = "";
    s.innerHTML = "";
    var names = Object.keys(data.metrics);
    if (!names.length) m.innerHTML = '<div class="empty">No metrics recorded (save with metrics={...}).</div>';
    // every box first, then each chart sized to its box (a chart drawn before its neighbours
    // exist would keep the width of a full row)
    names.map(function (n) { return metricChart(m, n, data.metrics[n], data.checkpoints); })
      .forEach(function (draw) { draw(); });
    var st = data.storage;
    if (!st) { $("storage-cards").innerHTML = ""; return; }
    var saved = st.logical_bytes ? Math.max(0, 1 - st.stored_bytes / st.logical_bytes) : 0;
    var html = card("logical (all checkpoints)", fmtBytes(st.logical_bytes), "tensor bytes as loaded");
    html += card("stored", fmtBytes(st.stored_bytes), st.referenced_objects + " objects, " +
      (100 * saved).toFixed(0) + " % saved by dedup and compression");
    html += card("next gc frees", fmtBytes(st.gc_frees_bytes), st.gc_blocked || (st.gc_removes + " checkpoint(s) to remove" +
      (st.unreferenced_objects ? ", + " + st.unreferenced_objects + " unreferenced object(s) after the grace period" : "")),
      st.gc_blocked ? "warn" : "");
    html += card("space left on disk", st.free_bytes === null ? "n/a" : fmtBytes(st.free_bytes),
      st.free_bytes === null ? "object store: no disk to fill" : "");
    $("storage-cards").innerHTML = html;
    if (st.series.t.length) storageChart(s, st);
  }

  // -- the checkpoints table -----------------------------------------------------------------------
  function renderTable(data) {
    var cps = data.checkpoints, names = Object.keys(data.metrics), hasBackup = !!data.backup;
    $("policy").innerHTML = data.policy ? "Retention: <b>" + esc(data.policy) + "</b>" :
      "No retention policy: every checkpoint is kept.";
    var head = ["step", "epoch", "created", "size", "new bytes"].concat(names, ["tags", "trigger", "retention", "why",
      "health"], hasBackup ? ["backup"] : [], ["id"]);
    var numeric = { step: 1, epoch: 1, size: 1, "new bytes": 1 };
    names.forEach(function (n) { numeric[n] = 1; });
    $("checkpoints").tHead.innerHTML = "<tr>" + head.map(function (h) {
      return '<th class="' + (numeric[h] ? "num" : "") + '">' + esc(h) + "</th>";
    }).join("") + "</tr>";
    var rows = [];
    for (var i = cps.length - 1; i >= 0; i--) {
      var c = cps[i], cells = [];
      cells.push('<td class="num">' + c.step + "</td>", '<td class="num">' + (c.epoch === null ? "" : c.epoch) + "</td>",
        "<td>" + fmtTime(c.t) + "</td>", '<td class="num">' + fmtBytes(c.size) + "</td>",
        '<td class="num">' + fmtBytes(c.new_bytes) + "</td>");
      names.forEach(function (n) {
        var v = c.metrics[n], isBest = data.metrics[n].best_id === c.id;
        cells.push('<td class="num' + (isBest ? " best" : "") + '">' + (n in c.metrics ? esc(fmtNum(v)) : "") +
          (isBest ? " ★" : "") + "</td>");
      });
      cells.push("<td>" + esc(c.tags.join(", ")) + "</td>", "<td>" + esc(c.trigger || "") + "</td>",
        '<td class="fate">' + (c.keep ? "keep" : "gc removes") + "</td>",
        '<td class="reasons">' + esc(c.reasons.join("; ")) + "</td>",
        '<td class="health">' + esc(c.health) + "</td>");
      if (hasBackup) cells.push("<td>" + (c.backup === null ? "–" : c.backup ? "yes" : "no") + "</td>");
      cells.push('<td class="mono">' + esc(c.short_id) + "</td>");
      rows.push('<tr data-id="' + esc(c.id) + '" data-step="' + c.step + '" class="' + (c.keep ? "keep" : "remove") +
        (c.missing_objects ? " unhealthy" : "") + '">' + cells.join("") + "</tr>");
    }
    $("checkpoints").tBodies[0].innerHTML = rows.join("") ||
      '<tr><td colspan="' + head.length + '" class="empty">no checkpoints yet</td></tr>';
  }

  // -- compare -------------------------------------------------------------------------------------
  function fillCompare(data) {
    var cps = data.checkpoints, a = $("cmp-a"), b = $("cmp-b"), keepA = a.value, keepB = b.value;
    var opts = cps.map(function (c) {
      return '<option value="' + esc(c.id) + '">step ' + c.step + " · " + esc(c.short_id) + "</option>";
    }).reverse().join("");
    a.innerHTML = opts;
    b.innerHTML = opts;
    if (cps.length) {
      a.value = keepA || cps[Math.max(0, cps.length - 2)].id;
      b.value = keepB || cps[cps.length - 1].id;
      if (a.value === "") a.value = cps[Math.max(0, cps.length - 2)].id;
      if (b.value === "") b.value = cps[cps.length - 1].id;
    }
    var live = window.CKPT_MODE === "live";
    $("cmp-go").disabled = !live || cps.length < 2;
    $("cmp-note").textContent = live ? "loads both checkpoints' tensors" :
      "static page: run `ckptstore diff URI A B`, or write the page with --compare A B";
  }

  function renderDiff(d) {
    D.diff = d;
    var out = $("compare"), h = "";
    if (!d) { out.innerHTML = ""; return; }
    if (d.error) { out.innerHTML = '<div class="empty">' + esc(d.error) + "</div>"; return; }
    var counts = Object.keys(d.counts).map(function (k) { return d.counts[k] + " " + k; }).join(", ");
    h += "<p>step " + d.a.step + " (" + esc(d.a.short_id) + ") → step " + d.b.step + " (" + esc(d.b.short_id) + "): " +
      esc(counts || "no tensors") + "; " + d.deduplicated + " deduplicated (stored once)" +
      (d.loaded ? "" : "; tensors not loaded") + "</p>";
    h += "<h3>config</h3>" + (d.config.length ? table(["key", "A", "B"], d.config.map(function (c) {
      return ["<td class=\"mono\">" + esc(c.path) + "</td><td>" + esc(JSON.stringify(c.a)) + "</td><td>" +
        esc(JSON.stringify(c.b)) + "</td>", ""];
    }), "cmp-config") : '<div class="empty">same config</div>');
    if (d.metrics.length) {
      h += "<h3>metrics</h3>" + table(["metric", "A", "B"], d.metrics.map(function (m) {
        return ["<td>" + esc(m.name) + '</td><td class="num">' + esc(fmtNum(m.a)) + '</td><td class="num">' +
          esc(fmtNum(m.b)) + "</td>", ""];
      }), "cmp-metrics");
    }
    if (d.values && d.values.length) {
      h += "<h3>values (not tensors)</h3>" + table(["path", "A", "B"], d.values.map(function (v) {
        return ['<td class="mono">' + esc(v.path) + "</td><td>" + esc(JSON.stringify(v.a)) + "</td><td>" +
          esc(JSON.stringify(v.b)) + "</td>", ""];
      }), "cmp-values");
    }
    h += "<h3>layers</h3>" + table(["layer", "tensors", "changed", "relative change"], d.layers.map(function (l) {
      return ['<td class="mono">' + esc(l.name) + '</td><td class="num">' + l.tensors + '</td><td class="num">' +
        l.changed + '</td><td class="num">' + esc(fmtNum(l.relative_change)) + "</td>", ""];
    }), "cmp-layers");
    h += "<h3>tensors</h3>" + table(["tensor", "status", "shape", "dtype", "relative change", "deduplicated"],
      d.tensors.map(function (t) {
        var shape = "[" + t.shape.join(", ") + "]" + (t.old_shape ? " (was [" + t.old_shape.join(", ") + "])" : "");
        return ['<td class="mono">' + esc(t.name) + '</td><td class="status">' + t.status + "</td><td>" + esc(shape) +
          "</td><td>" + esc(t.dtype + (t.old_dtype && t.old_dtype !== t.dtype ? " (was " + t.old_dtype + ")" : "")) +
          '</td><td class="num">' + esc(fmtNum(t.relative_change)) + "</td><td>" + (t.deduplicated ? "yes" : "") + "</td>",
          "st-" + t.status, t.name];
      }), "cmp-tensors");
    out.innerHTML = h;
  }
  function table(head, rows, id) {
    return '<div class="scroll"><table id="' + id + '"><thead><tr>' + head.map(function (x) {
      return "<th>" + esc(x) + "</th>";
    }).join("") + "</tr></thead><tbody>" + rows.map(function (r) {
      return '<tr class="' + r[1] + '"' + (r[2] ? ' data-name="' + esc(r[2]) + '"' : "") + ">" + r[0] + "</tr>";
    }).join("") + "</tbody></table></div>";
  }
  function compare() {
    var a = $("cmp-a").value, b = $("cmp-b").value;
    $("compare").innerHTML = '<div class="empty">loading…</div>';
    D.diff = null;
    return fetch("api/diff?a=" + encodeURIComponent(a) + "&b=" + encodeURIComponent(b)).then(function (r) {
      return r.json();
    }).then(renderDiff, function (e) { renderDiff({ error: "the comparison failed: " + e }); });
  }
  D.compare = compare;

  // -- the whole page ------------------------------------------------------------------------------
  function render(data) {
    D.data = data;
    $("where").textContent = data.uri;
    $("version").textContent = data.ckptstore;
    document.title = "ckptstore: " + data.uri;
    renderOverview(data);
    renderDamaged(data);
    renderCharts(data);
    renderTable(data);
    fillCompare(data);
    $("status").textContent = (window.CKPT_MODE === "live" ? "live · refreshed " : "snapshot of ") +
      fmtTime(data.generated_t);
    D.renders++;
    if (!D.ready) D.readyMs = performance.now();  // since navigation start (benchmarks/bench_dashboard.py)
    D.ready = true;
  }
  D.render = render;

  function poll() {
    var sig = D.data ? D.data.signature : "";
    fetch("api/snapshot?since=" + encodeURIComponent(sig)).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (data) {
      clearError();
      if (data.unchanged) {
        $("status").textContent = "live · checked " + fmtTime(Date.now() / 1000);
      } else {
        render(data);
      }
    }).catch(function (e) {
      showError("cannot reach the dashboard server (" + e.message + "); showing the last data");
    }).then(function () { setTimeout(poll, window.CKPT_REFRESH * 1000); });
  }

  function start() {
    var raw = $("ckpt-data").textContent, diffRaw = $("ckpt-diff").textContent;
    $("cmp-go").addEventListener("click", compare);
    try {
      render(JSON.parse(raw));
      if (diffRaw.trim() && diffRaw.trim() !== "null") renderDiff(JSON.parse(diffRaw));
    } catch (e) {
      D.lastError = String(e);
      showError("the dashboard could not show this data: " + e);
      throw e;
    }
    setInterval(tick, 1000);
    if (window.CKPT_MODE === "live") setTimeout(poll, window.CKPT_REFRESH * 1000);
  }
  start();
})();
