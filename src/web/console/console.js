// Sluice's web console (docs/console.md): one page over the JSON API
// (docs/http.md), in plain JavaScript with no build step and no framework.
//
// How it works:
//   * Every POLL_MS it asks the API for what the current view shows
//     (/api/server and /api/streams always; /api/clients and /api/relays
//     where they are shown) and re-renders that view's changing parts.
//   * Views are picked by the URL's hash: #/streams, #/stream/APP/NAME,
//     #/clients, #/relays, #/server. A view builds its fixed parts once
//     (mount) and refreshes the rest on every answer (update), so a form
//     being typed into and the preview's video survive the refreshes.
//   * The preview plays from the server's HTTP port, which /api/server
//     names (addresses.http, .https): mpegts.js over ws-flv or HTTP-FLV, or
//     hls.js over LL-HLS. The players are loaded only when a preview starts.
//   * With --api-token the API answers 401 until the page sends the token:
//     the console then asks for it, keeps it in sessionStorage (this tab
//     only) and sends it as `Authorization: Bearer`.
//   * Stream keys and signatures never reach the page's text: the API shows
//     relay URLs redacted, publish and play URLs are built without a query,
//     and every URL or error text the API returns goes through redact().
//   * Everything the API returns is put into the page as text (textContent),
//     never as HTML.
'use strict';

