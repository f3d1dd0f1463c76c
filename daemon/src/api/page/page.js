// The field page (SPEC §12): every meter with its state, identity, Lp and
// Leq, a chart of the last 10 minutes, the latest interval levels, the
// active alerts (with ack), buffer and fleet. Plain browser JavaScript, no
// build step, no library: it is served from the slmd binary.
//
// The live feed is `/v1/stream` read with fetch() and parsed here rather
// than with EventSource: an EventSource cannot send a header, and the token
// must go in `Authorization`, never in a URL (URLs end up in logs and
// browser history).
'use strict';
(() => {
  const WINDOW_MS = 10 * 60 * 1000;
  const STATUS_EVERY_MS = 5000;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 10000;
  const HISTORY_PAGES = 3;
  const TOKEN_KEY = 'slmd.token';

  const $ = (selector, root = document) => root.querySelector(selector);
  const meters = new Map();
  let token = sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || '';
  let intervals = [];
  let started = false;
  let following = false;
  let streamConnects = 0;
  let drawQueued = false;
  let alertsQueued = false;

  // A 401: `used` is the token the refused request carried, so an answer
  // to a request made with an older token does not undo a newer login.
  class NeedToken extends Error {
    constructor(used) {
      super('a token is needed');
      this.used = used;
    }
  }

  const refused = (err) => err instanceof NeedToken && err.used === token;

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const level = (v) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(1) : '–');
  const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '–');

  function ago(iso) {
    if (!iso) return 'never';
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 120) return `${s} s ago`;
    if (s < 7200) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }

  // "15m" → 900000 ms (the lengths `[levels] intervals` takes).
  function lengthMs(text) {
    const m = /^(\d+)(ms|s|m|h|d)$/.exec(text || '');
    if (!m) return 0;
    return Number(m[1]) * { ms: 1, s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[m[2]];
  }

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    const used = token;
    if (used) headers.Authorization = `Bearer ${used}`;
    const response = await fetch(path, { ...options, headers, cache: 'no-store' });
    if (response.status === 401) throw new NeedToken(used);
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!response.ok) throw new Error((body && body.error) || `${path}: HTTP ${response.status}`);
    return body;
  }

  function showProblem(text) {
    $('#footer').textContent = text;
  }

  function askToken(message) {
    document.body.dataset.state = 'login';
    $('#page').hidden = true;
    $('#login').hidden = false;
    $('#login-error').textContent = message || '';
    $('#summary').textContent = 'token needed';
    $('#token').focus();
  }

  $('#login').addEventListener('submit', async (event) => {
    event.preventDefault();
    token = $('#token').value.trim();
    try {
      await start();
      sessionStorage.setItem(TOKEN_KEY, token);
      if ($('#remember').checked) localStorage.setItem(TOKEN_KEY, token);
    } catch (err) {
      if (refused(err)) askToken('That token is not accepted.');
      else if (!(err instanceof NeedToken)) showProblem(String(err.message || err));
    }
  });

  // ---- meters ----------------------------------------------------------

  function meterOf(id) {
    let meter = meters.get(id);
    if (!meter) {
      const tile = $('#meter-tile').content.firstElementChild.cloneNode(true);
      tile.dataset.meter = id;
      $('.id', tile).textContent = id;
      $('#meters').append(tile);
      meter = { id, tile, points: [], levels: {} };
      meters.set(id, meter);
    }
    return meter;
  }

  function showDevice(device) {
    const meter = meterOf(device.id);
    const state = $('.state', meter.tile);
    state.textContent = device.state;
    state.dataset.state = device.state;
    const who = device.identity;
    $('.identity', meter.tile).textContent = who
      ? [who.model, who.serial && `serial ${who.serial}`, who.firmware && `firmware ${who.firmware}`].filter(Boolean).join(' · ')
      : `${device.protocol} · identity unknown`;
    meter.device = device;
    meter.readings = device.readings_total;
    const at = Date.parse(device.last_reading_at || '');
    if (Number.isFinite(at) && !(meter.lastAt > at)) meter.lastAt = at;
    showSeen(meter);
  }

  // "last reading 1 s ago · 512 readings · measuring", kept current between
  // two status calls by the readings of the stream.
  function showSeen(meter) {
    const device = meter.device || {};
    const error = device.state !== 'connected' && device.last_error ? ` · ${device.last_error}` : '';
    const last = meter.lastAt ? new Date(meter.lastAt).toISOString() : null;
    $('.seen', meter.tile).textContent =
      `last reading ${ago(last)} · ${meter.readings || 0} readings · ${device.run_state || ''}${error}`;
  }

  function showNumbers(meter, record) {
    const metrics = record.metrics || {};
    $('.lp', meter.tile).textContent = level(metrics.lp);
    $('.leq', meter.tile).textContent = level(metrics.leq);
  }

  function onReading(record) {
    const meter = meters.get(record.device);
    if (!meter) return;
    meter.live = true;
    showNumbers(meter, record);
    const metrics = record.metrics || {};
    const at = Date.parse(record.received_at);
    if (Number.isFinite(at) && !(meter.lastAt >= at)) {
      meter.lastAt = at;
      meter.readings = (meter.readings || 0) + 1;
    }
    const last = meter.points[meter.points.length - 1];
    if (typeof metrics.lp === 'number' && Number.isFinite(at) && (!last || at > last[0])) {
      meter.points.push([at, metrics.lp]);
    }
    queueDraw();
  }

  function onState(change) {
    const meter = meters.get(change.device);
    if (!meter) return;
    const state = $('.state', meter.tile);
    state.textContent = change.state;
    state.dataset.state = change.state;
  }

  function onLevel(record) {
    const meter = meters.get(record.device);
    if (!meter || !record.interval_length) return;
    meter.levels[record.interval_length] = record;
    showLevels(meter);
  }

  function showLevels(meter) {
    const parts = intervals
      .filter((length) => meter.levels[length])
      .map((length) => {
        const r = meter.levels[length];
        const low = (r.flags || []).includes('low_coverage') ? ' (low coverage)' : '';
        return `Leq ${length} ${level(r.metrics && r.metrics.leq)} dB from ${clock(r.interval_start)}${low}`;
      });
    $('.intervals', meter.tile).textContent = parts.join(' · ');
  }

  // ---- the chart -------------------------------------------------------

  function queueDraw() {
    if (drawQueued) return;
    drawQueued = true;
    setTimeout(() => {
      drawQueued = false;
      for (const meter of meters.values()) draw(meter);
    }, 500);
  }

  function draw(meter) {
    const canvas = $('canvas', meter.tile);
    const now = Date.now();
    const from = now - WINDOW_MS;
    while (meter.points.length && meter.points[0][0] < from) meter.points.shift();
    canvas.dataset.points = String(meter.points.length);
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = canvas.getContext('2d');
    const style = getComputedStyle(document.documentElement);
    g.clearRect(0, 0, width, height);
    const values = meter.points.map((p) => p[1]);
    let low = Math.floor((values.length ? Math.min(...values) : 40) / 10) * 10;
    let high = Math.ceil((values.length ? Math.max(...values) : 70) / 10) * 10;
    if (high - low < 20) high = low + 20;
    const left = 30 * ratio;
    const x = (t) => left + ((t - from) / WINDOW_MS) * (width - left);
    const y = (v) => height - 12 * ratio - ((v - low) / (high - low)) * (height - 20 * ratio);
    g.font = `${10 * ratio}px sans-serif`;
    g.fillStyle = style.getPropertyValue('--muted') || '#888';
    g.strokeStyle = 'rgba(128,128,128,.3)';
    g.lineWidth = 1;
    for (let v = low; v <= high; v += 10) {
      g.beginPath();
      g.moveTo(left, y(v));
      g.lineTo(width, y(v));
      g.stroke();
      g.fillText(String(v), 2, y(v) + 3 * ratio);
    }
    g.fillText('−10 min', left, height - 1);
    g.fillText('now', width - 22 * ratio, height - 1);
    g.strokeStyle = style.getPropertyValue('--line') || '#2e86c1';
    g.lineWidth = 1.5 * ratio;
    g.beginPath();
    meter.points.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
  }

  // ---- alerts ----------------------------------------------------------

  function queueAlerts() {
    if (alertsQueued) return;
    alertsQueued = true;
    setTimeout(() => {
      alertsQueued = false;
      refreshAlerts().catch((err) => showProblem(String(err.message || err)));
    }, 200);
  }

  async function refreshAlerts() {
    const body = await api('/v1/alerts?recent=0');
    const section = $('#alerts');
    section.replaceChildren();
    for (const episode of body.active || []) section.append(alertCard(episode));
  }

  function alertCard(episode) {
    const card = document.createElement('div');
    card.className = episode.ack ? 'alert acked' : 'alert';
    card.dataset.episode = episode.episode;
    const what = document.createElement('p');
    const name = document.createElement('strong');
    name.textContent = episode.alert;
    what.append(name, ` on ${episode.device}: ${episode.metric} ${level(episode.last_value)} dB, peak ${level(episode.peak)} dB, limit ${level(episode.threshold)} dB, since ${clock(episode.onset_at)}`);
    card.append(what);
    if (episode.ack) {
      const ack = document.createElement('p');
      ack.className = 'ack-note';
      ack.textContent = `acknowledged ${clock(episode.ack.at)}: ${episode.ack.note}`;
      card.append(ack);
    }
    const form = document.createElement('form');
    const note = document.createElement('input');
    note.name = 'note';
    note.maxLength = 1000;
    note.placeholder = episode.ack ? 'new note' : 'note (what is going on)';
    const button = document.createElement('button');
    button.type = 'submit';
    button.className = 'ack';
    button.textContent = 'Acknowledge';
    form.append(note, button);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      button.disabled = true;
      try {
        await api(`/v1/alerts/${encodeURIComponent(episode.episode)}/ack`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ note: note.value }),
        });
        await refreshAlerts();
      } catch (err) {
        button.disabled = false;
        showProblem(`acknowledge failed: ${err.message || err}`);
      }
    });
    card.append(form);
    return card;
  }

  // ---- status, history, levels -------------------------------------------

  function showStatus(status) {
    $('#gateway').textContent = status.gateway;
    document.title = `${status.gateway} · slmd`;
    $('#summary').textContent = `slmd ${status.version} · up ${Math.round(status.uptime_seconds / 60)} min · ${status.devices.length} meter(s)`;
    const seen = new Set();
    for (const device of status.devices) {
      showDevice(device);
      seen.add(device.id);
    }
    for (const [id, meter] of meters) {
      if (!seen.has(id)) {
        meter.tile.remove();
        meters.delete(id);
      }
    }
    const b = status.buffer || {};
    $('#buffer').textContent = b.open
      ? `${b.records} records stored · ${b.unsent} not yet at the fleet · ${b.lost} lost${b.write_error ? ` · ${b.write_error}` : ''}`
      : `not open${b.detail ? `: ${b.detail}` : ''}`;
    const f = status.fleet || {};
    $('#fleet').textContent = f.enabled
      ? `${f.state} · backlog ${f.backlog} · last push ${ago(f.last_push_at)}${f.last_error ? ` · ${f.last_error}` : ''}`
      : 'off (no [fleet] in the config)';
  }

  async function refreshStatus() {
    // While the token form is up, leave it to the user.
    if (document.body.dataset.state === 'login') return;
    try {
      showStatus(await api('/v1/status'));
    } catch (err) {
      if (refused(err)) askToken('The token is no longer accepted.');
      else if (!(err instanceof NeedToken)) showProblem(`status: ${err.message || err}`);
    }
  }

  async function backfill(meter) {
    const since = new Date(Date.now() - WINDOW_MS).toISOString();
    const history = [];
    let after = null;
    for (let page = 0; page < HISTORY_PAGES; page += 1) {
      const query = `since=${encodeURIComponent(since)}&limit=10000${after === null ? '' : `&after=${after}`}`;
      const body = await api(`/v1/devices/${encodeURIComponent(meter.id)}/history?${query}`);
      const records = body.records || [];
      for (const r of records) {
        if (r.metrics && typeof r.metrics.lp === 'number') history.push([Date.parse(r.received_at), r.metrics.lp]);
      }
      const last = records[records.length - 1];
      if (last && !meter.live) showNumbers(meter, last);
      if (!body.truncated) break;
      after = body.next_after;
    }
    // History is older than anything the stream brought meanwhile.
    const firstLive = meter.points.length ? meter.points[0][0] : Infinity;
    meter.points = history.filter((p) => p[0] < firstLive).concat(meter.points);
    queueDraw();
  }

  async function loadLevels(meter) {
    for (const length of intervals) {
      const since = new Date(Date.now() - 3 * lengthMs(length)).toISOString();
      const body = await api(`/v1/devices/${encodeURIComponent(meter.id)}/levels?length=${length}&since=${encodeURIComponent(since)}`);
      const latest = (body.levels || [])[body.levels.length - 1];
      if (latest) meter.levels[length] = latest;
    }
    showLevels(meter);
  }

  // ---- the stream --------------------------------------------------------

  function dispatch(event, data) {
    let value;
    try {
      value = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (event === 'message') onReading(value);
    else if (event === 'state') onState(value);
    else if (event === 'level') onLevel(value);
    else if (event === 'alert') queueAlerts();
  }

  // Server-Sent Events from a fetch() body: blocks end with a blank line,
  // `event:` names it (default "message"), `data:` lines join with "\n".
  async function readEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      text += decoder.decode(value, { stream: true });
      let end;
      while ((end = text.search(/\r?\n\r?\n/)) >= 0) {
        const block = text.slice(0, end);
        text = text.slice(end).replace(/^\r?\n\r?\n/, '');
        let event = 'message';
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (!line || line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? '' : line.slice(colon + 1);
          if (v.startsWith(' ')) v = v.slice(1);
          if (field === 'event') event = v;
          else if (field === 'data') data.push(v);
        }
        if (data.length) dispatch(event, data.join('\n'));
      }
    }
  }

  async function follow() {
    following = true;
    let wait = RETRY_MIN_MS;
    for (;;) {
      try {
        const used = token;
        const headers = used ? { Authorization: `Bearer ${used}` } : {};
        const response = await fetch('/v1/stream', { headers, cache: 'no-store' });
        if (response.status === 401 && used === token) {
          following = false;
          askToken('The token is no longer accepted.');
          return;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        streamConnects += 1;
        document.body.dataset.stream = 'open';
        document.body.dataset.streamConnects = String(streamConnects);
        showProblem('');
        wait = RETRY_MIN_MS;
        // After a reconnect the daemon may have restarted: fresh state.
        if (streamConnects > 1) {
          refreshStatus();
          queueAlerts();
        }
        await readEvents(response.body);
      } catch (err) {
        showProblem(`live feed interrupted (${err.message || err}); reconnecting`);
      }
      document.body.dataset.stream = 'closed';
      await sleep(wait);
      wait = Math.min(wait * 2, RETRY_MAX_MS);
    }
  }

  // ---- start ---------------------------------------------------------------

  async function start() {
    const status = await api('/v1/status');
    $('#login').hidden = true;
    $('#page').hidden = false;
    intervals = (status.limits && status.limits.intervals) || [];
    showStatus(status);
    const problem = (e) => showProblem(String(e.message || e));
    if (!started) {
      started = true;
      await Promise.all([...meters.values()].map((m) => backfill(m).catch(problem)));
      await Promise.all([...meters.values()].map((m) => loadLevels(m).catch(problem)));
      setInterval(refreshStatus, STATUS_EVERY_MS);
      setInterval(() => meters.forEach(showSeen), 1000);
      window.addEventListener('resize', queueDraw);
    }
    await refreshAlerts().catch(problem);
    document.body.dataset.state = 'ready';
    // Again after a new token (the old one was refused mid-way).
    if (!following) follow();
  }

  async function main() {
    for (;;) {
      try {
        await start();
        return;
      } catch (err) {
        if (refused(err)) {
          askToken(token ? 'That token is not accepted.' : '');
          return;
        }
        showProblem(`cannot reach slmd (${err.message || err}); trying again`);
        await sleep(3000);
      }
    }
  }

  main();
})();