(() => {
  const POLL_MS = 1500;
  /** How much chart history each stream keeps, in seconds. */
  const HISTORY_SECS = 300;
  /** The shortest time axis a chart has (a new stream's few samples). */
  const MIN_CHART_SECS = 60;
  /** The most connections the list shows (the filter finds the others). */
  const MAX_CLIENT_ROWS = 500;
  const TOKEN_KEY = 'sluice.apiToken';
  const COLORS = { bitrate: '#3b82f6', viewers: '#f59e0b' };

  // ---------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------

  const state = {
    server: null,
    streams: [],
    clients: null,
    relays: null,
    /** stream name -> [{t, bitrate, viewers}], oldest first. */
    history: new Map(),
    /** stream name -> {t, requests}: HLS requests at the previous answer. */
    hlsPrev: new Map(),
    /** stream name -> HLS requests per second, from the last two answers. */
    hlsRate: new Map(),
    /** {t, iterations: [...], bytesIn, bytesOut} at the previous answer. */
    serverPrev: null,
    /** Per worker loop iterations per second; bytes per second in and out. */
    rates: { iterations: [], bytesIn: null, bytesOut: null },
    lastOk: 0,
    error: null,
    timer: null,
    polling: false,
  };

  const $ = (selector, root = document) => root.querySelector(selector);

  // ---------------------------------------------------------------------------
  // Small helpers: elements, formatting, redaction
  // ---------------------------------------------------------------------------

  /** h('a', {href: '#'}, 'text', child...): an element; strings become text. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  /**
   * A URL or a text that may hold one, safe to show: no user:password@, no
   * query (where keys and signatures go), and any key=, sign=, token= value
   * left anywhere replaced by an ellipsis.
   */
  function redact(text) {
    if (text === null || text === undefined) return '';
    return String(text)
      .replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/gi, '$1')
      .replace(/([a-z][a-z0-9+.-]*:\/\/[^\s?#]*)[?#][^\s]*/gi, '$1')
      .replace(/\b(key|sign|sig|signature|token|secret|auth|password|passwd)=[^&\s]*/gi, '$1=…');
  }

  function fmtBitrate(bps) {
    if (bps === null || bps === undefined) return '—';
    if (bps < 1e6) return `${(bps / 1e3).toFixed(0)} kbit/s`;
    return `${(bps / 1e6).toFixed(bps < 1e7 ? 2 : 1)} Mbit/s`;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'kB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return `${i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
  }

  function fmtDuration(secs) {
    if (secs === null || secs === undefined || !isFinite(secs)) return '—';
    secs = Math.max(0, Math.floor(secs));
    const d = Math.floor(secs / 86400);
    const hr = Math.floor((secs % 86400) / 3600);
    const m = Math.floor((secs % 3600) / 60);
    const s = secs % 60;
    if (d) return `${d} d ${hr} h`;
    if (hr) return `${hr} h ${String(m).padStart(2, '0')} min`;
    if (m) return `${m} min ${String(s).padStart(2, '0')} s`;
    return `${s} s`;
  }

  function fmtCount(n) {
    return n === null || n === undefined ? '—' : Number(n).toLocaleString('en');
  }

  /** Seconds since a Unix time, on the server's clock (not the browser's). */
  function since(unix) {
    if (!unix || !state.server) return null;
    return state.server.time - unix;
  }

  // ---------------------------------------------------------------------------
  // The API
  // ---------------------------------------------------------------------------

  class NeedToken extends Error {}

  async function api(method, path, body) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(`api/${path}`, {
      method,
      headers,
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch (_) { /* not JSON */ }
    if (resp.status === 401) throw new NeedToken((data && data.error) || 'a bearer token is needed');
    if (!resp.ok) {
      throw new Error(`${method} /api/${path}: ${resp.status} ${(data && data.error) || resp.statusText}`);
    }
    return data;
  }

  /** What the current view needs besides /api/server and /api/streams. */
  function extraEndpoints() {
    switch (route().view) {
      case 'clients':
      case 'stream':
        return ['clients'];
      case 'relays':
        return ['relays'];
      default:
        return [];
    }
  }

  async function poll() {
    clearTimeout(state.timer);
    if (state.polling) return;
    state.polling = true;
    try {
      const paths = ['server', 'streams', ...extraEndpoints()];
      const answers = await Promise.all(paths.map((p) => api('GET', p)));
      const got = Object.fromEntries(paths.map((p, i) => [p, answers[i]]));
      absorb(got);
      state.lastOk = Date.now();
      state.error = null;
      showLogin(false);
      render();
    } catch (e) {
      if (e instanceof NeedToken) {
        state.polling = false;
        showLogin(true, sessionStorage.getItem(TOKEN_KEY) ? 'That token was refused.' : '');
        return; // polling resumes once a token is given
      }
      state.error = e.message || String(e);
      renderStatus();
    }
    state.polling = false;
    state.timer = setTimeout(poll, POLL_MS);
  }

  /** Takes one round of answers: keeps them, and the history and rates. */
  function absorb(got) {
    const server = got.server;
    const now = server.time;
    const prev = state.serverPrev;
    const iterations = (server.worker_load || []).map((w) => w.loop_iterations);
    if (prev && now > prev.t) {
      const dt = now - prev.t;
      state.rates.iterations = iterations.map((n, i) => (n - (prev.iterations[i] || 0)) / dt);
      state.rates.bytesIn = (server.bytes_in - prev.bytesIn) * 8 / dt;
      state.rates.bytesOut = (server.bytes_out - prev.bytesOut) * 8 / dt;
    }
    if (!prev || now > prev.t) {
      state.serverPrev = { t: now, iterations, bytesIn: server.bytes_in, bytesOut: server.bytes_out };
    }
    state.server = server;
    state.streams = (got.streams.streams || []).slice().sort((a, b) => a.name.localeCompare(b.name));
    if (got.clients) state.clients = got.clients.clients || [];
    if (got.relays) state.relays = got.relays.relays || [];

    const t = Date.now() / 1000;
    const seen = new Set();
    for (const s of state.streams) {
      seen.add(s.name);
      const points = state.history.get(s.name) || [];
      points.push({ t, bitrate: s.bitrate_in || 0, viewers: viewers(s) });
      while (points.length && points[0].t < t - HISTORY_SECS) points.shift();
      state.history.set(s.name, points);
      if (s.hls && s.hls.requests) {
        const r = s.hls.requests;
        const requests = r.playlists + r.parts + r.segments + r.inits;
        const before = state.hlsPrev.get(s.name);
        if (before && t > before.t) state.hlsRate.set(s.name, (requests - before.requests) / (t - before.t));
        state.hlsPrev.set(s.name, { t, requests });
      }
    }
    for (const name of [...state.history.keys()]) {
      if (!seen.has(name)) {
        state.history.delete(name);
        state.hlsPrev.delete(name);
        state.hlsRate.delete(name);
      }
    }
  }

  function viewers(s) {
    return (s.players && s.players.total) || 0;
  }

  // ---------------------------------------------------------------------------
  // Token
  // ---------------------------------------------------------------------------

  function showLogin(show, message) {
    $('#login').hidden = !show;
    $('#view').hidden = show;
    $('#login-error').textContent = message || '';
    $('#sign-out').hidden = show || !sessionStorage.getItem(TOKEN_KEY);
    if (show) {
      $('#status').textContent = 'signed out';
      $('#token').focus();
    }
  }

  $('#login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('#token').value.trim();
    $('#token').value = '';
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    poll();
  });

  $('#sign-out').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    preview.stop();
    poll();
  });

  // ---------------------------------------------------------------------------
  // Where URLs point
  // ---------------------------------------------------------------------------

  /**
   * {host, port} for a listen address as configured ("0.0.0.0:8080",
   * "[::]:8080", "10.0.0.5:1935"): an unspecified IP means "whatever host
   * this page was loaded from".
   */
  function endpoint(addr) {
    if (!addr) return null;
    const colon = addr.lastIndexOf(':');
    let host = addr.slice(0, colon);
    const port = Number(addr.slice(colon + 1));
    if (host === '0.0.0.0' || host === '[::]') host = location.hostname;
    return { host, port };
  }

  function base(scheme, addr, defaultPort) {
    const e = endpoint(addr);
    if (!e) return null;
    return `${scheme}://${e.host}${e.port === defaultPort ? '' : `:${e.port}`}`;
  }

  /** The URLs of stream `app/name` by what uses them; absent ones are null. */
  function urlsOf(s) {
    const a = (state.server && state.server.addresses) || {};
    const path = `${s.app}/${s.stream}`;
    const rtmp = base('rtmp', a.rtmp, 1935);
    const rtmps = base('rtmps', a.rtmps, 443);
    const http = base('http', a.http, 80);
    const https = base('https', a.https, 443);
    const ws = base('ws', a.http, 80);
    const wss = base('wss', a.https, 443);
    // A page loaded over HTTPS may not fetch http:// (mixed content).
    const secure = location.protocol === 'https:';
    const web = secure ? https : http || https;
    const websocket = secure ? wss : ws || wss;
    return {
      obsServer: rtmp && `${rtmp}/${s.app}`,
      obsKey: s.stream,
      ffmpeg: rtmp && `ffmpeg -re -i INPUT -c:v libx264 -g 60 -c:a aac -f flv ${rtmp}/${path}`,
      rtmp: rtmp && `${rtmp}/${path}`,
      rtmps: rtmps && `${rtmps}/${path}`,
      httpFlv: http && `${http}/${path}.flv`,
      wsFlv: ws && `${ws}/${path}.flv`,
      httpsFlv: https && `${https}/${path}.flv`,
      wssFlv: wss && `${wss}/${path}.flv`,
      hls: s.hls && web ? `${web}/${path}/index.m3u8` : null,
      hlsSecure: s.hls && https ? `${https}/${path}/index.m3u8` : null,
      // What the preview plays.
      play: {
        'ws-flv': websocket && `${websocket}/${path}.flv`,
        'http-flv': web && `${web}/${path}.flv`,
        'll-hls': s.hls && web ? `${web}/${path}/index.m3u8` : null,
      },
    };
  }

  // ---------------------------------------------------------------------------
  // Charts: a sparkline of bitrate and viewers over the last minutes
  // ---------------------------------------------------------------------------

  /**
   * Draws the history of one stream into `canvas` (already in the page, so
   * it has a size): bitrate and viewers, each scaled to its own maximum,
   * over HISTORY_SECS. data-points says how many samples it drew.
   */
  function drawChart(canvas, points) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 240;
    const height = canvas.clientHeight || 48;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext('2d');
    g.scale(ratio, ratio);
    g.clearRect(0, 0, width, height);
    canvas.dataset.points = String(points.length);
    if (points.length < 2) {
      g.fillStyle = '#888';
      g.font = '11px sans-serif';
      g.fillText('collecting…', 4, height / 2 + 4);
      return;
    }
    // The time axis spans what there is, from one minute up to HISTORY_SECS.
    const end = points[points.length - 1].t;
    const span = Math.min(HISTORY_SECS, Math.max(MIN_CHART_SECS, end - points[0].t));
    const start = end - span;
    const x = (t) => ((t - start) / span) * (width - 2) + 1;
    const line = (field, color) => {
      const max = Math.max(1, ...points.map((p) => p[field]));
      g.strokeStyle = color;
      g.lineWidth = 1.5;
      g.beginPath();
      points.forEach((p, i) => {
        const y = height - 2 - (p[field] / max) * (height - 6);
        if (i === 0) g.moveTo(x(p.t), y); else g.lineTo(x(p.t), y);
      });
      g.stroke();
    };
    line('viewers', COLORS.viewers);
    line('bitrate', COLORS.bitrate);
  }

  function chart(name, big) {
    const canvas = h('canvas', {
      class: big ? 'chart big' : 'chart',
      role: 'img',
      'aria-label': `bitrate and viewers of ${name}, last ${HISTORY_SECS / 60} minutes`,
      dataset: { chart: name },
    });
    return h('figure', { class: 'chart-box' }, canvas,
      h('figcaption', {},
        h('span', { class: 'key bitrate' }, 'bitrate'), ' ',
        h('span', { class: 'key viewers' }, 'viewers'),
        `, up to the last ${HISTORY_SECS / 60} min`));
  }

  function drawCharts(root) {
    for (const canvas of root.querySelectorAll('canvas[data-chart]')) {
      drawChart(canvas, state.history.get(canvas.dataset.chart) || []);
    }
  }

  // ---------------------------------------------------------------------------
  // Pieces shared by views
  // ---------------------------------------------------------------------------

  /**
   * When each armed confirm button (by its id) stops waiting for its second
   * click. Kept outside the buttons: a refresh re-renders them.
   */
  const armedUntil = new Map();
  const ARMED_MS = 4000;

  /**
   * A button that asks once more before it acts (for what cannot be
   * undone): the first click arms it for a few seconds, the second acts.
   * `id` names what it acts on, so a re-rendered button stays armed.
   */
  function confirmButton(id, label, armedLabel, action, cls) {
    const button = h('button', { type: 'button', class: cls || '' });
    const show = () => {
      const armed = (armedUntil.get(id) || 0) > Date.now();
      button.textContent = armed ? armedLabel : label;
      button.classList.toggle('armed', armed);
    };
    show();
    button.addEventListener('click', async () => {
      if ((armedUntil.get(id) || 0) <= Date.now()) {
        armedUntil.set(id, Date.now() + ARMED_MS);
        show();
        setTimeout(() => { if (button.isConnected) show(); }, ARMED_MS + 50);
        return;
      }
      armedUntil.delete(id);
      show();
      button.disabled = true;
      try { await action(); } finally { button.disabled = false; }
    });
    return button;
  }

  /** Runs an API action and reports its failure in the status line. */
  async function act(what, fn) {
    try {
      await fn();
      poll();
      return true;
    } catch (e) {
      if (e instanceof NeedToken) { showLogin(true, 'The token was refused.'); return false; }
      state.error = `${what}: ${e.message}`;
      renderStatus();
      return false;
    }
  }

  function kick(id) {
    return act(`disconnecting ${id}`, () => api('DELETE', `clients/${id}`));
  }

  function videoText(v) {
    if (!v) return '—';
    const size = v.width && v.height ? ` ${v.width}×${v.height}` : '';
    const fps = v.frame_rate ? ` @ ${Number(v.frame_rate).toFixed(v.frame_rate % 1 ? 2 : 0)} fps` : '';
    return `${v.codec || '?'}${size}${fps}`;
  }

  function audioText(a) {
    if (!a) return '—';
    const rate = a.sample_rate ? ` ${(a.sample_rate / 1000).toFixed(a.sample_rate % 1000 ? 1 : 0)} kHz` : '';
    const ch = a.channels === 1 ? ' mono' : a.channels === 2 ? ' stereo' : a.channels ? ` ${a.channels} ch` : '';
    return `${a.codec || '?'}${rate}${ch}`;
  }

  function viewersText(s) {
    const p = s.players || {};
    const parts = [`rtmp ${p.rtmp || 0}`, `http-flv ${p['http-flv'] || 0}`, `ws-flv ${p['ws-flv'] || 0}`];
    const hls = state.hlsRate.get(s.name);
    if (s.hls) {
      const v = typeof s.hls.viewers === 'number' ? `${s.hls.viewers} by address, ` : '';
      parts.push(`hls ${v}${hls === undefined ? '—' : hls.toFixed(1)} req/s`);
    }
    return `${viewers(s)} (${parts.join(' · ')})`;
  }

  function relaysText(s) {
    const r = s.relays || {};
    const parts = [];
    if (r.pull) parts.push(`pull from ${redact(r.pull.url)}: ${r.pull.state}`);
    for (const p of r.push || []) parts.push(`push to ${redact(p.url)}: ${p.state}`);
    return parts.length ? parts.join('; ') : 'none';
  }

  function publisherText(s) {
    const p = s.publisher;
    if (!p) return 'none';
    return `${p.address} (${p.protocol}, worker ${p.worker})`;
  }

  function recordingText(s) {
    const r = s.recording;
    if (r === undefined) return null; // a server without recording
    if (!r) return 'off';
    if (typeof r !== 'object') return String(r);
    return redact(r.state || (r.active ? 'recording' : 'off'));
  }

  /** The stream's figures as a definition list (cards and the stream page). */
  function facts(s) {
    const rows = [
      ['video', 'Video', videoText(s.video)],
      ['audio', 'Audio', audioText(s.audio)],
      ['bitrate', 'Bitrate in', fmtBitrate(s.bitrate_in)],
      ['bytes-in', 'Received', fmtBytes(s.bytes_in)],
      ['viewers', 'Viewers', viewersText(s)],
      ['uptime', 'Uptime', s.publisher ? fmtDuration(since(s.publisher.since)) : '—'],
      ['publisher', 'Publisher', publisherText(s)],
      ['relays', 'Relays', relaysText(s)],
    ];
    const recording = recordingText(s);
    if (recording !== null) rows.push(['recording', 'Recording', recording]);
    return h('dl', { class: 'facts' }, rows.map(([field, label, value]) => [
      h('dt', {}, label),
      h('dd', { dataset: { field } }, value),
    ]));
  }

  function badges(s) {
    return [
      s.live ? h('span', { class: 'badge live' }, 'live') : h('span', { class: 'badge' }, 'waiting'),
      s.recording && (s.recording.active || s.recording.state === 'recording')
        ? h('span', { class: 'badge rec' }, 'rec') : null,
    ];
  }

  function streamHref(s) {
    return `#/stream/${encodeURIComponent(s.app)}/${encodeURIComponent(s.stream)}`;
  }

  /** A table; on a narrow screen each row becomes a card (labels from data-label). */
  function table(columns, rows, cls) {
    return h('table', { class: `list ${cls || ''}` },
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows));
  }

  function cell(label, ...content) {
    return h('td', { 'data-label': label }, ...content);
  }

  // ---------------------------------------------------------------------------
  // Views
  // ---------------------------------------------------------------------------

  const streamsView = {
    mount(root) {
      this.list = h('div', { class: 'cards', id: 'streams' });
      root.append(h('h1', {}, 'Streams'), this.list);
    },
    update() {
      if (!state.streams.length) {
        const u = urlsOf({ app: 'live', stream: 'test', hls: null });
        this.list.replaceChildren(h('div', { class: 'card empty' },
          h('p', {}, 'No stream yet. Publish one with OBS (server ', h('code', {}, u.obsServer || 'rtmp://HOST/live'),
            ', stream key ', h('code', {}, 'test'), ') or ffmpeg:'),
          h('pre', {}, `ffmpeg -re -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine \\\n` +
            `  -c:v libx264 -preset veryfast -g 60 -c:a aac -f flv ${u.rtmp || 'rtmp://HOST/live/test'}`)));
        return;
      }
      this.list.replaceChildren(...state.streams.map((s) => h('article', { class: 'card stream', dataset: { stream: s.name } },
        h('header', {}, h('a', { class: 'name', href: streamHref(s) }, s.name), ' ', badges(s)),
        chart(s.name, false),
        facts(s))));
      drawCharts(this.list);
    },
  };

  const preview = {
    kind: null,
    url: null,
    player: null,
    hls: null,
    error: null,
    box: null,
    video: null,
    scripts: {},

    loadScript(src) {
      if (!this.scripts[src]) {
        this.scripts[src] = new Promise((resolve, reject) => {
          const s = h('script', { src });
          s.onload = resolve;
          s.onerror = () => reject(new Error(`could not load ${src}`));
          document.head.append(s);
        });
      }
      return this.scripts[src];
    },

    status(text, isError) {
      const line = this.box && $('#preview-status', this.box);
      if (line) {
        line.textContent = text;
        line.classList.toggle('error', !!isError);
      }
    },

    fail(message) {
      this.error = message;
      this.status(redact(message), true);
      console.error(`[sluice console] preview: ${redact(message)}`);
    },

    async start(kind, url) {
      this.stop();
      if (!url || !this.video) {
        this.status(kind === 'll-hls' ? 'This stream is not packaged as HLS.' : 'No HTTP address to play from.', true);
        return;
      }
      this.kind = kind;
      this.url = url;
      this.error = null;
      this.box.dataset.kind = kind;
      this.status(`connecting (${kind})…`);
      const video = this.video;
      try {
        if (kind === 'll-hls') {
          await this.loadScript('console/vendor/hls.min.js');
          if (this.kind !== kind || this.url !== url) return; // replaced meanwhile
          if (window.Hls && Hls.isSupported()) {
            // maxLiveSyncPlaybackRate: play up to 1.5x until hls.js is back
            // at its target latency (PART-HOLD-BACK) after a slow start or a
            // stall; at 1 (its default) it stays as far behind as it fell.
            const hls = new Hls({ lowLatencyMode: true, backBufferLength: 30, maxLiveSyncPlaybackRate: 1.5 });
            hls.on(Hls.Events.ERROR, (_, data) => {
              const text = `hls.js ${data.type} ${data.details}${data.error ? `: ${data.error.message}` : ''}`;
              if (data.fatal) this.fail(text); else console.warn(`[sluice console] preview: ${redact(text)}`);
            });
            hls.on(Hls.Events.MANIFEST_PARSED, () => this.play());
            hls.loadSource(url);
            hls.attachMedia(video);
            this.hls = hls;
          } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
            video.src = url; // Safari plays HLS itself
            this.play();
          } else {
            this.fail('this browser plays neither HLS nor Media Source Extensions');
          }
        } else {
          await this.loadScript('console/vendor/mpegts.js');
          if (this.kind !== kind || this.url !== url) return;
          if (!mpegts.getFeatureList().mseLivePlayback) {
            this.fail('this browser cannot play FLV (no Media Source Extensions): choose LL-HLS');
            return;
          }
          const player = mpegts.createPlayer({ type: 'flv', isLive: true, url },
            { enableStashBuffer: false, liveBufferLatencyChasing: true });
          player.on(mpegts.Events.ERROR, (type, detail, info) =>
            this.fail(`mpegts.js ${type} ${detail}${info && info.msg ? `: ${info.msg}` : ''}`));
          player.attachMediaElement(video);
          player.load();
          this.player = player;
          this.play();
        }
      } catch (e) {
        this.fail(e.message || String(e));
      }
    },

    play() {
      const started = this.video.play();
      if (started && started.catch) {
        started.catch((e) => {
          // Replaced by another preview meanwhile: not an error.
          if (e.name !== 'AbortError') this.fail(`play(): ${e.message}`);
        });
      }
    },

    stop() {
      if (this.player) {
        const p = this.player;
        this.player = null;
        try { p.pause(); p.unload(); p.detachMediaElement(); p.destroy(); } catch (_) { /* gone */ }
      }
      if (this.hls) {
        this.hls.destroy();
        this.hls = null;
      }
      if (this.video) {
        this.video.removeAttribute('src');
        this.video.load();
      }
      this.kind = null;
      this.url = null;
      if (this.box) delete this.box.dataset.kind;
      this.status('stopped');
    },

    /** The preview's box, with its player selector; `urls()` gives the play URLs. */
    mount(urls) {
      const select = h('select', { id: 'preview-kind', 'aria-label': 'preview protocol' },
        h('option', { value: 'ws-flv' }, 'ws-flv (mpegts.js)'),
        h('option', { value: 'http-flv' }, 'HTTP-FLV (mpegts.js)'),
        h('option', { value: 'll-hls' }, 'LL-HLS (hls.js)'));
      this.video = h('video', { muted: true, autoplay: true, playsinline: true, controls: true });
      this.video.muted = true;
      this.video.addEventListener('error', () => {
        const e = this.video.error;
        if (!this.kind || !e) return;
        // A player emptying the element as it lets go of it (between
        // previews) is not a playback error.
        if (/empty src/i.test(e.message || '')) return;
        this.fail(`<video> error ${e.code} ${e.message || ''}`);
      });
      this.video.addEventListener('playing', () => this.status(`playing (${this.kind})`));
      this.box = h('section', { id: 'preview', class: 'card preview' },
        h('h2', {}, 'Preview'),
        this.video,
        h('div', { class: 'controls' },
          select,
          h('button', { type: 'button', onclick: () => this.start(select.value, urls()[select.value]) }, 'Play'),
          h('button', { type: 'button', onclick: () => this.stop() }, 'Stop')),
        h('p', { id: 'preview-status', class: 'muted' }, ''));
      select.addEventListener('change', () => this.start(select.value, urls()[select.value]));
      return this.box;
    },

    unmount() {
      this.stop();
      this.box = null;
      this.video = null;
    },
  };

  const streamView = {
    mount(root, r) {
      this.key = r.key;
      this.started = false;
      this.head = h('header', { class: 'page-head' });
      this.body = h('div', { class: 'stream-page' });
      this.facts = h('div', { class: 'card' });
      this.urls = h('div', { class: 'card', id: 'urls' });
      this.tracks = h('div', { class: 'card', id: 'tracks' });
      this.players = h('div', { class: 'card', id: 'players' });
      const box = preview.mount(() => {
        const s = state.streams.find((x) => x.name === this.key);
        return s ? urlsOf(s).play : {};
      });
      this.body.append(box, this.facts, this.urls, this.tracks, this.players);
      root.append(h('p', {}, h('a', { href: '#/streams' }, '← all streams')), this.head, this.body);
    },
    update() {
      const s = state.streams.find((x) => x.name === this.key);
      if (!s) {
        this.head.replaceChildren(h('h1', {}, this.key), h('p', { class: 'muted' }, 'This stream is not live (no publisher, no waiting player).'));
        return;
      }
      this.head.replaceChildren(h('h1', {}, s.name, ' ', badges(s)),
        s.publisher ? confirmButton(`stop:${s.name}`, 'Stop the publisher', 'Disconnect the publisher?',
          () => act('stopping the publisher', () => api('DELETE', `streams/${s.name}`)), 'danger') : null);
      if (!this.started && s.live) {
        // Start the preview once, on the lowest-latency way this browser has.
        this.started = true;
        const u = urlsOf(s).play;
        const kind = (window.MediaSource || window.ManagedMediaSource) ? 'ws-flv' : 'll-hls';
        $('#preview-kind').value = kind;
        preview.start(kind, u[kind]);
      }
      this.facts.replaceChildren(h('h2', {}, 'Now'), chart(s.name, true), facts(s));
      drawCharts(this.facts);
      this.renderUrls(s);
      this.renderTracks(s);
      this.renderPlayers(s);
    },
    renderUrls(s) {
      const u = urlsOf(s);
      const rows = [
        ['obs-server', 'OBS: Server', u.obsServer],
        ['obs-key', 'OBS: Stream Key', u.obsKey],
        ['ffmpeg', 'ffmpeg (publish)', u.ffmpeg],
        ['rtmp', 'RTMP', u.rtmp],
        ['rtmps', 'RTMPS', u.rtmps],
        ['http-flv', 'HTTP-FLV', u.httpFlv],
        ['ws-flv', 'WebSocket-FLV', u.wsFlv],
        ['https-flv', 'HTTPS-FLV', u.httpsFlv],
        ['wss-flv', 'WSS-FLV', u.wssFlv],
        ['hls', 'HLS / LL-HLS', u.hls],
        ['hls-https', 'HLS over HTTPS', u.hlsSecure !== u.hls ? u.hlsSecure : null],
      ].filter(([, , url]) => url);
      this.urls.replaceChildren(h('h2', {}, 'URLs'),
        h('p', { class: 'muted' }, 'Where access control asks for a key or a signed URL, add it ',
          '(', h('code', {}, '?key=…'), ', ', h('code', {}, '?sign=…'), '): the console never shows them.'),
        h('table', { class: 'urls' }, h('tbody', {}, rows.map(([id, label, url]) =>
          h('tr', { dataset: { url: id } },
            h('th', { scope: 'row' }, label),
            h('td', {}, h('code', {}, redact(url))),
            h('td', {}, copyButton(url)))))));
    },
    renderTracks(s) {
      const tracks = (s.tracks || []).map((t) => h('tr', {},
        cell('Type', t.type), cell('Track', t.id), cell('Codec', t.codec || '?'), cell('FourCC', t.fourcc || '—')));
      const parts = [h('h2', {}, 'Tracks'),
        tracks.length ? table(['Type', 'Track', 'Codec', 'FourCC'], tracks) : h('p', { class: 'muted' }, 'none seen yet')];
      if (s.hls) {
        const renditions = (s.hls.renditions || []).map((r) => h('tr', {},
          cell('Rendition', r.id), cell('Codecs', r.codecs || '—'),
          cell('Size', r.width && r.height ? `${r.width}×${r.height}` : '—'),
          cell('Bandwidth', fmtBitrate(r.average_bandwidth || r.bandwidth)),
          cell('Frame rate', r.frame_rate ? Number(r.frame_rate).toFixed(2) : '—'),
          cell('Last part', r.last_segment === null || r.last_segment === undefined ? '—' : `${r.last_segment}.${r.last_part}`)));
        parts.push(h('h3', {}, 'HLS renditions'),
          renditions.length ? table(['Rendition', 'Codecs', 'Size', 'Bandwidth', 'Frame rate', 'Last part'], renditions)
            : h('p', { class: 'muted' }, 'none yet'));
        for (const skipped of s.hls.skipped_tracks || []) {
          parts.push(h('p', { class: 'muted' }, `track ${skipped.track} not packaged: ${redact(skipped.reason)}`));
        }
      }
      this.tracks.replaceChildren(...parts);
    },
    renderPlayers(s) {
      const mine = (state.clients || []).filter((c) => c.stream === s.name);
      this.players.replaceChildren(h('h2', {}, `Connections of this stream (${mine.length})`),
        mine.length ? clientsTable(mine) : h('p', { class: 'muted' }, 'none'));
    },
    unmount() {
      preview.unmount();
    },
  };

  function copyButton(text) {
    const button = h('button', { type: 'button', class: 'copy' }, 'copy');
    button.addEventListener('click', async () => {
      let ok = false;
      try {
        await navigator.clipboard.writeText(text);
        ok = true;
      } catch (_) {
        // No clipboard API (a page over plain HTTP from another host): copy
        // through a hidden text field instead.
        const area = h('textarea', { class: 'offscreen', readonly: true });
        area.value = text;
        document.body.append(area);
        area.select();
        try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
        area.remove();
      }
      button.textContent = ok ? 'copied' : 'copy failed';
      setTimeout(() => { button.textContent = 'copy'; }, 1500);
    });
    return button;
  }

  function clientsTable(clients) {
    const rows = clients.map((c) => h('tr', { dataset: { client: c.id } },
      cell('ID', c.id),
      cell('Protocol', c.protocol),
      cell('State', c.state),
      cell('Stream', c.stream ? redact(c.stream) : '—'),
      cell('Address', c.address),
      cell('In', fmtBytes(c.bytes_in)),
      cell('Out', fmtBytes(c.bytes_out)),
      cell('Duration', fmtDuration(since(c.since))),
      cell('Worker', c.worker),
      cell('', h('button', { type: 'button', class: 'kick', onclick: (e) => { e.target.disabled = true; kick(c.id); } }, 'kick'))));
    return table(['ID', 'Protocol', 'State', 'Stream', 'Address', 'In', 'Out', 'Duration', 'Worker', ''], rows, 'clients');
  }

  const clientsView = {
    mount(root) {
      this.filter = h('input', { type: 'search', id: 'client-filter', placeholder: 'filter: stream, address, state, protocol', 'aria-label': 'filter connections' });
      this.filter.addEventListener('input', () => this.update());
      this.count = h('p', { class: 'muted' });
      this.list = h('div', { id: 'clients' });
      root.append(h('h1', {}, 'Connections'), this.filter, this.count, this.list);
    },
    update() {
      const all = state.clients || [];
      const words = this.filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
      const shown = all.filter((c) => {
        const text = `${c.id} ${c.protocol} ${c.state} ${c.stream || ''} ${c.address}`.toLowerCase();
        return words.every((w) => text.includes(w));
      });
      this.count.textContent = shown.length > MAX_CLIENT_ROWS
        ? `${fmtCount(all.length)} connections; the first ${MAX_CLIENT_ROWS} of ${fmtCount(shown.length)} matching are shown`
        : `${fmtCount(all.length)} connections${words.length ? `, ${shown.length} matching` : ''}`;
      this.list.replaceChildren(clientsTable(shown.slice(0, MAX_CLIENT_ROWS)));
    },
  };

  const relaysView = {
    mount(root) {
      const type = h('select', { name: 'type', 'aria-label': 'relay type' },
        h('option', { value: 'push' }, 'push (send a stream out)'),
        h('option', { value: 'pull' }, 'pull (fetch from an origin)'));
      const scope = h('input', { name: 'scope', required: true, placeholder: 'live or live/cam', autocomplete: 'off', 'aria-label': 'application or stream' });
      const url = h('input', { name: 'url', required: true, placeholder: 'rtmp://host/app[/name]', autocomplete: 'off', spellcheck: 'false', 'aria-label': 'remote URL' });
      const insecure = h('input', { type: 'checkbox', name: 'insecure' });
      const always = h('input', { type: 'checkbox', name: 'static' });
      const message = h('p', { class: 'muted', role: 'status' });
      const form = h('form', { class: 'card relay-form', id: 'relay-form' },
        h('h2', {}, 'Add a relay'),
        h('div', { class: 'row' }, type, scope, url),
        h('div', { class: 'row' },
          h('label', {}, insecure, ' rtmps: skip certificate checks'),
          h('label', {}, always, ' pull: static (always pulled; needs APP/NAME)'),
          h('button', { type: 'submit' }, 'Add')),
        message);
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        const spec = { type: type.value, url: url.value.trim(), insecure: insecure.checked };
        const where = scope.value.trim();
        if (where.includes('/')) spec.stream = where; else spec.app = where;
        if (type.value === 'pull') spec.static = always.checked;
        try {
          const answer = await api('POST', 'relays', spec);
          url.value = ''; // it may hold a stream key
          message.textContent = `relay ${answer.id} added`;
          message.classList.remove('error');
          poll();
        } catch (e) {
          if (e instanceof NeedToken) { showLogin(true, 'The token was refused.'); return; }
          message.textContent = redact(e.message);
          message.classList.add('error');
        }
      });
      this.list = h('div', { id: 'relays' });
      root.append(h('h1', {}, 'Relays'), this.list, form);
    },
    update() {
      const rules = state.relays || [];
      if (!rules.length) {
        this.list.replaceChildren(h('p', { class: 'muted card' }, 'No relay rule. Pushes restream a stream to another server; pulls fetch one from an origin.'));
        return;
      }
      this.list.replaceChildren(...rules.map((r) => h('article', { class: 'card relay', dataset: { relay: r.id } },
        h('header', {},
          h('strong', {}, `${r.type} #${r.id}`), ' ',
          h('span', {}, r.stream ? `stream ${r.stream}` : `app ${r.app}`), ' → ',
          h('code', {}, redact(r.url)),
          h('span', { class: 'muted' }, ` (${r.source}${r.insecure ? ', insecure' : ''}${r.static ? ', static' : ''})`),
          confirmButton(`relay:${r.id}`, 'remove', 'remove it?', () => act(`removing relay ${r.id}`, () => api('DELETE', `relays/${r.id}`)), 'danger small')),
        (r.tasks || []).length
          ? table(['Stream', 'State', 'Worker', 'Reconnects', 'In', 'Out', 'For', 'Last error'], r.tasks.map((t) => h('tr', {},
            cell('Stream', t.stream),
            cell('State', h('span', { class: `badge state-${t.state}` }, t.state)),
            cell('Worker', t.worker),
            cell('Reconnects', t.reconnects),
            cell('In', fmtBytes(t.bytes_in)),
            cell('Out', fmtBytes(t.bytes_out)),
            cell('For', fmtDuration(since(t.since))),
            cell('Last error', t.last_error ? redact(t.last_error) : '—'))))
          : h('p', { class: 'muted' }, 'no task running'))));
    },
  };

  const serverView = {
    mount(root) {
      this.facts = h('div', { class: 'card', id: 'server' });
      this.workers = h('div', { class: 'card', id: 'workers' });
      this.drain = h('div', { class: 'card' },
        h('h2', {}, 'Drain'),
        h('p', {}, 'Shuts the server down gracefully, as SIGTERM does: publishers that can reconnect are asked to, the rest are closed once they leave or the drain timeout passes.'),
        confirmButton('drain', 'Drain and shut down', 'Really shut the server down?', () => act('draining', async () => {
          await api('POST', 'drain');
          state.error = 'draining: the server is shutting down';
        }), 'danger'));
      root.append(h('h1', {}, 'Server'), this.facts, this.workers, this.drain);
    },
    update() {
      const s = state.server;
      const c = s.connections || {};
      const a = s.addresses || {};
      const rows = [
        ['version', 'Version', s.version],
        ['uptime', 'Uptime', fmtDuration(s.uptime_secs)],
        ['workers', 'Workers', s.workers],
        ['streams', 'Streams', s.streams],
        ['connections', 'Connections', Object.entries(c).map(([k, v]) => `${k} ${v}`).join(' · ')],
        ['rate-in', 'In', `${fmtBitrate(state.rates.bytesIn)} (${fmtBytes(s.bytes_in)} in all)`],
        ['rate-out', 'Out', `${fmtBitrate(state.rates.bytesOut)} (${fmtBytes(s.bytes_out)} in all)`],
        ['dropped', 'Frames skipped for slow players', fmtCount(s.frames_dropped)],
        ['hls', 'HLS', s.hls ? 'on' : 'off'],
        ['addresses', 'Listening', Object.entries(a).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(' · ')],
      ];
      this.facts.replaceChildren(h('h2', {}, 'Sluice'), h('dl', { class: 'facts' }, rows.map(([field, label, value]) => [
        h('dt', {}, label), h('dd', { dataset: { field } }, value)])));
      const load = s.worker_load || [];
      this.workers.replaceChildren(h('h2', {}, 'Workers'),
        table(['Worker', 'Connections', 'Loop iterations/s', 'Iterations'], load.map((w, i) => h('tr', { dataset: { worker: w.worker } },
          cell('Worker', w.worker),
          cell('Connections', fmtCount(w.connections)),
          cell('Loop iterations/s', state.rates.iterations[i] === undefined ? '—' : state.rates.iterations[i].toFixed(0)),
          cell('Iterations', fmtCount(w.loop_iterations))))));
    },
  };

  const VIEWS = { streams: streamsView, stream: streamView, clients: clientsView, relays: relaysView, server: serverView };

  // ---------------------------------------------------------------------------
  // Routing and rendering
  // ---------------------------------------------------------------------------

  function route() {
    const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
    if (parts[0] === 'stream' && parts.length === 3) return { view: 'stream', key: `${parts[1]}/${parts[2]}` };
    if (VIEWS[parts[0]] && parts[0] !== 'stream') return { view: parts[0] };
    return { view: 'streams' };
  }

  let current = null;

  function mount() {
    if (current && current.view.unmount) current.view.unmount();
    const r = route();
    const view = VIEWS[r.view];
    const root = $('#view');
    root.replaceChildren();
    view.mount(root, r);
    current = { view, route: r };
    for (const a of document.querySelectorAll('#nav a')) {
      const here = a.dataset.view === r.view || (r.view === 'stream' && a.dataset.view === 'streams');
      if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    if (state.server) render();
    poll();
  }

  function render() {
    renderStatus();
    if (current && state.server) current.view.update();
  }

  function renderStatus() {
    const status = $('#status');
    if (state.error) {
      status.textContent = redact(state.error);
      status.className = 'status error';
    } else if (state.lastOk) {
      const s = state.server;
      status.textContent = `${s.streams} stream${s.streams === 1 ? '' : 's'} · updated ${new Date(state.lastOk).toLocaleTimeString()}`;
      status.className = 'status ok';
    }
  }

  window.addEventListener('hashchange', mount);
  window.addEventListener('resize', () => { if (current) drawCharts($('#view')); });

  // For a look from the browser's developer tools.
  window.sluiceConsole = { state, preview };

  mount();
})();
