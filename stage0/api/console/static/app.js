/* LogLine console: plain JavaScript, no build step, nothing loaded from elsewhere.
 *
 * Rules kept throughout: the API key lives in sessionStorage and travels only in the
 * Authorization header (never in a URL, never logged); everything from the server reaches the
 * DOM through text nodes or attributes (never innerHTML), and every character that is
 * invisible or changes the reading direction is shown as a visible \uXXXX escape (so a file
 * named `invoice\u202efdp.exe` never reads as `invoicexe.pdf`); an id is shown short and
 * offered for copying only when it is a well-formed UUID (or hash); a span is counted as the
 * platform's only when a platform key signed it, and anything else is marked with its author
 * and tenant. SSE is read with fetch() because EventSource cannot send headers.
 */
(() => {
  'use strict';

  const KEY_STORE = 'logline.apikey';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const MAX_ROWS = 500;
  const STALL_MS = 45000; // the server pings every 15 s: this much silence means a dead link
  const VIEWS = ['timeline', 'approvals', 'functions', 'executions', 'metrics', 'health',
    'trace', 'prompts', 'memory'];

  const state = {
    token: null,
    me: null,
    view: null,
    streams: [],
    timeline: { top: 0, next: null, filters: {}, stream: null, hash: '#timeline' },
    activity: null,
    functions: new Map(),
    executions: new Map(),
    pending: new Map(), // request id -> result element, for requests started here
    detail: null,
    types: new Set(),
    statuses: new Set(),
    owners: new Set(),
    trace: null, // the open trace view: { id, stream, loads, timer }
    approvals: new Map(), // proposal id -> { item, card, summary, form, ... } in the inbox
    proposal: null, // the open request detail: { id }
  };

  const $ = (id) => document.getElementById(id);

  // --- text as a person may read it --------------------------------------------------------
  /** Invisible and direction-changing characters: C0 and C1 controls, DEL, soft hyphen,
   * U+061C, U+180E, zero-width and directional marks, line/paragraph separators, bidi
   * embeddings, overrides and isolates, word joiners, BOM, interlinear annotations. The same
   * set as stage0/spans/display.py (a browser test compares them). */
  const INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]/;
  const INVISIBLE_ALL = new RegExp(INVISIBLE.source, 'g');
  const escapeChar = (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

  /** `text` with each invisible character written as \uXXXX (for attributes: titles). */
  function visible(text) {
    return String(text).replace(INVISIBLE_ALL, escapeChar);
  }

  /** `text` as DOM nodes: each invisible character becomes a marked, visible escape. In a
   * <pre>, line breaks and tabs are the layout and stay as they are. */
  function textNodes(text, layout) {
    const s = String(text);
    if (!INVISIBLE.test(s)) return [document.createTextNode(s)];
    const out = [];
    let last = 0;
    for (const m of s.matchAll(INVISIBLE_ALL)) {
      if (layout && (m[0] === '\n' || m[0] === '\t')) continue;
      if (m.index > last) out.push(document.createTextNode(s.slice(last, m.index)));
      const code = `U+${m[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`;
      const mark = document.createElement('span');
      mark.className = 'esc';
      mark.title = `${code}: an invisible or direction-changing character`;
      mark.textContent = escapeChar(m[0]);
      out.push(mark);
      last = m.index + 1;
    }
    if (last < s.length) out.push(document.createTextNode(s.slice(last)));
    return out;
  }

  function setText(el, text) {
    clear(el);
    append(el, [text]);
  }

  // --- DOM helpers (text only) -----------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'text') setText(el, v);
      else if (k === 'title' || k === 'aria-label') el.setAttribute(k, visible(v));
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function append(el, children) {
    const layout = el.tagName === 'PRE';
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      if (child instanceof Node) el.append(child);
      else el.append(...textNodes(child, layout));
    }
  }

  function clear(el) {
    while (el.firstChild) el.firstChild.remove();
  }

  // --- formatting ------------------------------------------------------------------------
  function utc(iso) {
    const t = new Date(iso);
    if (Number.isNaN(t.getTime())) return String(iso);
    return t.toISOString().replace('T', ' ').replace('Z', ' UTC');
  }

  function relative(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    const s = Math.round((Date.now() - t) / 1000);
    if (s < 5) return 'just now';
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    if (s < 86400 * 30) return `${Math.floor(s / 86400)} d ago`;
    return new Date(t).toISOString().slice(0, 10);
  }

  function timeEl(iso) {
    if (!iso) return h('span', { class: 'muted' }, '—');
    return h('time', { class: 'time', datetime: iso, title: utc(iso) }, relative(iso));
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return '—';
    if (ms < 10 && !Number.isInteger(ms)) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  }

  const TONES = {
    ok: ['complete', 'completed', 'ok', 'active', 'success', 'succeeded', 'done', 'issued',
      'verified', 'pass', 'approved', 'allow', 'ALLOW'],
    bad: ['error', 'failed', 'failure', 'denied', 'revoked', 'rejected', 'timeout', 'crashed',
      'over_quota', 'invalid', 'refused', 'plan_failed', 'interrupted', 'deny', 'DENY'],
    warn: ['running', 'claimed', 'slow', 'retrying', 'pending', 'archived', 'PENDING_APPROVAL'],
    info: ['scheduled', 'queued', 'new', 'open', 'planning'],
  };

  function tone(status) {
    for (const [name, list] of Object.entries(TONES)) if (list.includes(status)) return name;
    return 'neutral';
  }

  function pill(status) {
    if (!status) return h('span', { class: 'muted' }, '—');
    return h('span', { class: 'pill', 'data-tone': tone(status), 'data-status': status }, status);
  }

  function typeBadge(type) {
    return h('span', { class: 'type', 'data-type': type, title: type }, type);
  }

  function copyIcon() {
    return svg('svg', { viewBox: '0 0 16 16', 'aria-hidden': 'true', fill: 'none',
      stroke: 'currentColor', 'stroke-width': '1.5' },
    svg('rect', { x: '5.5', y: '5.5', width: '8', height: '8', rx: '1.5' }),
    svg('path', { d: 'M10.5 3.5v-1a1 1 0 0 0-1-1h-6a1 1 0 0 0-1 1v6a1 1 0 0 0 1 1h1' }));
  }

  // An id is shortened and offered for copying only when it has its expected shape: one
  // that does not (a trace id carrying `$(...)`) is shown whole, escaped, marked, and is
  // never put on the clipboard, where it could end up in a shell command.
  const SHAPES = {
    uuid: [/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i, 'a UUID'],
    hex: [/^[0-9a-f]{1,256}$/i, 'hexadecimal'],
    name: [/^[A-Za-z0-9._@:-]{1,200}$/, 'a plain name'],
  };
  const UNSAFE_SHOWN = 200; // characters of a malformed id shown before a visible cut

  function wellFormed(value, shape = 'uuid') {
    return typeof value === 'string' && SHAPES[shape][0].test(value);
  }

  function unsafeId(value, shape) {
    const s = String(value);
    const cut = s.length > UNSAFE_SHOWN;
    return h('span', { class: 'id id-unsafe', 'data-unsafe': 'true',
      title: `not ${SHAPES[shape][1]}: shown escaped and not copyable` },
    h('span', { class: 'id-text' }, cut ? s.slice(0, UNSAFE_SHOWN) : s),
    cut ? h('span', { class: 'muted small' }, ` … ${s.length - UNSAFE_SHOWN} more characters`)
      : null);
  }

  function idEl(value, { short = true, label = 'id', shape = 'uuid' } = {}) {
    if (value === null || value === undefined || value === '') {
      return h('span', { class: 'muted' }, '—');
    }
    if (!wellFormed(value, shape)) return unsafeId(value, shape);
    const text = short && value.length > 16 ? `${value.slice(0, 8)}…${value.slice(-4)}` : value;
    return h('span', { class: 'id' },
      h('span', { class: 'id-text', title: value }, text),
      h('button', { class: 'copy', type: 'button', title: `copy ${label}`,
        'aria-label': `copy ${label}`, 'data-copy': value,
        onclick: (ev) => { ev.stopPropagation(); copy(value); } }, copyIcon()));
  }

  async function copy(text) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
      } else {
        const area = h('textarea', { readonly: true });
        area.value = text;
        area.style.position = 'fixed';
        area.style.opacity = '0';
        document.body.append(area);
        area.select();
        document.execCommand('copy');
        area.remove();
      }
      toast('Copied to the clipboard');
    } catch (err) {
      toast('Could not copy: select the text instead');
    }
  }

  let toastTimer = null;
  function toast(message) {
    const el = $('toast');
    el.textContent = message;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 1800);
  }

  function refreshTimes() {
    for (const el of document.querySelectorAll('time.time[datetime]')) {
      el.textContent = relative(el.getAttribute('datetime'));
    }
  }

  // --- errors ----------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message, requestId) {
      super(message);
      this.status = status;
      this.code = code;
      this.requestId = requestId;
    }
  }

  async function errorFrom(res) {
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    const err = body && body.error ? body.error : {};
    return new ApiError(res.status, err.code || `HTTP_${res.status}`,
      err.message || res.statusText || 'the request failed',
      err.request_id || res.headers.get('X-Request-ID'));
  }

  function errorBox(err, context) {
    const code = err instanceof ApiError ? err.code : 'CONSOLE_ERROR';
    const box = h('div', { class: 'error-box', role: 'alert', 'data-code': code },
      h('button', { class: 'error-close', type: 'button', 'aria-label': 'dismiss',
        onclick: () => box.remove() }, '×'),
      context ? h('div', { class: 'small' }, context) : null,
      h('div', {}, h('span', { class: 'error-code' }, code), err.message || String(err)));
    if (err instanceof ApiError && err.requestId) {
      box.append(h('div', { class: 'error-meta' }, 'request id',
        idEl(err.requestId, { short: false, label: 'request id' })));
    }
    return box;
  }

  /** A view's flags: what it left out, and why (a marker, never a silent gap). */
  function flagList(flags) {
    return h('ul', { class: 'flag-list' }, flags.map((f) => h('li', { class: 'flag',
      'data-reason': f.reason, 'data-flag-id': f.id },
    h('span', { class: 'error-code mono' }, f.reason), ' ', idEl(f.id, { label: 'span id' }),
    f.detail ? h('span', { class: 'muted small flag-detail' }, ` ${f.detail}`) : null)));
  }

  function showFlags(box, flags, summary) {
    const list = Array.isArray(flags) ? flags : [];
    clear(box);
    box.hidden = list.length === 0;
    if (list.length) {
      box.append(h('div', { class: 'flags-head' }, h('span', { class: 'flag-mark' }, '⚑'),
        h('strong', {}, String(list.length)), ` ${summary}`), flagList(list));
    }
  }

  function showError(err, context) {
    if ((err && err.name === 'AbortError') || !state.me) return; // logged out meanwhile
    const list = $('errors');
    const box = errorBox(err, context);
    list.prepend(box);
    while (list.children.length > 3) list.lastChild.remove();
    setTimeout(() => box.remove(), 20000);
  }

  // --- API -------------------------------------------------------------------------------
  async function api(path, { method = 'GET', body, signal, text = false } = {}) {
    const headers = { Authorization: `Bearer ${state.token}`,
      Accept: text ? '*/*' : 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, { method, headers, signal, cache: 'no-store',
        credentials: 'omit', body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      throw new ApiError(0, 'NETWORK', 'could not reach the LogLine server', null);
    }
    if (!res.ok) {
      const err = await errorFrom(res);
      if (res.status === 401 && state.me) logout(err);
      throw err;
    }
    if (res.status === 204) return null;
    return text ? res.text() : res.json();
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== '' && v !== null && v !== undefined) q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  // --- SSE over fetch ----------------------------------------------------------------------
  /** Parses the text/event-stream format: lines end in CRLF, LF or CR; a blank line ends an
   * event; `:` starts a comment (the server's keep-alive pings). */
  class SseParser {
    constructor(onEvent, onComment) {
      this.onEvent = onEvent;
      this.onComment = onComment;
      this.buf = '';
      this.reset();
    }

    reset() {
      this.data = [];
      this.event = '';
      this.id = null;
    }

    push(text) {
      this.buf += text;
      let start = 0;
      for (let i = 0; i < this.buf.length; i++) {
        const c = this.buf[i];
        if (c !== '\n' && c !== '\r') continue;
        if (c === '\r' && i + 1 === this.buf.length) break; // a CRLF may be split: wait
        const line = this.buf.slice(start, i);
        if (c === '\r' && this.buf[i + 1] === '\n') i++;
        start = i + 1;
        this.line(line);
      }
      this.buf = this.buf.slice(start);
    }

    line(line) {
      if (line === '') {
        if (this.data.length) {
          this.onEvent({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
        }
        this.reset();
        return;
      }
      if (line[0] === ':') {
        this.onComment(line.slice(1));
        return;
      }
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.event = value;
      else if (field === 'id' && !value.includes('\0')) this.id = value;
    }
  }

  /** One live subscription to /api/timeline/stream. Starts after `since`, remembers the last
   * event id and reconnects with Last-Event-ID (exponential backoff with jitter). */
  class LiveStream {
    constructor(name, filters, onSpan) {
      this.name = name;
      this.filters = filters;
      this.onSpan = onSpan;
      this.lastId = null;
      this.attempt = 0;
      this.stopped = true;
      this.state = 'idle';
      this.ctrl = null;
      this.retryTimer = null;
      this.stallTimer = null;
    }

    start(since) {
      this.stopped = false;
      this.since = since;
      this.lastId = null;
      this.connect();
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.retryTimer);
      clearTimeout(this.stallTimer);
      if (this.ctrl) this.ctrl.abort();
      this.setState('idle');
    }

    setState(value, detail) {
      this.state = value;
      this.detail = detail;
      renderLive();
    }

    alive() {
      clearTimeout(this.stallTimer);
      const ctrl = this.ctrl;
      this.stallTimer = setTimeout(() => ctrl.abort(), STALL_MS);
    }

    async connect() {
      if (this.stopped) return;
      const ctrl = new AbortController();
      this.ctrl = ctrl;
      const headers = { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' };
      const params = { ...this.filters };
      if (this.lastId !== null) headers['Last-Event-ID'] = String(this.lastId);
      else if (this.since !== null && this.since !== undefined) params.since = this.since;
      this.setState('connecting');
      let opened = 0;
      let retryAfter = 0;
      try {
        const res = await fetch(`/api/timeline/stream${query(params)}`,
          { headers, signal: ctrl.signal, cache: 'no-store', credentials: 'omit' });
        if (!res.ok) {
          const err = await errorFrom(res);
          if (res.status === 401) {
            logout(err);
            return;
          }
          retryAfter = Number(res.headers.get('Retry-After') || 0) * 1000;
          throw err;
        }
        opened = Date.now();
        this.setState('live');
        this.alive();
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        const parser = new SseParser((ev) => this.dispatch(ev), () => { this.attempt = 0; });
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          this.alive();
          parser.push(decoder.decode(value, { stream: true }));
        }
        throw new Error('the server closed the stream');
      } catch (err) {
        clearTimeout(this.stallTimer);
        if (this.stopped) return;
        if (opened && Date.now() - opened > 10000) this.attempt = 0;
        const base = Math.min(15000, 1000 * 2 ** this.attempt);
        const delay = Math.max(retryAfter, Math.round(base * (0.75 + Math.random() * 0.5)));
        this.attempt = Math.min(this.attempt + 1, 6);
        this.setState('retrying', { delay, error: err });
        if (err instanceof ApiError && err.status !== 429 && this.attempt === 1) {
          showError(err, 'Live stream'); // once per outage, not on every retry
        }
        this.retryTimer = setTimeout(() => this.connect(), delay);
      }
    }

    dispatch(ev) {
      if (ev.id !== null && /^\d+$/.test(ev.id)) {
        const position = Number(ev.id);
        if (this.lastId !== null && position <= this.lastId) return; // already seen
        this.lastId = position;
      }
      this.attempt = 0;
      if (ev.event !== 'span') return;
      let span;
      try {
        span = JSON.parse(ev.data);
      } catch (err) {
        return;
      }
      try {
        this.onSpan(span);
      } catch (err) {
        showError(err, 'Rendering a live span');
      }
    }
  }

  function renderLive() {
    const streams = state.streams.filter((s) => !s.stopped);
    const el = $('live');
    const text = $('live-text');
    let value = 'idle';
    let label = 'offline';
    let title = 'not connected';
    if (streams.length) {
      const retrying = streams.find((s) => s.state === 'retrying');
      if (retrying) {
        value = 'retrying';
        const secs = Math.max(1, Math.round(retrying.detail.delay / 1000));
        label = `reconnecting in ${secs} s`;
        title = String(retrying.detail.error && retrying.detail.error.message);
      } else if (streams.some((s) => s.state === 'connecting')) {
        value = 'connecting';
        label = 'connecting…';
        title = 'opening the live stream';
      } else {
        value = 'live';
        label = 'live';
        title = 'receiving new spans as they are appended';
      }
    }
    el.dataset.state = value;
    text.textContent = label;
    el.title = title;
  }

  // --- identity ----------------------------------------------------------------------------
  /** Who this key is, as the server resolved it (GET /api/me). */
  async function whoami() {
    try {
      const me = await api('/api/me');
      return { user: me.user_id, tenant: me.tenant_id, roles: me.roles, keyId: me.key_id,
        platformKeys: new Set(me.platform_keys || []),
        platformKinds: new Set(me.platform_kinds || []) };
    } catch (err) {
      if (err.status === 401) throw err;
      return { user: '?', tenant: '?', roles: [], keyId: null, platformKeys: new Set(),
        platformKinds: new Set() };
    }
  }

  /** What a span is to the platform (as stage0/ledger/records.py decides it): `platform` (signed by
   * a platform key), `forged` (a platform kind signed by another key) or `tenant`. */
  function recordOf(span) {
    if (state.me && state.me.platformKeys.has(span.public_key)) return 'platform';
    if (state.me && state.me.platformKinds.has(span.entity_type)) return 'forged';
    return 'tenant';
  }

  /** A platform record of the caller's tenant: what the console may count as one. */
  function isOwnRecord(span) {
    return recordOf(span) === 'platform' && state.me && span.tenant_id === state.me.tenant;
  }

  /** Who wrote a span, when it is not the platform's record of your tenant: its owner (a
   * tenant's words, not the platform's), its tenant when another, or a forgery. */
  function authorBadge(span) {
    const record = recordOf(span);
    const other = state.me && span.tenant_id !== state.me.tenant;
    if (record === 'platform' && !other) return null;
    const system = record === 'platform' && span.tenant_id === 'system';
    const text = system ? 'system' : [record === 'forged' ? 'not signed by the platform'
      : record === 'tenant' ? `by ${span.owner_id}` : 'platform',
    other ? `tenant ${span.tenant_id}` : null].filter(Boolean).join(' · ');
    const why = { platform: system ? 'the platform\'s own (tenant system)'
      : 'signed by the platform, for another tenant',
      tenant: `written by ${span.owner_id} of tenant ${span.tenant_id}: not a platform record`,
      forged: `a span of kind ${span.entity_type} that no platform key signed: not a record`,
    }[record];
    return h('span', { class: 'author', 'data-record': record, 'data-tenant': span.tenant_id,
      'data-owner': span.owner_id, title: why }, text);
  }

  function can(role) {
    const roles = (state.me && state.me.roles) || [];
    return roles.includes(role) || roles.includes('admin');
  }

  // --- login / logout ------------------------------------------------------------------------
  async function login(token, { remember = true } = {}) {
    state.token = token;
    let tip;
    try {
      const first = await api('/api/timeline?limit=1');
      tip = first.items.length ? first.items[0].position : 0;
      state.me = await whoami();
    } catch (err) {
      state.token = null;
      state.me = null;
      sessionStorage.removeItem(KEY_STORE);
      throw err;
    }
    if (remember) sessionStorage.setItem(KEY_STORE, token);
    enterApp(tip);
  }

  function showLogin(err) {
    $('app').hidden = true;
    $('login').hidden = false;
    const box = $('login-error');
    clear(box);
    if (err) {
      box.append(h('span', { class: 'error-code' }, err.code || 'ERROR'), err.message);
      if (err.requestId) {
        box.append(h('div', { class: 'error-meta' }, 'request id',
          idEl(err.requestId, { short: false, label: 'request id' })));
      }
      box.dataset.code = err.code || 'ERROR';
      box.hidden = false;
    } else {
      box.hidden = true;
    }
    $('login-key').value = '';
    $('login-key').focus();
  }

  function logout(err) {
    for (const stream of state.streams) stream.stop();
    state.streams = [];
    state.activity = null;
    state.timeline.stream = null;
    state.token = null;
    state.me = null;
    state.functions.clear();
    state.executions.clear();
    stopFollowing();
    state.types.clear();
    state.statuses.clear();
    state.owners.clear();
    closeTrace();
    clearTimeout(healthTimer);
    state.timeline.hash = '#timeline';
    state.approvals.clear();
    clearTimeout(governanceTimer);
    closeProposal();
    sessionStorage.removeItem(KEY_STORE);
    showFilters({});
    closeDetail();
    for (const id of ['timeline-rows', 'function-rows', 'execution-rows', 'errors', 'entity-types',
      'statuses', 'owners', 'metrics-tiles', 'chart-status', 'chart-latency', 'metrics-head',
      'metrics-rows', 'approvals-list', 'approvals-answer', 'ask-log', 'approvals-flags',
      'executions-flags', 'detail-record', 'trace-rows', 'trace-summary', 'health-tiles',
      'verify-result', 'execute-result']) clear($(id));
    $('verify-result').hidden = true;
    $('health-note').hidden = true;
    $('approvals-answer').hidden = true;
    $('approvals-flags').hidden = true;
    $('executions-flags').hidden = true;
    $('ask-text').value = '';
    $('execute-panel').hidden = true;
    showLogin(err && err instanceof ApiError ? err : null);
  }

  function enterApp(tip) {
    $('login').hidden = true;
    $('app').hidden = false;
    setText($('who-user'), state.me.user);
    setText($('who-tenant'), state.me.tenant);
    const roles = $('who-roles');
    clear(roles);
    for (const role of state.me.roles) roles.append(h('span', { class: 'role' }, role));
    // A narrow window hides the labels and roles: they stay readable on hover.
    $('who').title = visible(`tenant ${state.me.tenant} · user ${state.me.user} · roles `
      + `${state.me.roles.join(', ') || 'none'}`);
    state.activity = new LiveStream('activity', {}, onActivity);
    state.streams = [state.activity];
    state.activity.start(tip);
    loadFunctions();
    loadExecutions();
    route();
  }

  // --- routing -----------------------------------------------------------------------------
  /** `#VIEW`, `#VIEW?QUERY` (a filtered timeline) or `#trace/ID`: every view can be linked. */
  function parseHash() {
    const raw = location.hash.replace(/^#/, '');
    const cut = raw.indexOf('?');
    const path = cut < 0 ? raw : raw.slice(0, cut);
    const params = new URLSearchParams(cut < 0 ? '' : raw.slice(cut + 1));
    const slash = path.indexOf('/');
    let arg = null;
    if (slash >= 0) {
      try {
        arg = decodeURIComponent(path.slice(slash + 1));
      } catch (err) {
        arg = null; // a malformed escape: no trace to show
      }
    }
    return { view: slash < 0 ? path : path.slice(0, slash), arg, params };
  }

  function route() {
    if (!state.me) return;
    const { view: wanted, arg, params } = parseHash();
    let view = VIEWS.includes(wanted) ? wanted : 'timeline';
    if (view === 'trace' && !arg) view = 'timeline';
    const first = state.view === null;
    const left = state.view;
    state.view = view;
    for (const section of document.querySelectorAll('section.view')) {
      section.hidden = section.dataset.view !== view;
    }
    for (const tab of document.querySelectorAll('.tab')) {
      tab.setAttribute('aria-selected', String(tab.dataset.view === view));
    }
    document.title = `${view[0].toUpperCase()}${view.slice(1)} · LogLine`;
    if (left === 'trace' && view !== 'trace') closeTrace();
    if (left === 'health' && view !== 'health') clearTimeout(healthTimer);
    if (view === 'timeline') {
      const filters = filtersFromParams(params);
      state.timeline.hash = location.hash || '#timeline';
      if (first || !state.timeline.stream || !sameFilters(filters, state.timeline.filters)) {
        showFilters(filters);
        loadTimeline(filters);
      }
    }
    if (view === 'trace') openTrace(arg);
    if (view === 'metrics') loadMetrics();
    if (view === 'approvals') loadApprovals();
    if (view === 'health') loadHealth();
    if (view === 'prompts') loadPrompts(arg);
    if (view === 'memory' && !$('memory-q').value.trim()) browseMemory();
  }

  // --- prompts: a page per family (#prompts/FAMILY) ---------------------------------------
  function percent(value) {
    return value === null || value === undefined ? '—' : `${Math.round(value * 100)} %`;
  }

  function decimal(value, digits = 2) {
    return value === null || value === undefined ? '—' : Number(value).toFixed(digits);
  }

  async function loadPrompts(family) {
    try {
      const all = await api('/api/prompts/variants');
      if (!state.me) return;
      const families = [...new Set(all.variants.map((v) => v.family)
        .filter((f) => typeof f === 'string'))].sort();
      const chosen = families.includes(family) ? family : (families[0] || null);
      const select = $('prompts-family');
      clear(select);
      for (const name of families) {
        const option = h('option', { value: name }, visible(name));
        if (name === chosen) option.selected = true;
        select.append(option);
      }
      $('prompts-family-name').textContent = chosen ? visible(chosen) : '';
      const variants = all.variants.filter((v) => v.family === chosen);
      clear($('prompt-variant-rows'));
      for (const v of variants) {
        $('prompt-variant-rows').append(h('tr', { 'data-variant-id': v.id },
          h('td', {}, h('span', { class: 'fn-name' }, visible(v.name || v.id)),
            v.tenant_id === 'system' ? h('span', { class: 'muted small' }, ' · system') : null),
          h('td', { class: 'num' }, String(v.evals)),
          h('td', { class: 'num', 'data-eval-pass-rate': v.eval_pass_rate ?? '' },
            percent(v.eval_pass_rate)),
          h('td', { class: 'num', 'data-bandit-share': v.bandit_share ?? '' },
            percent(v.bandit_share)),
          h('td', { class: 'num' }, String(v.runs)),
          h('td', { class: 'num' }, percent(v.error_rate)),
          h('td', { class: 'num' }, decimal(v.mean_confidence)),
          h('td', { class: 'num' }, duration(v.mean_latency_ms === null ? null
            : Math.round(v.mean_latency_ms))),
          h('td', {}, idEl(v.id, { label: 'variant id' }))));
      }
      $('prompt-variants-empty').hidden = variants.length > 0;
      const names = new Map(variants.map((v) => [v.id, v.name || v.id]));
      const runs = chosen ? await api(`/api/prompts/runs${query({ family: chosen, limit: 50 })}`)
        : { runs: [] };
      clear($('prompt-run-rows'));
      for (const r of runs.runs) {
        $('prompt-run-rows').append(h('tr', { class: 'clickable', 'data-run-id': r.id,
          onclick: () => openDetail(r.id) },
        h('td', {}, timeEl(r.at)),
        h('td', {}, visible(names.get(r.variant_id) || r.variant_id || '—')),
        h('td', {}, visible(r.model || '—')),
        h('td', { class: 'num', 'data-latency-ms': r.latency_ms ?? '' }, duration(r.latency_ms)),
        h('td', { class: 'num' }, String(r.tokens_in ?? '—')),
        h('td', { class: 'num' }, String(r.tokens_out ?? '—')),
        h('td', { class: 'num' }, decimal(r.confidence)),
        h('td', {}, pill(r.status), r.error ? h('span', { class: 'muted small' },
          ` ${visible(r.error)}`) : null),
        h('td', {}, idEl(r.id, { label: 'run id' }))));
      }
      $('prompt-runs-empty').hidden = runs.runs.length > 0;
    } catch (err) {
      showError(err, 'Loading prompts');
    }
  }

  // --- memory ------------------------------------------------------------------------------
  /** Search the caller's memories (GET /api/memory/search); each hit can be forgotten.
   * #memory-mode says when search is text-only; #memory-note what was last done. */
  async function searchMemory() {
    const q = $('memory-q').value.trim();
    if (!q) return browseMemory();
    const rows = $('memory-rows');
    const mode = $('memory-mode');
    state.memoryBrowsing = false;
    const seq = (state.memorySeq = (state.memorySeq || 0) + 1);
    $('memory-first-col').textContent = 'Score';
    $('memory-more').hidden = true;
    clear(rows);
    const scope = $('memory-scope').value;
    let found;
    try {
      found = await api(`/api/memory/search${query({ q, scope })}`);
    } catch (err) {
      showError(err, 'Searching memory');
      return;
    }
    if (seq !== state.memorySeq) return; // a later search or browse owns the table
    mode.textContent = found.note || '';
    mode.hidden = !found.note;
    if (!found.hits.length) {
      rows.append(h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'No memories found')));
      return;
    }
    for (const hit of found.hits) {
      const forget = h('button', { class: 'btn btn-ghost memory-forget', type: 'button',
        'data-span': hit.span_id }, 'Forget');
      forget.addEventListener('click', () => forgetMemory({ what: 'span', span_id: hit.span_id }));
      rows.append(h('tr', { 'data-span': hit.span_id },
        h('td', { class: 'mono' }, hit.score.toFixed(4)), h('td', {}, hit.scope),
        h('td', {}, hit.layer), h('td', { class: 'memory-preview' }, hit.preview),
        h('td', {}, hit.scope === 'session' || hit.scope === 'private' ? forget : null)));
    }
  }

  /** Browse the caller's memories newest first (GET /api/memory), by layer, a page at a
   * time (#memory-more asks for the next one with `before`). A memory the caller may not
   * read now has no preview. */
  async function browseMemory(more = false) {
    const rows = $('memory-rows');
    const moreButton = $('memory-more');
    const before = more ? state.memoryNext : null;
    if (!more) {
      clear(rows);
      $('memory-q').value = '';
    }
    state.memoryBrowsing = true;
    const seq = (state.memorySeq = (state.memorySeq || 0) + 1);
    $('memory-first-col').textContent = 'When';
    $('memory-mode').hidden = true;
    let found;
    try {
      found = await api(`/api/memory${query({ layer: $('memory-layer').value, limit: 50,
        before })}`);
    } catch (err) {
      showError(err, 'Browsing memory');
      return;
    }
    if (seq !== state.memorySeq) return; // a later search or browse owns the table
    state.memoryNext = found.next_before;
    moreButton.hidden = !found.next_before;
    if (!found.memories.length && !more) {
      rows.append(h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'No memories yet')));
      return;
    }
    for (const m of found.memories) {
      const forget = h('button', { class: 'btn btn-ghost memory-forget', type: 'button',
        'data-span': m.span_id }, 'Forget');
      forget.addEventListener('click', () => forgetMemory({ what: 'span', span_id: m.span_id }));
      const preview = m.preview === null
        ? h('td', { class: 'memory-preview muted' }, '(not readable now)')
        : h('td', { class: 'memory-preview' }, m.preview);
      rows.append(h('tr', { 'data-span': m.span_id },
        h('td', { class: 'mono', title: m.at }, m.at.replace('T', ' ').slice(0, 19)),
        h('td', {}, m.scope), h('td', {}, m.layer || ''), preview,
        h('td', {}, m.scope === 'session' || m.scope === 'private' ? forget : null)));
    }
  }

  async function forgetMemory(body) {
    const what = body.what === 'me' ? 'every memory of yours' : 'this memory';
    if (!window.confirm(`Forget ${what} for good? Its keys are destroyed.`)) return;
    try {
      const done = await api('/api/memory/forget', { method: 'POST', body });
      const note = $('memory-note');
      note.textContent = `Forgot ${done.forgotten} memor${done.forgotten === 1 ? 'y' : 'ies'}.`;
      note.hidden = false;
    } catch (err) {
      showError(err, 'Forgetting');
      return;
    }
    await (state.memoryBrowsing ? browseMemory() : searchMemory());
  }

  async function exportMemory() {
    let bundle;
    try {
      bundle = await api('/api/memory/export');
    } catch (err) {
      showError(err, 'Exporting memory');
      return;
    }
    const url = URL.createObjectURL(new Blob([JSON.stringify(bundle, null, 2)],
      { type: 'application/json' }));
    const link = h('a', { href: url, download: 'logline-memory.json' });
    document.body.append(link);
    link.click();
    link.remove();
    URL.revokeObjectURL(url);
  }

  // --- timeline ----------------------------------------------------------------------------
  function whatCell(span) {
    return h('div', { class: 'what' },
      authorBadge(span),
      h('span', { class: 'who-name' }, span.who),
      span.did ? h('span', { class: 'did' }, span.did) : null,
      h('span', { class: 'this', title: span.this }, span.this));
  }

  /** A trace id is linked only when it is a UUID or a plain name (what X-Request-ID allows):
   * anything else is shown escaped, not offered for copying and not put in a URL. */
  function traceLinkable(traceId) {
    return wellFormed(traceId) || wellFormed(traceId, 'name');
  }

  function traceHref(traceId) {
    return `#trace/${encodeURIComponent(traceId)}`;
  }

  function traceCell(traceId) {
    if (!traceId) return h('span', { class: 'muted' }, '—');
    if (!traceLinkable(traceId)) return unsafeId(traceId, 'uuid');
    return h('span', { class: 'id' },
      h('button', { class: 'link id-text trace-link', type: 'button',
        title: `open trace ${traceId}`, 'data-trace-id': traceId,
        onclick: (ev) => {
          ev.stopPropagation();
          location.hash = traceHref(traceId);
        } }, traceId.length > 16 ? `${traceId.slice(0, 8)}…${traceId.slice(-4)}` : traceId),
      wellFormed(traceId) ? h('button', { class: 'copy', type: 'button', title: 'copy trace id',
        'aria-label': 'copy trace id', 'data-copy': traceId,
        onclick: (ev) => { ev.stopPropagation(); copy(traceId); } },
      copyIcon()) : null);
  }

  function timelineRow(span, fresh) {
    remember(span);
    return h('tr', { class: `clickable${fresh ? ' fresh' : ''}`, 'data-span-id': span.id,
      'data-seq': span.seq, 'data-position': span.position, 'data-entity-type': span.entity_type,
      'data-status': span.status || '', 'data-owner': span.owner_id || '',
      'data-record': recordOf(span), 'data-tenant': span.tenant_id,
      onclick: () => openDetail(span.id, span.seq) },
    h('td', {}, timeEl(span.at)),
    h('td', {}, typeBadge(span.entity_type)),
    h('td', {}, whatCell(span)),
    h('td', {}, pill(span.status)),
    h('td', { class: 'col-trace' }, traceCell(span.trace_id)),
    h('td', { class: 'col-id' }, idEl(span.id, { label: 'span id' })));
  }

  /** What the filters' suggestion lists offer: kinds, statuses and users seen so far. */
  function remember(span) {
    rememberIn(state.types, 'entity-types', span.entity_type);
    rememberIn(state.statuses, 'statuses', span.status);
    rememberIn(state.owners, 'owners', span.owner_id);
  }

  function rememberIn(set, listId, value) {
    if (!value || set.has(value) || set.size >= 200) return;
    set.add(value);
    const list = $(listId);
    clear(list);
    for (const v of [...set].sort()) list.append(h('option', { value: v }));
  }

  // Filters: the URL holds them (#timeline?status=error&owner_id=bob), so a filtered
  // timeline can be linked; times are UTC, as the console shows them everywhere.
  const FILTERS = ['entity_type', 'status', 'owner_id', 'from', 'until', 'trace_id'];
  const FILTER_INPUTS = { entity_type: 'filter-entity', status: 'filter-status',
    owner_id: 'filter-owner', trace_id: 'filter-trace' };

  function filtersFromParams(params) {
    const out = {};
    for (const k of FILTERS) out[k] = (params.get(k) || '').trim();
    return out;
  }

  function sameFilters(a, b) {
    return FILTERS.every((k) => (a[k] || '') === (b[k] || ''));
  }

  /** `2026-11-25T12:00` (a datetime-local input, read as UTC) -> `2026-11-25T12:00:00Z`. */
  function utcFromInput(value) {
    if (!value) return '';
    const text = value.length === 16 ? `${value}:00` : value;
    return Number.isNaN(Date.parse(`${text}Z`)) ? null : `${text}Z`;
  }

  function inputFromUtc(iso) {
    const t = Date.parse(iso);
    return Number.isNaN(t) ? '' : new Date(t).toISOString().slice(0, 19);
  }

  function showFilters(filters) {
    for (const [k, id] of Object.entries(FILTER_INPUTS)) $(id).value = filters[k] || '';
    $('filter-from').value = inputFromUtc(filters.from);
    $('filter-until').value = inputFromUtc(filters.until);
    $('filter-range').value = filters.from || filters.until ? 'custom' : '';
    showTimeFields();
    $('filter-error').hidden = true;
  }

  function showTimeFields() {
    const shown = $('filter-range').value !== '';
    for (const el of document.querySelectorAll('.time-field')) el.hidden = !shown;
  }

  /** A preset fills From with the time that long ago (UTC) and clears Until. */
  function applyRange() {
    const value = $('filter-range').value;
    if (value === '') {
      $('filter-from').value = '';
      $('filter-until').value = '';
    } else if (value !== 'custom') {
      $('filter-from').value = new Date(Date.now() - Number(value) * 1000).toISOString()
        .slice(0, 19);
      $('filter-until').value = '';
    }
    showTimeFields();
    if (value === 'custom') $('filter-from').focus();
  }

  function filtersFromInputs() {
    const out = {};
    for (const [k, id] of Object.entries(FILTER_INPUTS)) out[k] = $(id).value.trim();
    out.from = utcFromInput($('filter-from').value);
    out.until = utcFromInput($('filter-until').value);
    const box = $('filter-error');
    let problem = null;
    if (out.from === null || out.until === null) problem = 'A time is not a valid date and time.';
    else if (out.from && out.until && Date.parse(out.from) >= Date.parse(out.until)) {
      problem = 'From must be before Until.';
    }
    box.textContent = problem || '';
    box.hidden = !problem;
    return problem ? null : out;
  }

  function timelineHash(filters) {
    const q = query(Object.fromEntries(FILTERS.map((k) => [k, filters[k]])));
    return `#timeline${q}`;
  }

  /** Whether a live span passes the filters the stream does not apply on the server. */
  function passesFilters(span, filters) {
    if (filters.status && span.status !== filters.status) return false;
    if (filters.owner_id && span.owner_id !== filters.owner_id) return false;
    const at = Date.parse(span.at);
    if (filters.from && !(at >= Date.parse(filters.from))) return false;
    if (filters.until && !(at < Date.parse(filters.until))) return false;
    return true;
  }

  function filtered(filters) {
    return FILTERS.some((k) => filters[k]);
  }

  async function loadTimeline(filters) {
    const tl = state.timeline;
    if (tl.stream) {
      tl.stream.stop();
      state.streams = state.streams.filter((s) => s !== tl.stream);
      tl.stream = null;
    }
    tl.filters = { ...filters };
    const rows = $('timeline-rows');
    clear(rows);
    $('timeline-empty').hidden = true;
    $('timeline-none').hidden = true;
    const seq = (tl.loads = (tl.loads || 0) + 1);
    let data;
    try {
      data = await api(`/api/timeline${query({ ...tl.filters, limit: 50 })}`);
    } catch (err) {
      if (seq === tl.loads) showError(err, 'Loading the timeline');
      return;
    }
    // Only the latest load fills the table (a filter applied from another view loads once
    // and the route change would load again: rows twice).
    if (!state.me || seq !== tl.loads) return;
    clear(rows);
    for (const span of data.items) rows.append(timelineRow(span, false));
    tl.top = data.items.length ? data.items[0].position : 0;
    tl.next = data.next_before;
    $('timeline-more').hidden = tl.next === null;
    showTimelineEmpty();
    // The stream filters by kind and trace on the server; the rest is checked on arrival.
    const stream = new LiveStream('timeline', { entity_type: tl.filters.entity_type,
      trace_id: tl.filters.trace_id }, onTimelineSpan);
    tl.stream = stream;
    state.streams.push(stream);
    stream.start(tl.top);
  }

  function showTimelineEmpty() {
    const none = $('timeline-rows').children.length === 0;
    const narrowed = filtered(state.timeline.filters);
    $('timeline-empty').hidden = !none || narrowed;
    $('timeline-none').hidden = !none || !narrowed;
  }

  async function loadOlder() {
    const tl = state.timeline;
    if (tl.next === null) return;
    try {
      const data = await api(`/api/timeline${query({ ...tl.filters, limit: 50, before: tl.next })}`);
      const rows = $('timeline-rows');
      for (const span of data.items) rows.append(timelineRow(span, false));
      tl.next = data.next_before;
      $('timeline-more').hidden = tl.next === null;
    } catch (err) {
      showError(err, 'Loading older spans');
    }
  }

  function onTimelineSpan(span) {
    const tl = state.timeline;
    if (span.position <= tl.top) return;
    tl.top = span.position;
    if (!passesFilters(span, tl.filters)) return;
    const rows = $('timeline-rows');
    rows.prepend(timelineRow(span, true));
    showTimelineEmpty();
    while (rows.children.length > MAX_ROWS) rows.lastChild.remove();
    if (state.detail && state.detail.id === span.id) openDetail(span.id, span.seq, true);
  }

  function applyFilters() {
    const filters = filtersFromInputs();
    if (!filters) return;
    const hash = timelineHash(filters);
    state.timeline.hash = hash;
    if (location.hash === hash && state.view === 'timeline') loadTimeline(filters);
    else location.hash = hash;
  }

  function clearFilters() {
    showFilters({});
    applyFilters();
  }

  // --- trace: why something happened ------------------------------------------------------
  // Every span of one trace id, as a tree: a span hangs under its parent_id when that span is
  // in the trace, else under the first of its related_to that is (an execution under its
  // request, a policy violation under the request it refused); the rest are roots. Each node
  // is an id's latest version; its duration is its duration_ms, or for a request the time
  // from scheduling to its execution (or to its last version: denied, failed).
  const TRACE_MAX = 2000;
  const BAR_W = 160;

  async function openTrace(traceId, refresh) {
    if (!refresh || !state.trace || state.trace.id !== traceId) {
      closeTrace();
      state.trace = { id: traceId, stream: null, loads: 0, timer: null };
      clear($('trace-rows'));
      setText($('trace-summary'), 'Loading…');
      $('trace-empty').hidden = true;
    }
    const token = state.trace;
    const seq = ++token.loads;
    const spans = [];
    let before = null;
    try {
      do {
        const data = await api(`/api/timeline${query({ trace_id: traceId, limit: 500, before })}`);
        spans.push(...data.items);
        before = data.next_before;
      } while (before !== null && spans.length < TRACE_MAX);
    } catch (err) {
      if (state.trace === token) showError(err, 'Loading the trace');
      return;
    }
    if (!state.me || state.trace !== token || seq !== token.loads) return;
    renderTrace(traceId, spans, before !== null);
    if (!token.stream) {
      const top = spans.reduce((m, s) => Math.max(m, s.position || 0), 0);
      token.stream = new LiveStream('trace', { trace_id: traceId }, () => scheduleTrace(token));
      state.streams.push(token.stream);
      token.stream.start(top);
    }
  }

  /** New spans of the open trace: redraw once a burst is over. */
  function scheduleTrace(token) {
    clearTimeout(token.timer);
    token.timer = setTimeout(() => {
      if (state.me && state.trace === token) openTrace(token.id, true);
    }, 250);
  }

  function closeTrace() {
    const token = state.trace;
    if (!token) return;
    clearTimeout(token.timer);
    if (token.stream) {
      token.stream.stop();
      state.streams = state.streams.filter((s) => s !== token.stream);
    }
    state.trace = null;
    renderLive();
  }

  /** The trace's spans (any order, every version) as nodes in a forest, roots first. */
  function traceTree(spans) {
    const nodes = new Map();
    for (const span of spans) {
      const node = nodes.get(span.id);
      if (!node) {
        nodes.set(span.id, { head: span, first: span, versions: 1, children: [], parent: null });
        continue;
      }
      node.versions += 1;
      if (span.seq > node.head.seq) node.head = span;
      if (span.seq < node.first.seq) node.first = span;
    }
    for (const node of nodes.values()) {
      const { head } = node;
      const related = Array.isArray(head.related_to) ? head.related_to : [];
      for (const [id, link] of [[head.parent_id, 'parent_id'], ...related.map((r) => [r, 'related_to'])]) {
        if (id && id !== head.id && nodes.has(id)) {
          node.parent = nodes.get(id);
          node.link = link;
          break;
        }
      }
    }
    for (const node of nodes.values()) { // a cycle (spans naming each other) is cut here
      const seen = new Set();
      let up = node.parent;
      while (up && up !== node && !seen.has(up)) { seen.add(up); up = up.parent; }
      if (up === node) node.parent = null;
    }
    const roots = [];
    for (const node of nodes.values()) (node.parent ? node.parent.children : roots).push(node);
    const byPosition = (a, b) => (a.first.position || 0) - (b.first.position || 0);
    for (const node of nodes.values()) node.children.sort(byPosition);
    roots.sort(byPosition);
    return { nodes, roots };
  }

  /** How long a node took, in ms, and what that time is. */
  function nodeTiming(node) {
    const { head, first } = node;
    if (typeof head.duration_ms === 'number') {
      return { ms: head.duration_ms, what: 'ran', start: Date.parse(first.at) };
    }
    const start = Date.parse(first.at);
    if (head.entity_type === 'request') {
      const run = node.children.find((c) => c.head.entity_type === 'execution');
      if (run) return { ms: Date.parse(run.first.at) - start, what: 'queued', start };
      if (head.status === 'scheduled') return { ms: null, what: 'waiting', start };
      return { ms: Date.parse(head.at) - start, what: `until ${head.status || 'the last version'}`,
        start };
    }
    if (node.versions > 1) return { ms: Date.parse(head.at) - start, what: 'first to last', start };
    return { ms: null, what: '', start };
  }

  const TIMING_TITLES = { ran: 'how long it ran (duration_ms)',
    queued: 'from scheduling the request to its execution',
    'first to last': 'from its first version to its latest' };

  function traceRows(roots) {
    const out = [];
    const walk = (node, depth) => {
      out.push({ node, depth });
      for (const child of node.children) walk(child, depth + 1);
    };
    for (const root of roots) walk(root, 0);
    return out;
  }

  function renderTrace(traceId, spans, truncated) {
    const { nodes, roots } = traceTree(spans);
    const rows = traceRows(roots);
    const timings = new Map(rows.map(({ node }) => [node, nodeTiming(node)]));
    const starts = [...timings.values()].map((t) => t.start).filter((t) => !Number.isNaN(t));
    const t0 = starts.length ? Math.min(...starts) : 0;
    let t1 = t0;
    for (const t of timings.values()) {
      if (!Number.isNaN(t.start)) t1 = Math.max(t1, t.start + (t.ms || 0));
    }
    for (const { node } of rows) t1 = Math.max(t1, Date.parse(node.head.at) || t0);
    const total = Math.max(1, t1 - t0);
    const body = $('trace-rows');
    clear(body);
    for (const { node, depth } of rows) {
      body.append(traceRow(node, depth, timings.get(node), t0, total));
    }
    $('trace-empty').hidden = nodes.size > 0;
    renderTraceSummary(traceId, nodes, roots, t1 - t0, truncated);
  }

  function traceRow(node, depth, timing, t0, total) {
    const { head } = node;
    const offset = Number.isNaN(timing.start) ? null : timing.start - t0;
    return h('tr', { class: `clickable trace-node depth-${Math.min(depth, 8)}`,
      'data-span-id': head.id, 'data-entity-type': head.entity_type, 'data-depth': depth,
      'data-parent-id': node.parent ? node.parent.head.id : '', 'data-link': node.link || '',
      'data-status': head.status || '', 'data-duration-ms': timing.ms ?? '',
      'data-record': recordOf(head), onclick: () => openDetail(head.id) },
    h('td', {}, h('div', { class: 'trace-what' },
      depth ? h('span', { class: 'tree-mark', 'aria-hidden': 'true' }, node.link === 'related_to' ? '↳' : '└') : null,
      typeBadge(head.entity_type), authorBadge(head),
      h('span', { class: 'this', title: head.this }, head.this),
      node.versions > 1 ? h('span', { class: 'muted small' }, ` v${head.seq}`) : null)),
    h('td', {}, pill(head.status), reasonOf(head)),
    h('td', { class: 'col-who' }, h('span', { class: 'trace-who',
      title: `${head.who}${head.owner_id ? ` (owner ${head.owner_id})` : ''}` }, head.who)),
    h('td', { class: 'num trace-duration', title: TIMING_TITLES[timing.what] || timing.what }, timing.ms === null ? (timing.what === 'waiting'
      ? h('span', { class: 'muted' }, 'waiting') : '—') : duration(timing.ms),
    timing.ms !== null && timing.what !== 'ran' ? h('div', { class: 'muted small' }, timing.what) : null),
    h('td', { class: 'num muted' }, offset === null ? '—' : `+${duration(offset)}`),
    h('td', { class: 'col-bar' }, timingBar(offset, timing.ms, total, head.status)),
    h('td', { class: 'col-id' }, idEl(head.id, { label: 'span id' })));
  }

  /** A reason code a span carries: a denied request's metadata.reason, an error's code. */
  function reasonOf(span) {
    const meta = span.metadata && typeof span.metadata === 'object' ? span.metadata : {};
    const err = span.error && typeof span.error === 'object' ? span.error : {};
    const code = meta.reason || err.code || null;
    return code ? h('span', { class: 'mono small reason-code trace-reason', 'data-reason': code },
      ` ${code}`) : null;
  }

  function timingBar(offset, ms, total, status) {
    const root = svg('svg', { class: 'bar-track', viewBox: `0 0 ${BAR_W} 12`, width: BAR_W,
      height: 12, 'aria-hidden': 'true' });
    root.append(svg('rect', { class: 'track', x: 0, y: 5, width: BAR_W, height: 2, rx: 1 }));
    if (offset === null) return root;
    const x = Math.min(BAR_W - 2, (offset / total) * BAR_W);
    const w = ms ? Math.max(2, Math.min(BAR_W - x, (ms / total) * BAR_W)) : 2;
    root.append(svg('rect', { class: `span-bar tone-${tone(status)}`, x, y: 1, width: w,
      height: 10, rx: 2 }));
    return root;
  }

  function renderTraceSummary(traceId, nodes, roots, spanMs, truncated) {
    const box = $('trace-summary');
    clear(box);
    const heads = [...nodes.values()].map((n) => n.head);
    const failed = heads.filter((s) => tone(s.status) === 'bad').length;
    const request = roots.map((n) => n.head).find((s) => s.entity_type === 'request');
    box.append(
      h('div', { class: 'trace-line' }, h('span', { class: 'trace-label' }, 'Trace'),
        idEl(traceId, { short: false, label: 'trace id', shape: wellFormed(traceId) ? 'uuid' : 'name' })),
      h('div', { class: 'trace-stats' },
        h('span', { id: 'trace-count', 'data-count': nodes.size }, `${nodes.size} span${nodes.size === 1 ? '' : 's'}`),
        h('span', {}, `over ${duration(Math.max(0, spanMs))}`),
        request ? h('span', {}, 'request ', pill(request.status)) : null,
        failed ? h('span', { class: 'trace-failed' }, `${failed} failed or denied`) : null,
        truncated ? h('span', { class: 'muted' }, `only the newest ${TRACE_MAX} are shown`) : null));
  }

  // --- activity (everything new: feeds functions, executions, pending requests) ---------------
  // The stream says *that* something changed; what the views count comes from the server's
  // views of platform records, never from a span taken at its word.
  function onActivity(span) {
    if (span.entity_type === 'function') scheduleLoad('functions', loadFunctions);
    else if (span.entity_type === 'execution') {
      scheduleLoad('executions', loadExecutions);
      if (state.view === 'metrics') scheduleMetrics();
    } else if (span.entity_type === 'request' && state.pending.has(span.id)) {
      followRequest(span.id); // look now instead of at the next poll
    }
    if ((span.entity_type === 'request' || span.entity_type === 'execution')
        && state.view === 'health') scheduleLoad('health', loadHealth);
    // A step of a governed request (not the HTTP edge's own denials, which are `api`'s).
    if (GOVERNANCE.has(span.entity_type) && span.who !== 'api') scheduleGovernance();
  }

  const loadTimers = {};
  function scheduleLoad(name, load) {
    clearTimeout(loadTimers[name]);
    loadTimers[name] = setTimeout(() => { if (state.me) load(true); }, 300);
  }

  // --- functions ---------------------------------------------------------------------------
  /** Your tenant's functions and the system's kernels (GET /api/functions decides which is
   * a kernel: tenant system, signed by the platform). */
  async function loadFunctions(live) {
    try {
      const data = await api('/api/functions?limit=500');
      if (!state.me) return;
      const before = new Set(state.functions.keys());
      state.functions.clear();
      clear($('function-rows'));
      for (const span of data.items.slice().reverse()) {
        upsertFunction(span, live === true && !before.has(span.id));
      }
      $('functions-empty').hidden = state.functions.size > 0;
    } catch (err) {
      showError(err, 'Loading functions');
    }
  }

  function isKernel(span) {
    return span.kernel === true;
  }

  function functionRow(span, fresh) {
    const runnable = can('writer');
    return h('tr', { class: `clickable${fresh ? ' fresh' : ''}`, 'data-span-id': span.id,
      'data-kernel': String(isKernel(span)), onclick: () => openDetail(span.id) },
    h('td', {},
      h('div', {}, h('span', { class: 'fn-name' }, span.name || span.this),
        isKernel(span) ? h('span', { class: 'kernel', title: 'a stage-0 kernel' }, 'kernel')
          : null),
      span.description ? h('div', { class: 'fn-desc', title: span.description },
        span.description) : null),
    h('td', {}, h('span', { class: 'mono' }, span.language || '—')),
    h('td', {}, pill(span.status)),
    h('td', {}, timeEl(span.at)),
    h('td', {}, idEl(span.id, { label: 'function id' })),
    h('td', { class: 'action' }, isKernel(span)
      ? h('span', { class: 'muted small', title: 'kernels run inside the workers' }, 'worker')
      : h('button', { class: 'btn btn-sm', type: 'button', 'data-action': 'execute',
        disabled: !runnable, title: runnable ? 'run this function' : 'needs the writer role',
        onclick: (ev) => { ev.stopPropagation(); openExecute(span); } }, 'Execute')));
  }

  /** Keep user functions first (newest first), then kernels. */
  function upsertFunction(span, fresh) {
    const old = state.functions.get(span.id);
    if (old && old.span.position > span.position) return;
    const row = functionRow(span, fresh);
    if (old) old.row.replaceWith(row);
    state.functions.set(span.id, { span, row });
    if (!old) {
      const rows = $('function-rows');
      if (isKernel(span)) rows.append(row);
      else rows.prepend(row);
    }
    $('functions-empty').hidden = state.functions.size > 0;
  }

  function openExecute(span) {
    stopFollowing();
    const panel = $('execute-panel');
    panel.hidden = false;
    panel.dataset.spanId = span.id;
    panel.parentElement.classList.add('with-panel');
    $('execute-name').textContent = span.name || span.this;
    clear($('execute-id'));
    $('execute-id').append(idEl(span.id, { short: false, label: 'function id' }));
    $('execute-input-error').hidden = true;
    clear($('execute-result'));
    $('execute-result').hidden = true;
    const input = $('execute-input');
    if (!input.value.trim()) input.value = '{}';
    input.focus();
  }

  function closeExecute() {
    stopFollowing();
    const panel = $('execute-panel');
    panel.hidden = true;
    panel.parentElement.classList.remove('with-panel');
  }

  async function runExecute() {
    const panel = $('execute-panel');
    const fieldError = $('execute-input-error');
    fieldError.hidden = true;
    let input;
    const raw = $('execute-input').value.trim();
    try {
      input = raw === '' ? null : JSON.parse(raw);
    } catch (err) {
      fieldError.textContent = `Input is not valid JSON: ${err.message}`;
      fieldError.hidden = false;
      return;
    }
    const body = { span_id: panel.dataset.spanId, input };
    const idem = $('execute-idem').value.trim();
    if (idem) body.idempotency_key = idem;
    const button = $('execute-run');
    button.disabled = true;
    try {
      const out = await api('/api/execute', { method: 'POST', body });
      showRequest(out);
    } catch (err) {
      showError(err, 'Execute');
    } finally {
      button.disabled = false;
    }
  }

  // After Run: the request is followed (the live stream says when it changed, a poll backs
  // it up) until it is finished, then its execution's output or error, how long it ran and
  // waited, or the reason it was refused. Only the platform's records are believed.
  const FOLLOW_FIRST_MS = 500;
  const FOLLOW_MAX_MS = 3000;
  const FOLLOW_FOR_MS = 15 * 60 * 1000;

  function showRequest(out) {
    stopFollowing();
    const result = $('execute-result');
    clear(result);
    const line = (label, ...value) => h('div', { class: 'result-line' }, h('span', {}, label),
      ...value);
    const p = {
      id: out.request_id, started: Date.now(), delay: FOLLOW_FIRST_MS, timer: null,
      busy: false, again: false, done: false,
      status: h('span', { id: 'execute-status' }, pill(out.status)),
      execution: h('span', { id: 'execute-execution', class: 'muted' }, 'waiting for a worker…'),
      waited: h('span', { id: 'execute-waited', class: 'muted' }, '—'),
      duration: h('span', { id: 'execute-duration', class: 'muted' }, '—'),
      outcome: h('div', { id: 'execute-outcome', class: 'execute-outcome', hidden: true }),
    };
    result.append(
      line('Request', h('span', { id: 'execute-request-id', 'data-request-id': out.request_id },
        idEl(out.request_id, { short: false, label: 'request id' }))),
      line('Status', p.status),
      line('Trace', traceCell(out.trace_id)),
      line('Execution', p.execution),
      line('Waited', p.waited),
      line('Ran', p.duration),
      p.outcome,
      h('div', { class: 'result-line result-links' }, h('span', {}, ''),
        h('button', { class: 'link', type: 'button',
          onclick: () => openDetail(out.request_id) }, 'Open the request'),
      out.trace_id && traceLinkable(out.trace_id) ? h('span', { class: 'muted' }, ' · ') : null,
      out.trace_id && traceLinkable(out.trace_id) ? h('button', { class: 'link', type: 'button',
        id: 'execute-trace', onclick: () => { location.hash = traceHref(out.trace_id); } },
        'Open the trace') : null));
    result.hidden = false;
    state.pending.set(out.request_id, p);
    p.timer = setTimeout(() => followRequest(out.request_id), FOLLOW_FIRST_MS);
  }

  function stopFollowing() {
    for (const p of state.pending.values()) {
      p.done = true;
      clearTimeout(p.timer);
    }
    state.pending.clear();
  }

  /** One look at the request (every version): done when it is finished and shown. */
  async function followRequest(id) {
    const p = state.pending.get(id);
    if (!p || p.done) return;
    if (p.busy) { p.again = true; return; }
    p.busy = true;
    clearTimeout(p.timer);
    try {
      const versions = (await api(`/api/spans/${encodeURIComponent(id)}?all=1`)).items;
      const head = versions[versions.length - 1];
      if (state.pending.get(id) === p && isOwnRecord(head) && head.entity_type === 'request') {
        await updatePending(p, versions[0], head);
      }
    } catch (err) {
      if (err.name === 'AbortError' || !state.me) return;
      if (err.status && err.status < 500 && err.status !== 429) {
        p.done = true;
        showError(err, 'Following the request');
      }
    } finally {
      p.busy = false;
    }
    if (p.done || state.pending.get(id) !== p) return;
    if (Date.now() - p.started > FOLLOW_FOR_MS) {
      setText(p.execution, 'still waiting: is a worker running (logline worker)? See Health.');
      return;
    }
    const wait = p.again ? 0 : p.delay;
    p.again = false;
    p.delay = Math.min(FOLLOW_MAX_MS, Math.round(p.delay * 1.5));
    p.timer = setTimeout(() => followRequest(id), wait);
  }

  async function updatePending(p, first, head) {
    clear(p.status);
    p.status.append(pill(head.status));
    if (head.status === 'scheduled') return;
    const meta = head.metadata && typeof head.metadata === 'object' ? head.metadata : {};
    if (meta.execution_id && wellFormed(meta.execution_id)) {
      const run = await api(`/api/spans/${encodeURIComponent(meta.execution_id)}`);
      if (!isOwnRecord(run) || run.entity_type !== 'execution'
          || !(run.related_to || []).includes(head.id)) {
        setText(p.execution, 'the execution this request names is not a platform record');
        p.done = true;
        return;
      }
      showExecution(p, first, run);
    } else if (head.status === 'denied') {
      const after = Date.parse(head.at) - Date.parse(first.at);
      if (!Number.isNaN(after)) setText(p.waited, `${duration(Math.max(0, after))} until refused`);
      showDenied(p, meta.reason || 'DENIED');
    } else {
      showOutcome(p, 'error', [errorLine(head.error, head.status)]);
      setText(p.execution, 'none: the request failed before it ran');
    }
    p.done = true;
  }

  function showExecution(p, first, run) {
    clear(p.execution);
    p.execution.classList.remove('muted');
    p.execution.append(h('button', { class: 'link mono', type: 'button',
      onclick: () => openDetail(run.id) }, run.id));
    const waited = Date.parse(run.at) - Date.parse(first.at);
    setText(p.waited, Number.isNaN(waited) ? '—' : `${duration(Math.max(0, waited))} in the queue`);
    p.waited.classList.remove('muted');
    setText(p.duration, duration(run.duration_ms));
    p.duration.dataset.durationMs = run.duration_ms ?? '';
    p.duration.classList.remove('muted');
    const printed = run.metadata && typeof run.metadata.stdout === 'string' && run.metadata.stdout
      ? [h('div', { class: 'small muted' }, 'Printed'), h('pre', { id: 'execute-stdout' }, run.metadata.stdout)]
      : [];
    if (run.status === 'complete') {
      showOutcome(p, 'complete', [h('div', { class: 'small muted' }, 'Output'),
        h('pre', { id: 'execute-output' }, JSON.stringify(run.output, null, 2) ?? 'null'),
        ...printed]);
    } else {
      showOutcome(p, 'error', [errorLine(run.error, run.status), ...printed]);
    }
  }

  function errorLine(error, status) {
    const err = error && typeof error === 'object' ? error : {};
    const code = err.code || String(status || 'error').toUpperCase();
    const message = err.message || (typeof error === 'string' ? error : '');
    return h('div', { id: 'execute-error', class: 'execute-error', 'data-code': code },
      h('span', { class: 'error-code mono' }, code), ' ', message);
  }

  const DENIALS = {
    QUOTA_EXCEEDED: 'Your tenant has used its daily quota of executions '
      + '(throttle.per_tenant_daily_exec_limit): it did not run. New requests are refused '
      + 'until 00:00 UTC; the Health view shows the count.',
  };

  function showDenied(p, reason) {
    setText(p.execution, 'none: the request was refused');
    showOutcome(p, 'denied', [h('div', { id: 'execute-reason', class: 'execute-reason',
      'data-reason': reason }, h('span', { class: 'error-code mono reason-code' }, reason),
    ' ', DENIALS[reason] || 'The platform refused to run this request.')]);
  }

  function showOutcome(p, kind, children) {
    clear(p.outcome);
    p.outcome.dataset.outcome = kind;
    append(p.outcome, children);
    p.outcome.hidden = false;
  }

  // --- executions --------------------------------------------------------------------------
  /** Your tenant's executions as the platform recorded them (GET /api/executions); the
   * look-alikes it left out are listed as flags. */
  async function loadExecutions(live) {
    const status = $('executions-status').value;
    try {
      const data = await api(`/api/executions${query({ status, limit: 200 })}`);
      if (!state.me) return;
      const before = new Set(state.executions.keys());
      state.executions.clear();
      clear($('execution-rows'));
      for (const span of data.items.slice().reverse()) {
        upsertExecution(span, live === true && !before.has(span.id));
      }
      $('executions-empty').hidden = state.executions.size > 0;
      showFlags($('executions-flags'), data.flags,
        'execution span(s) of your tenant not signed by the platform are not shown');
    } catch (err) {
      showError(err, 'Loading executions');
    }
  }

  function executionRow(span, fresh) {
    return h('tr', { class: `clickable${fresh ? ' fresh' : ''}`, 'data-span-id': span.id,
      'data-status': span.status || '', onclick: () => openDetail(span.id) },
    h('td', {}, timeEl(span.at)),
    h('td', {}, h('span', { class: 'fn-name' }, span.this),
      span.parent_id ? h('span', { class: 'muted small' }, ' · ', idEl(span.parent_id,
        { label: 'function id' })) : null),
    h('td', {}, resultPreview(span)),
    h('td', {}, pill(span.status)),
    h('td', { class: 'num', 'data-duration-ms': span.duration_ms ?? '' }, duration(span.duration_ms)),
    h('td', { class: 'col-trace' }, traceCell(span.trace_id)),
    h('td', {}, idEl(span.id, { label: 'execution id' })));
  }

  function resultPreview(span) {
    if (span.error !== null && span.error !== undefined) {
      const text = typeof span.error === 'object' && span.error.message ? span.error.message
        : JSON.stringify(span.error);
      return h('span', { class: 'preview preview-bad', title: text }, text);
    }
    if (span.output === null || span.output === undefined) return h('span', { class: 'muted' }, '—');
    const text = JSON.stringify(span.output);
    return h('span', { class: 'preview mono', title: text }, text);
  }

  function upsertExecution(span, fresh) {
    const wanted = $('executions-status').value;
    if (wanted && span.status !== wanted) return;
    const old = state.executions.get(span.id);
    if (old && old.span.position > span.position) return;
    const row = executionRow(span, fresh);
    const rows = $('execution-rows');
    if (old) old.row.remove();
    rows.prepend(row);
    state.executions.set(span.id, { span, row });
    while (rows.children.length > MAX_ROWS) {
      const last = rows.lastChild;
      state.executions.delete(last.dataset.spanId);
      last.remove();
    }
    $('executions-empty').hidden = true;
  }

  // --- governed requests: Ask, the approvals inbox, a request's detail ---------------------------
  /** Span types that are steps of a governed request: any of them may change the inbox. */
  const GOVERNANCE = new Set(['gate_decision', 'proposal', 'approval_request', 'approval', 'job',
    'job_claim', 'job_result']);
  const UNDECIDED = new Set(['planning', 'pending']); // the states an approver may answer
  /** Why delete_duplicates kept the other copy rather than this one (as the CLI says it). */
  const KEPT_BECAUSE = { name: 'its name is not copy-like', older: 'the older file',
    path: 'same age, first by path' };

  /** 1536 -> "1.5 KiB" (binary units; exact bytes go in a title). */
  function humanBytes(n) {
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return '—';
    if (n < 1024) return `${n} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(v < 100 ? 1 : 0)} ${units[i]}`;
  }

  function exactBytes(n) {
    return typeof n === 'number' ? `${n.toLocaleString('en-US')} bytes` : 'size unknown';
  }

  function qualified(item) {
    const contract = String(item.contract || '').split('@')[0];
    return contract ? `${contract}.${item.action}` : String(item.action);
  }

  function compact(value) {
    return JSON.stringify(value === undefined ? null : value);
  }

  function outcomePill(outcome) {
    return h('span', { class: 'pill', 'data-tone': tone(outcome), 'data-outcome': outcome },
      outcome);
  }

  function shortHash(value) {
    if (!value) return h('span', { class: 'muted' }, '—');
    if (!wellFormed(value, 'hex')) return unsafeId(value, 'hex');
    return h('span', { class: 'mono hash', title: value, 'data-hash': value },
      `${String(value).slice(0, 12)}…`);
  }

  function approvedCount(item) {
    return (item.approvals || []).filter((a) => a.status === 'approved').length;
  }

  let governanceTimer = null;
  /** Live: a governance span arrived on the activity stream; refresh what shows them. */
  function scheduleGovernance() {
    clearTimeout(governanceTimer);
    governanceTimer = setTimeout(() => {
      if (!state.me) return;
      if (state.view === 'approvals') loadApprovals();
      if (state.proposal) openProposal(state.proposal.id, true);
    }, 250);
  }

  // What will happen: each operation of the agent's plan, and the totals.
  function planView(plan, item) {
    if (!Array.isArray(plan)) {
      const why = {
        planning: 'The agent has not sent its plan yet: the request can be decided once it has.',
        plan_failed: 'The agent could not plan this request, or its plan could not be read: '
          + 'see its plan job in the detail.',
      }[item.state] || (item.destructive ? 'No plan.' : 'Not destructive: runs without a plan.');
      return h('p', { class: 'plan-none muted small' }, why);
    }
    const files = new Set(plan.map((op) => op.path)).size;
    const total = plan.reduce((sum, op) => sum + (Number.isInteger(op.size) ? op.size : 0), 0);
    const where = (op) => {
      if (op.to) return h('span', { class: 'mono', title: op.to }, op.to);
      if (op.op === 'trash') return h('span', { class: 'muted' }, "the root's trash (restorable)");
      return h('span', { class: 'muted' }, '—');
    };
    // A duplicate to be trashed: the file it duplicates, which is the copy that stays.
    const kept = (op) => {
      if (typeof op.duplicate_of !== 'string' || !op.duplicate_of) return null;
      const why = Object.hasOwn(KEPT_BECAUSE, op.kept_because) ? KEPT_BECAUSE[op.kept_because]
        : op.kept_because;
      return h('div', { class: 'plan-dup small muted' }, 'duplicates ',
        h('span', { class: 'mono plan-kept', title: op.duplicate_of }, op.duplicate_of),
        ', which is kept', typeof why === 'string' && why ? ` (${why})` : '');
    };
    return h('div', { class: 'plan' },
      h('table', { class: 'grid plan-table' },
        h('caption', { class: 'sr-only' }, 'What the agent will do'),
        h('thead', {}, h('tr', {}, h('th', { class: 'col-op', scope: 'col' }, 'Operation'),
          h('th', { scope: 'col' }, 'Path'), h('th', { scope: 'col' }, 'Destination'),
          h('th', { class: 'col-size', scope: 'col' }, 'Size'))),
        h('tbody', {}, plan.map((op) => h('tr', { class: 'plan-op', 'data-op': op.op,
          'data-path': op.path, 'data-size': Number.isInteger(op.size) ? op.size : '',
          'data-duplicate-of': typeof op.duplicate_of === 'string' ? op.duplicate_of : null },
        h('td', {}, h('span', { class: 'op', 'data-op': op.op }, op.op)),
        h('td', {}, h('span', { class: 'mono', title: op.path }, op.path), kept(op)),
        h('td', {}, where(op)),
        h('td', { class: 'num', title: exactBytes(op.size) }, humanBytes(op.size)))))),
      h('div', { class: 'plan-total', 'data-files': files, 'data-bytes': total },
        h('strong', {}, `${plan.length} operation${plan.length === 1 ? '' : 's'}`),
        ` on ${files} file${files === 1 ? '' : 's'} · ${humanBytes(total)}`,
        h('span', { class: 'muted' }, ` (${exactBytes(total)})`)));
  }

  function cardSummary(item) {
    const mine = state.me && item.requester === state.me.user;
    return h('div', { class: 'approval-summary' },
      h('div', { class: 'approval-head' },
        h('button', { class: 'link approval-action', type: 'button',
          title: 'open this request', onclick: () => openProposal(item.id) }, qualified(item)),
        pill(item.state),
        h('span', { class: 'approval-count', title: 'approvals given / needed' },
          `approvals ${approvedCount(item)}/${item.required}`)),
      h('div', { class: 'approval-meta' },
        h('span', { class: 'mono approval-args', title: compact(item.args) }, compact(item.args))),
      h('div', { class: 'approval-meta muted small' },
        'asked by ', h('span', { class: 'approval-requester' }, item.requester),
        mine ? ' (you: another approver must decide)' : '', ' · ', timeEl(item.at), ' · ',
        idEl(item.id, { label: 'request id' })),
      planView(item.plan, item),
      requestFlags(item));
  }

  function requestFlags(item) {
    if (!Array.isArray(item.flags) || !item.flags.length) return null;
    return h('div', { class: 'card-flags flags-box' },
      h('div', { class: 'flags-head' }, h('span', { class: 'flag-mark' }, '⚑'),
        'Left out of this request (not counted):'), flagList(item.flags));
  }

  /** A request the console cannot draw is shown as such, not left to break the inbox. */
  function brokenCard(item, err) {
    const card = h('article', { class: 'card approval-card broken',
      'data-proposal-id': String(item && item.id), 'data-state': 'unreadable' },
    h('div', { class: 'flags-box' }, h('div', { class: 'flags-head' },
      h('span', { class: 'flag-mark' }, '⚑'), 'This request cannot be shown: ',
      String(err && err.message)), idEl(item && item.id, { label: 'request id' })));
    return { item, card, summary: card, form: h('div'), broken: true };
  }

  function approvalCard(item) {
    const entry = { item };
    const reasonId = `reason-${item.id}`;
    entry.reason = h('input', { id: reasonId, class: 'reason', maxlength: 2000, required: true,
      spellcheck: 'true', placeholder: 'why (recorded with your decision)' });
    entry.fieldError = h('div', { class: 'field-error', hidden: true });
    entry.buttons = ['approve', 'reject'].map((decision) => h('button', {
      class: `btn btn-sm${decision === 'approve' ? ' btn-primary' : ''}`, type: 'button',
      'data-decision': decision, onclick: () => decide(entry, decision) },
    decision === 'approve' ? 'Approve' : 'Reject'));
    entry.form = h('div', { class: 'decide' },
      h('label', { for: reasonId }, 'Reason'),
      h('div', { class: 'decide-row' }, entry.reason, ...entry.buttons),
      entry.fieldError);
    entry.summary = cardSummary(item);
    entry.card = h('article', { class: 'card approval-card', 'data-proposal-id': item.id,
      'data-state': item.state }, entry.summary, entry.form);
    entry.form.hidden = !UNDECIDED.has(item.state);
    return entry;
  }

  /** Refresh a card in place: what the user is typing (the reason) is kept. */
  function updateCard(entry, item) {
    entry.item = item;
    const summary = cardSummary(item);
    entry.summary.replaceWith(summary);
    entry.summary = summary;
    entry.card.dataset.state = item.state;
    entry.form.hidden = !UNDECIDED.has(item.state);
  }

  let approvalsLoad = 0;
  async function loadApprovals() {
    const seq = ++approvalsLoad;
    const wanted = $('approvals-state').value;
    let data;
    try {
      data = await api(`/api/approvals${query({ state: wanted, limit: 100 })}`);
    } catch (err) {
      if (seq === approvalsLoad) showError(err, 'Loading approvals');
      return;
    }
    if (!state.me || seq !== approvalsLoad) return; // a newer load is on its way
    const list = $('approvals-list');
    const seen = new Set();
    data.items.forEach((item, i) => {
      seen.add(item.id);
      let entry = state.approvals.get(item.id);
      try {
        if (entry && !entry.broken) updateCard(entry, item);
        else {
          if (entry) entry.card.remove();
          entry = approvalCard(item);
          state.approvals.set(item.id, entry);
        }
      } catch (err) {
        if (entry) entry.card.remove();
        entry = brokenCard(item, err);
        state.approvals.set(item.id, entry);
      }
      // Move a card only when it is out of place (moving one would lose the typing focus).
      if (list.children[i] !== entry.card) list.insertBefore(entry.card, list.children[i] || null);
    });
    for (const [id, entry] of state.approvals) {
      if (seen.has(id)) continue;
      entry.card.remove();
      state.approvals.delete(id);
    }
    const empty = $('approvals-empty');
    empty.textContent = wanted ? `No request is ${wanted.replace(',', ' or ')}.`
      : 'No approval requests yet.';
    empty.hidden = data.items.length > 0;
    showFlags($('approvals-flags'), data.flags,
      'request(s) could not be read and are not shown');
  }

  /** The answer to the last decision taken here, or its refusal with the gate's code. */
  function showAnswer(item, decision, out, err) {
    const box = $('approvals-answer');
    clear(box);
    const verb = decision === 'approve' ? 'approval' : 'rejection';
    const open = h('button', { class: 'link', type: 'button',
      onclick: () => openProposal(item.id) }, 'Open the request');
    const what = h('div', { class: 'small muted' }, `Your ${verb} of `,
      h('span', { class: 'mono' }, qualified(item)), ' · ', open);
    if (err) {
      box.dataset.outcome = 'ERROR';
      box.dataset.code = err.code || 'ERROR';
      box.append(errorBox(err, `Your ${verb} was refused`), what);
    } else {
      box.dataset.outcome = out.outcome;
      box.dataset.code = out.reason;
      box.append(h('div', { class: 'answer-line' }, outcomePill(out.outcome),
        h('span', { class: 'mono reason-code' }, out.reason),
        h('span', { class: 'answer-message' }, out.message),
        out.required ? h('span', { class: 'muted small' },
          `approvals ${out.approvals}/${out.required}`) : null), what);
    }
    box.hidden = false;
  }

  async function decide(entry, decision) {
    const reason = entry.reason.value.trim();
    entry.fieldError.hidden = true;
    if (!reason) {
      entry.fieldError.textContent = 'A reason is required: it is recorded with your decision.';
      entry.fieldError.hidden = false;
      entry.reason.focus();
      return;
    }
    const { item } = entry;
    for (const b of entry.buttons) b.disabled = true;
    try {
      const out = await api(`/api/approvals/${encodeURIComponent(item.id)}`,
        { method: 'POST', body: { decision, reason } });
      entry.reason.value = '';
      showAnswer(item, decision, out, null);
    } catch (err) {
      if (err.name === 'AbortError' || !state.me) return;
      showAnswer(item, decision, null, err);
    } finally {
      for (const b of entry.buttons) b.disabled = false;
    }
  }

  // Ask: a sentence, what the server understood, and the gate's decision.
  async function ask() {
    const input = $('ask-text');
    const fieldError = $('ask-error');
    const text = input.value.trim();
    fieldError.hidden = true;
    if (!text) {
      fieldError.textContent = 'Type what you want done, e.g. "delete duplicates in photos/".';
      fieldError.hidden = false;
      input.focus();
      return;
    }
    const log = $('ask-log');
    const answer = h('div', { class: 'ask-a', 'data-state': 'waiting' }, 'asking the gate…');
    const turn = h('li', { class: 'ask-turn' },
      h('div', { class: 'ask-q' }, h('span', { class: 'ask-who' }, state.me.user), text), answer);
    log.append(turn);
    while (log.children.length > 20) log.firstChild.remove();
    const button = $('ask-send');
    button.disabled = true;
    try {
      const out = await api('/api/intents', { method: 'POST', body: { text } });
      input.value = '';
      renderAsked(answer, out, null);
    } catch (err) {
      if (err.name === 'AbortError' || !state.me) return;
      renderAsked(answer, null, err);
    } finally {
      button.disabled = false;
      turn.scrollIntoView({ block: 'nearest' });
    }
  }

  function renderAsked(el, out, err) {
    clear(el);
    if (err && /^G_/.test(err.code || '')) {
      // The sentence was understood and the gate said no: a decision, with its reason code.
      el.dataset.state = 'denied';
      el.append(h('div', { class: 'ask-line ask-decision', 'data-outcome': 'DENY',
        'data-reason': err.code },
      h('span', { class: 'ask-label' }, 'Decision'), outcomePill('DENY'),
      h('span', { class: 'mono reason-code' }, err.code),
      h('span', { class: 'answer-message' }, err.message)));
      return;
    }
    if (err) {
      el.dataset.state = 'error';
      el.append(errorBox(err, err.code === 'INTENT_NOT_UNDERSTOOD'
        ? 'Not understood' : 'The request failed'));
      return;
    }
    el.dataset.state = 'answered';
    if (out.proposal_id) el.dataset.proposalId = out.proposal_id;
    const parsed = out.parsed || {};
    el.append(
      h('div', { class: 'ask-line ask-parsed', 'data-action': parsed.action },
        h('span', { class: 'ask-label' }, 'Understood'),
        h('span', { class: 'mono' }, parsed.action),
        h('span', { class: 'mono ask-args' }, compact(parsed.args))),
      h('div', { class: 'ask-line ask-decision', 'data-outcome': out.outcome,
        'data-reason': out.reason },
      h('span', { class: 'ask-label' }, 'Decision'), outcomePill(out.outcome),
      h('span', { class: 'mono reason-code' }, out.reason),
      h('span', { class: 'answer-message' }, out.message)),
      out.proposal_id ? h('div', { class: 'ask-line' }, h('span', { class: 'ask-label' }, ''),
        h('button', { class: 'link', type: 'button',
          onclick: () => openProposal(out.proposal_id) }, 'Open the request'),
        out.outcome === 'PENDING_APPROVAL' ? h('span', { class: 'muted small' },
          ' · it reaches the approvers once the agent has planned it') : null) : null);
  }

  // A request's detail: state, plan, approvals, jobs and results, its audit trail.
  async function openProposal(id, refresh) {
    if (!refresh) state.proposal = { id };
    else if (!state.proposal || state.proposal.id !== id) return;
    const token = state.proposal;
    $('proposal').hidden = false;
    $('drawer-backdrop').hidden = false;
    $('proposal').dataset.proposalId = id;
    const body = $('proposal-body');
    if (!refresh) {
      $('proposal-title').textContent = 'Loading…';
      clear($('proposal-kicker'));
      clear($('proposal-id'));
      clear(body);
    }
    let p;
    try {
      p = await api(`/api/proposals/${encodeURIComponent(id)}`);
    } catch (err) {
      if (state.proposal !== token) return;
      if (refresh) { showError(err, 'Refreshing the request'); return; }
      $('proposal-title').textContent = 'Not available';
      body.append(errorBox(err));
      return;
    }
    if (state.proposal !== token) return;
    const scroll = body.scrollTop;
    try {
      renderProposal(p);
    } catch (err) {
      clear(body);
      body.append(errorBox(new ApiError(0, 'CONSOLE_RENDER', `this request cannot be shown: ${
        err.message}`, null)));
    }
    body.scrollTop = scroll;
  }

  function closeProposal() {
    state.proposal = null;
    $('proposal').hidden = true;
    $('drawer-backdrop').hidden = !state.detail;
  }

  function detailSection(title, ...children) {
    return h('section', { class: 'detail-section' }, h('h3', {}, title), ...children);
  }

  function renderProposal(p) {
    const kicker = $('proposal-kicker');
    clear(kicker);
    kicker.append(h('span', { id: 'proposal-state', 'data-state': p.state }, pill(p.state)),
      h('span', { class: 'muted small' }, p.contract));
    setText($('proposal-title'), qualified(p));
    clear($('proposal-id'));
    $('proposal-id').append(idEl(p.id, { short: false, label: 'request id' }));
    const body = $('proposal-body');
    clear(body);
    const field = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
    body.append(detailSection('Request', h('dl', { class: 'fields' },
      field('requester', p.requester),
      field('asked', [timeEl(p.at), h('span', { class: 'muted small' }, `  ${utc(p.at)}`)]),
      field('args', h('pre', {}, JSON.stringify(p.args, null, 2))),
      field('destructive', p.destructive ? 'yes: needs approval' : 'no'),
      field('approvals', `${approvedCount(p)} of ${p.required} needed`),
      field('trace', p.trace_id ? idEl(p.trace_id, { short: false, label: 'trace id' }) : '—'))));
    if (p.destructive) body.append(detailSection('What will happen', planView(p.plan, p)));
    body.append(detailSection('Approvals', p.approvals.length
      ? h('ol', { class: 'decisions', id: 'proposal-approvals' }, p.approvals.map((a) =>
        h('li', { class: 'decision', 'data-approver': a.approver, 'data-status': a.status },
          h('div', { class: 'decision-head' }, h('strong', {}, a.approver), pill(a.status),
            timeEl(a.at)),
          h('div', { class: 'decision-reason' }, a.reason || ''))))
      : h('p', { class: 'muted small' }, 'None yet.')));
    if (Array.isArray(p.flags) && p.flags.length) {
      body.append(detailSection('Not counted', h('div', { class: 'flags-box',
        id: 'proposal-flags' }, h('p', { class: 'small' }, 'These spans claim to be part of '
        + 'this request but are not the platform\'s records, or could not be read:'),
      flagList(p.flags))));
    }
    const kinds = Object.keys(p.jobs || {}).sort((a, b) => (a === 'plan' ? -1 : b === 'plan' ? 1 : 0));
    body.append(detailSection('Jobs', kinds.length ? kinds.map((kind) => jobView(p.jobs[kind]))
      : h('p', { class: 'muted small' }, 'No job yet.')));
    const trace = p.trace_id;
    body.append(detailSection('Audit trail', trace ? h('div', { class: 'row' },
      traceLinkable(trace) ? h('button', { class: 'btn btn-sm', type: 'button', id: 'proposal-trace',
        onclick: () => { closeProposal(); location.hash = traceHref(trace); } }, 'Open the trace')
        : null,
      h('button', { class: 'btn btn-sm', type: 'button', id: 'proposal-trail',
        onclick: () => showTrail(trace) }, 'Show in the timeline'),
      h('button', { class: 'btn btn-sm', type: 'button', id: 'proposal-csv',
        onclick: () => downloadTrail(trace, 'csv') }, 'Download CSV'),
      h('button', { class: 'btn btn-sm', type: 'button', id: 'proposal-jsonl',
        onclick: () => downloadTrail(trace, 'jsonl') }, 'Download JSON lines'))
      : h('p', { class: 'muted small' }, 'This request has no trace id.'),
    h('p', { class: 'muted small' }, 'The JSON lines verify offline: ',
      h('code', {}, 'logline verify --export FILE'), '.')));
  }

  function jobView(job) {
    const result = job.result;
    return h('div', { class: 'job', 'data-kind': job.kind, 'data-state': job.state },
      h('div', { class: 'job-head' }, h('strong', {}, job.kind === 'plan' ? 'Plan' : 'Execute'),
        pill(job.state), job.agent ? h('span', { class: 'muted small' }, `agent ${job.agent}`)
          : null, idEl(job.id, { label: 'job id' })),
      result ? resultView(job.kind, result)
        : h('p', { class: 'muted small' }, job.state === 'queued'
          ? 'Waiting for an agent to claim it.' : 'The agent is working on it.'));
  }

  function resultView(kind, result) {
    const out = result.output && typeof result.output === 'object' ? result.output : {};
    if (Array.isArray(out.results)) {
      return h('table', { class: 'grid results-table' },
        h('caption', { class: 'sr-only' }, 'Each file: what the agent did'),
        h('thead', {}, h('tr', {}, h('th', { class: 'col-op', scope: 'col' }, 'Operation'),
          h('th', { scope: 'col' }, 'Path'), h('th', { scope: 'col' }, 'Now at'),
          h('th', { class: 'col-state', scope: 'col' }, 'Result'),
          h('th', { class: 'col-hash', scope: 'col' }, 'BLAKE3 before'),
          h('th', { class: 'col-hash', scope: 'col' }, 'BLAKE3 after'))),
        h('tbody', {}, out.results.map((r) => (!r || typeof r !== 'object'
          ? h('tr', { class: 'result-op result-bad' }, h('td', { colspan: 6 },
            h('span', { class: 'error-code mono' }, 'RECORD_MALFORMED'), ' not a result: ',
            h('span', { class: 'mono' }, compact(r))))
          : h('tr', { class: 'result-op', 'data-path': r.path, 'data-status': r.status },
        h('td', {}, h('span', { class: 'op', 'data-op': r.op }, r.op)),
        h('td', {}, h('span', { class: 'mono', title: r.path }, r.path)),
        h('td', {}, r.to ? h('span', { class: 'mono', title: r.to }, r.to) : '—'),
        h('td', { title: r.message || '' }, pill(r.status),
          r.code ? h('span', { class: 'mono small' }, ` ${r.code}`) : null),
        h('td', {}, shortHash(r.blake3_before)),
        h('td', {}, shortHash(r.blake3_after)))))));
    }
    if (kind === 'plan' && Array.isArray(out.ops)) {
      return h('p', { class: 'small' }, `Planned ${out.ops.length} operation`
        + `${out.ops.length === 1 ? '' : 's'} (shown above).`);
    }
    if (out.code) {
      return h('p', { class: 'job-error small' }, h('span', { class: 'error-code mono' }, out.code),
        ' ', out.message || '', out.path ? h('span', { class: 'mono' }, ` (${out.path})`) : null);
    }
    const text = JSON.stringify(out, null, 2);
    return h('pre', {}, text.length > 4000 ? `${text.slice(0, 4000)}\n…` : text);
  }

  function showTrail(trace) {
    closeProposal();
    showFilters({ trace_id: trace });
    applyFilters();
  }

  /** The export needs the bearer header, so it is fetched and saved from a Blob. */
  async function downloadTrail(trace, format) {
    let text;
    try {
      text = await api(`/api/audit/export${query({ trace_id: trace, format })}`, { text: true });
    } catch (err) {
      showError(err, 'Downloading the audit trail');
      return;
    }
    const blob = new Blob([text], { type: format === 'csv' ? 'text/csv'
      : 'application/x-ndjson' });
    const url = URL.createObjectURL(blob);
    const safe = trace.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 80);
    const a = h('a', { href: url, download: `logline-audit-${safe}.${format}`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  }

  // --- span detail ---------------------------------------------------------------------------
  const ID_FIELDS = new Set(['id', 'trace_id']);
  const NAME_FIELDS = new Set(['owner_id', 'tenant_id']);
  const HASH_FIELDS = new Set(['prev_hash', 'curr_hash', 'signature', 'public_key']);
  const LINK_FIELDS = new Set(['parent_id']);

  function openDetail(id, seq, refresh) {
    state.detail = { id, seq: seq ?? null };
    $('drawer').hidden = false;
    $('drawer-backdrop').hidden = false;
    $('drawer').dataset.spanId = id;
    if (!refresh) {
      $('detail-title').textContent = 'Loading…';
      clear($('detail-kicker'));
      clear($('detail-id'));
      clear($('detail-fields'));
      clear($('detail-versions'));
      clear($('detail-record'));
    }
    const verify = $('detail-verify');
    verify.dataset.ok = 'pending';
    clear(verify);
    verify.append('checking…');
    const token = state.detail;
    Promise.all([api(`/api/spans/${encodeURIComponent(id)}?all=1`),
      api(`/api/verify/${encodeURIComponent(id)}`).catch((err) => err)])
      .then(([versions, verification]) => {
        if (state.detail !== token) return;
        renderDetail(versions.items, seq);
        renderVerification(verification);
      })
      .catch((err) => {
        if (state.detail !== token) return;
        $('detail-title').textContent = 'Not available';
        verify.dataset.ok = 'false';
        clear(verify);
        verify.append(errorBox(err));
      });
  }

  function closeDetail() {
    state.detail = null;
    $('drawer').hidden = true;
    $('drawer-backdrop').hidden = !state.proposal;
  }

  function renderDetail(versions, seq) {
    const head = versions[versions.length - 1];
    const chosen = versions.find((v) => v.seq === seq) || head;
    const kicker = $('detail-kicker');
    clear(kicker);
    kicker.append(...[typeBadge(head.entity_type), head.status ? pill(head.status) : null,
      h('span', { class: 'muted small' }, head.visibility)].filter(Boolean));
    setText($('detail-title'), head.name || head.this);
    renderRecord(head);
    const idBox = $('detail-id');
    clear(idBox);
    idBox.append(idEl(head.id, { short: false, label: 'span id' }));
    const list = $('detail-versions');
    clear(list);
    for (const v of versions.slice().reverse()) {
      list.append(h('li', { class: 'version', 'data-seq': v.seq,
        'aria-current': String(v.seq === chosen.seq), tabindex: '0',
        onclick: () => showVersion(versions, v.seq),
        onkeydown: (ev) => { if (ev.key === 'Enter') showVersion(versions, v.seq); } },
      h('span', { class: 'seq' }, `v${v.seq}`),
      h('span', { class: 'vmeta' }, pill(v.status), h('span', {}, v.did || ''),
        v.seq === head.seq ? h('span', { class: 'muted small' }, 'latest') : null),
      timeEl(v.at)));
    }
    renderFields(chosen);
  }

  function showVersion(versions, seq) {
    state.detail.seq = seq;
    for (const li of $('detail-versions').children) {
      li.setAttribute('aria-current', String(Number(li.dataset.seq) === seq));
    }
    renderFields(versions.find((v) => v.seq === seq));
  }

  function renderFields(span) {
    $('detail-seq').textContent = `· v${span.seq}`;
    const dl = $('detail-fields');
    clear(dl);
    const unset = [];
    for (const [key, value] of Object.entries(span)) {
      if (value === null || value === undefined) unset.push(key);
      else dl.append(h('dt', {}, key), fieldValue(key, value));
    }
    if (unset.length) {
      dl.append(h('dt', {}, 'unset'), h('dd', { class: 'null mono' }, unset.join(', ')));
    }
  }

  function fieldValue(key, value) {
    if (value === null || value === undefined) return h('dd', { class: 'null' }, '—');
    if (key === 'at') return h('dd', {}, timeEl(value), h('span', { class: 'muted small' }, `  ${utc(value)}`));
    if (key === 'status') return h('dd', {}, pill(value));
    if (key === 'entity_type') return h('dd', {}, typeBadge(value));
    if (key === 'duration_ms') return h('dd', {}, duration(value));
    if (LINK_FIELDS.has(key)) return h('dd', {}, spanLink(value));
    if (key === 'trace_id') return h('dd', {}, traceField(String(value)));
    if (key === 'related_to' && Array.isArray(value)) {
      return h('dd', {}, value.map((id) => h('div', {}, spanLink(id))));
    }
    if (ID_FIELDS.has(key) || NAME_FIELDS.has(key) || HASH_FIELDS.has(key)) {
      const shape = HASH_FIELDS.has(key) ? 'hex' : NAME_FIELDS.has(key) ? 'name' : 'uuid';
      return h('dd', {}, idEl(String(value), { short: false, label: key, shape }));
    }
    if (key === 'code' || typeof value === 'object') {
      const text = typeof value === 'string' ? value : JSON.stringify(value, null, 2);
      return h('dd', {}, h('pre', {}, text));
    }
    return h('dd', {}, String(value));
  }

  /** A trace id in the drawer: copyable when well formed, and a way into its trace. */
  function traceField(traceId) {
    if (!traceLinkable(traceId)) return idEl(traceId, { short: false, label: 'trace id' });
    return h('span', { class: 'trace-field' },
      idEl(traceId, { short: false, label: 'trace id', shape: wellFormed(traceId) ? 'uuid' : 'name' }),
      h('button', { class: 'btn btn-sm', type: 'button', id: 'detail-trace',
        onclick: () => { closeDetail(); location.hash = traceHref(traceId); } }, 'Open the trace'));
  }

  function spanLink(id) {
    if (!wellFormed(id)) return unsafeId(id, 'uuid');
    return h('span', { class: 'id' },
      h('button', { class: 'link mono', type: 'button', title: 'open this span',
        onclick: () => openDetail(id) }, id),
      h('button', { class: 'copy', type: 'button', title: 'copy span id',
        'aria-label': 'copy span id', 'data-copy': id, onclick: () => copy(id) }, copyIcon()));
  }

  /** Whose record this is: a verified signature says who signed, not that the platform
   * did; a tenant's span that looks like an approval or an execution is said to be one. */
  function renderRecord(span) {
    const box = $('detail-record');
    const record = recordOf(span);
    const tenant = span.tenant_id === state.me.tenant ? 'your tenant'
      : `tenant ${span.tenant_id}`;
    box.dataset.record = record;
    box.dataset.tenant = span.tenant_id;
    setText(box, {
      platform: `A platform record of ${tenant} (signed by a platform key).`,
      tenant: `Written by ${span.owner_id} of ${tenant}: not a platform record (signed by `
        + 'a key that is not the platform\'s).',
      forged: `Not a record: a span of kind ${span.entity_type} of ${tenant} that no platform `
        + 'key signed (only the platform writes this kind).',
    }[record]);
  }

  function renderVerification(v) {
    const box = $('detail-verify');
    clear(box);
    if (v instanceof Error) {
      box.dataset.ok = 'false';
      box.append(errorBox(v, 'Verification could not run'));
      return;
    }
    box.dataset.ok = String(v.ok);
    box.append(h('div', { class: 'verify-title' }, v.ok ? '✓ Verified' : '✗ Not verified',
      v.reason ? h('span', { class: 'mono' }, v.reason) : null,
      h('span', { class: 'muted small' }, `latest of ${v.versions} version${v.versions === 1 ? '' : 's'}`)));
    const labels = { hash: 'Hash', signature: 'Signature', trusted_key: 'Trusted key',
      chain: 'Chain' };
    const checks = h('div', { class: 'checks' });
    for (const [key, label] of Object.entries(labels)) {
      const ok = Boolean(v.checks[key]);
      checks.append(h('div', { class: 'check', 'data-check': key, 'data-ok': String(ok) },
        h('span', { class: 'check-mark' }, ok ? '✓' : '✗'), label));
    }
    box.append(checks);
    if (v.detail) box.append(h('div', { class: 'verify-detail' }, v.detail));
  }

  // --- health: the tenant's queue and quota; the whole ledger verified ------------------------
  const HEALTH_EVERY_MS = 5000;
  const STUCK_MS = 30000; // queued this long with nothing running: no worker is taking them
  let healthTimer = null;
  let healthLoads = 0;

  async function loadHealth() {
    clearTimeout(healthTimer);
    const seq = ++healthLoads;
    let queue;
    try {
      queue = await api('/api/queue');
    } catch (err) {
      if (seq === healthLoads) showError(err, 'Loading health');
      return;
    }
    if (!state.me || seq !== healthLoads) return;
    renderHealth(queue);
    renderVerifyAccess();
    if (state.view === 'health') healthTimer = setTimeout(loadHealth, HEALTH_EVERY_MS);
  }

  function healthTile(key, label, value, ...sub) {
    return h('div', { class: 'tile', 'data-health': key },
      h('div', { class: 'tile-label' }, label), h('div', { class: 'tile-value' }, value),
      sub.length ? h('div', { class: 'tile-sub' }, ...sub) : null);
  }

  function renderHealth(q) {
    const tiles = $('health-tiles');
    clear(tiles);
    const waited = q.oldest_queued_at ? Date.now() - Date.parse(q.oldest_queued_at) : null;
    const last = q.last_execution;
    tiles.append(
      healthTile('queued', 'Queued', String(q.queued), q.oldest_queued_at
        ? ['oldest scheduled ', timeEl(q.oldest_queued_at)] : 'nothing waiting'),
      healthTile('running', 'Running', String(q.running), 'claimed by a worker now'),
      healthTile('today', `Executions today (${q.day})`,
        `${q.executions_today.toLocaleString('en-US')} / ${q.daily_limit.toLocaleString('en-US')}`,
        h('meter', { min: 0, max: Math.max(1, q.daily_limit), low: 0.8 * q.daily_limit,
          high: 0.95 * q.daily_limit, optimum: 0, value: Math.min(q.executions_today, q.daily_limit),
          title: `${q.remaining} left today` }),
        ` ${q.remaining.toLocaleString('en-US')} left, until 00:00 UTC`),
      healthTile('last', 'Last execution', last ? timeEl(last.at) : '—',
        last ? [pill(last.status), ' ', duration(last.duration_ms), ' ',
          h('button', { class: 'link small', type: 'button', onclick: () => openDetail(last.id) },
            'open')] : 'none yet'));
    tiles.querySelector('[data-health="today"]').dataset.remaining = String(q.remaining);
    const notes = [];
    if (q.remaining === 0) {
      notes.push(['quota', 'The daily quota is used up: new requests are denied '
        + '(QUOTA_EXCEEDED) until 00:00 UTC.']);
    }
    if (q.queued && !q.running && waited !== null && waited > STUCK_MS) {
      notes.push(['stuck', `Requests have waited ${duration(waited)} and no worker is running `
        + 'any: is a worker running (logline worker)?']);
    }
    const box = $('health-note');
    clear(box);
    for (const [kind, text] of notes) box.append(h('div', { 'data-note': kind }, text));
    box.hidden = notes.length === 0;
  }

  function isAdmin() {
    return Boolean(state.me && state.me.roles.includes('admin'));
  }

  function renderVerifyAccess() {
    const button = $('verify-run');
    button.disabled = !isAdmin() || button.dataset.running === 'true';
    button.title = isAdmin() ? 'walks every span of the ledger (at most 10 s)'
      : 'needs the admin role';
  }

  async function runVerify() {
    if (!isAdmin()) return;
    const button = $('verify-run');
    const box = $('verify-result');
    button.dataset.running = 'true';
    button.disabled = true;
    clear(box);
    box.dataset.ok = 'pending';
    box.append(h('div', { class: 'verify-title' }, 'Verifying every span…'));
    box.hidden = false;
    try {
      renderLedgerVerification(await api('/api/verify', { method: 'POST' }));
    } catch (err) {
      if (err.name === 'AbortError' || !state.me) return;
      clear(box);
      box.dataset.ok = 'error';
      box.append(errorBox(err, 'The verification could not run'));
    } finally {
      button.dataset.running = 'false';
      renderVerifyAccess();
    }
  }

  function renderLedgerVerification(r) {
    const box = $('verify-result');
    clear(box);
    box.dataset.ok = String(r.ok);
    box.dataset.failures = String(r.failure_count);
    box.append(
      h('div', { class: 'verify-title' }, r.ok ? '✓ The ledger verifies'
        : `✗ ${r.failure_count} failure${r.failure_count === 1 ? '' : 's'}`),
      h('div', { class: 'verify-stats' },
        h('span', { 'data-stat': 'spans' }, `${r.spans.toLocaleString('en-US')} versions`),
        h('span', { 'data-stat': 'ids' }, `${r.ids.toLocaleString('en-US')} spans`),
        r.tip ? h('span', { 'data-stat': 'tip', 'data-position': r.tip.position },
          `tip at position ${r.tip.position} `, shortHash(r.tip.chain_hash)) : null,
        h('span', { 'data-stat': 'seconds' }, `${r.seconds.toFixed(2)} s`),
        h('span', { class: 'muted' }, `checked ${utc(new Date().toISOString())}`)));
    if (r.failures.length) {
      box.append(h('ol', { class: 'verify-failures', id: 'verify-failures' },
        r.failures.map((f) => h('li', { class: 'verify-failure', 'data-reason': f.reason,
          'data-failure-id': f.id || '' },
        h('span', { class: 'error-code mono' }, f.reason), ' ',
        f.id ? (wellFormed(f.id) ? spanLink(f.id) : h('span', { class: 'mono' }, f.id))
          : h('span', { class: 'muted' }, 'a span you cannot see'),
        f.seq !== null && f.seq !== undefined ? h('span', { class: 'muted small' }, ` v${f.seq}`) : null,
        f.id ? h('div', { class: 'muted small' }, f.detail) : null))));
    }
    if (r.failure_count > r.failures.length) {
      box.append(h('p', { class: 'muted small' }, `The first ${r.failures.length} are listed; `
        + 'run logline verify for all of them.'));
    }
    if (r.not_visible) {
      box.append(h('p', { class: 'muted small', id: 'verify-hidden' }, `${r.not_visible} of `
        + 'them in spans you cannot see (another tenant\'s, or private): counted, not named.'));
    }
  }

  // --- metrics -----------------------------------------------------------------------------
  let metricsTimer = null;
  function scheduleMetrics() {
    clearTimeout(metricsTimer);
    metricsTimer = setTimeout(loadMetrics, 1500);
  }

  const STATUS_COLORS = { complete: '#12b76a', error: '#f04438', denied: '#f79009',
    over_quota: '#fdb022' };
  const EXTRA_COLORS = ['#7a5af8', '#2e90fa', '#ee46bc', '#98a2b3'];

  async function loadMetrics() {
    const days = Number($('metrics-days').value);
    let data;
    try {
      data = await api(`/api/metrics${query({ days })}`);
    } catch (err) {
      showError(err, 'Loading metrics');
      return;
    }
    if (!state.me) return;
    renderMetrics(data.executions, data.days || [], days);
  }

  function dayList(days) {
    const out = [];
    const today = new Date();
    const base = Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate());
    for (let i = days - 1; i >= 0; i--) out.push(new Date(base - i * 86400000).toISOString().slice(0, 10));
    return out;
  }

  /** A y scale of four steps of 1, 2, 2.5 or 5 × 10^n covering `value` (whole steps for
   * counts). */
  function niceScale(value, whole) {
    const raw = Math.max(value, whole ? 1 : 1e-3) / 4;
    const exp = 10 ** Math.floor(Math.log10(raw));
    let step = 10 * exp;
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (m * exp >= raw && !(whole && m === 2.5 && exp < 10)) { step = m * exp; break; }
    }
    if (whole) step = Math.max(1, Math.round(step));
    return step * 4;
  }

  function msTick(v) {
    if (v === 0) return '0';
    if (v < 1000) return `${Number(v.toPrecision(3))} ms`;
    return `${Number((v / 1000).toPrecision(3))} s`;
  }

  /** `rows`: per day and status; `totals`: per day over all statuses (its own avg and p95:
   * a day's p95 is not the highest of its statuses' p95s). */
  function renderMetrics(rows, totals, days) {
    const daysShown = dayList(days);
    const byDay = new Map(daysShown.map((d) => [d, { total: 0, statuses: {}, weighted: 0,
      counted: 0, p95: null, avg: null }]));
    const statuses = new Set();
    let total = 0;
    let complete = 0;
    let weighted = 0;
    let counted = 0;
    let worstP95 = null;
    for (const r of rows) {
      const status = r.status || 'unknown';
      statuses.add(status);
      total += r.count;
      if (status === 'complete') complete += r.count;
      if (r.avg_ms !== null) { weighted += r.avg_ms * r.count; counted += r.count; }
      const day = byDay.get(r.day);
      if (!day) continue;
      day.total += r.count;
      day.statuses[status] = (day.statuses[status] || 0) + r.count;
      if (r.avg_ms !== null) { day.weighted += r.avg_ms * r.count; day.counted += r.count; }
    }
    let latestP95 = null;
    for (const t of totals) {
      const day = byDay.get(t.day);
      if (!day) continue;
      day.avg = t.avg_ms;
      day.p95 = t.p95_ms;
      if (t.p95_ms !== null) {
        latestP95 = t.p95_ms;
        worstP95 = Math.max(worstP95 ?? 0, t.p95_ms);
      }
    }
    const order = [...statuses].sort((a, b) => {
      const rank = (s) => (s in STATUS_COLORS ? Object.keys(STATUS_COLORS).indexOf(s) : 99);
      return rank(a) - rank(b) || a.localeCompare(b);
    });
    const colors = {};
    let extra = 0;
    for (const s of order) colors[s] = STATUS_COLORS[s] || EXTRA_COLORS[extra++ % EXTRA_COLORS.length];

    const tiles = $('metrics-tiles');
    clear(tiles);
    const tile = (label, value, key) => h('div', { class: 'tile', 'data-metric': key },
      h('div', { class: 'tile-label' }, label), h('div', { class: 'tile-value' }, value));
    tiles.append(
      tile(`Executions (${days} d)`, total.toLocaleString('en-US'), 'total'),
      tile('Completed', total ? `${((100 * complete) / total).toFixed(1)} %` : '—', 'success'),
      tile('Average duration', counted ? duration(weighted / counted) : '—', 'avg'),
      tile('p95 duration (worst day)', worstP95 === null ? '—' : duration(worstP95), 'p95'),
      tile('p95 duration (latest day)', latestP95 === null ? '—' : duration(latestP95),
        'p95-latest'));

    const series = daysShown.map((d) => ({ day: d, ...byDay.get(d) }));
    drawStacked($('chart-status'), series, order, colors, days);
    drawLatency($('chart-latency'), series, days);
    metricsTable(series, order, colors);
  }

  /** The numbers behind the charts: each day with executions, newest first. */
  function metricsTable(series, order, colors) {
    const head = $('metrics-head');
    const body = $('metrics-rows');
    clear(head);
    clear(body);
    const swatch = (status) => svg('svg', { width: 10, height: 10, 'aria-hidden': 'true',
      class: 'swatch' }, svg('rect', { width: 10, height: 10, rx: 2.5, fill: colors[status] }));
    head.append(h('tr', {}, h('th', { class: 'col-day' }, 'Day (UTC)'),
      h('th', { class: 'col-num' }, 'Total'),
      order.map((status) => h('th', { class: 'col-num', 'data-status': status },
        swatch(status), ` ${status}`)),
      h('th', { class: 'col-num' }, 'Average'), h('th', { class: 'col-num' }, 'p95')));
    const shown = series.filter((s) => s.total > 0).reverse();
    for (const s of shown) {
      body.append(h('tr', { 'data-day': s.day },
        h('td', {}, s.day), h('td', { class: 'num', 'data-metric': 'total' }, String(s.total)),
        order.map((status) => h('td', { class: 'num', 'data-status': status },
          String(s.statuses[status] || 0))),
        h('td', { class: 'num', 'data-metric': 'avg' }, duration(s.avg)),
        h('td', { class: 'num', 'data-metric': 'p95' }, duration(s.p95))));
    }
    if (!shown.length) {
      body.append(h('tr', {}, h('td', { class: 'empty', colspan: order.length + 4 },
        'No executions in this range.')));
    }
  }

  const W = 1000;
  const H = 260;
  const M = { l: 56, r: 16, t: 12, b: 30 };

  function axisLabel(day) {
    const d = new Date(`${day}T00:00:00Z`);
    return d.toLocaleDateString('en-US', { month: 'short', day: 'numeric', timeZone: 'UTC' });
  }

  function frame(el, series, yMax, yFormat) {
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
    const plotH = H - M.t - M.b;
    const plotW = W - M.l - M.r;
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      const y = M.t + plotH - (plotH * i) / 4;
      root.append(svg('line', { class: i ? 'gridline' : 'axis', x1: M.l, x2: W - M.r, y1: y, y2: y }),
        svg('text', { class: 'tick', x: M.l - 8, y: y + 4, 'text-anchor': 'end' }, yFormat(v)));
    }
    const band = plotW / series.length;
    const every = Math.max(1, Math.ceil(series.length / 10));
    series.forEach((s, i) => {
      if ((series.length - 1 - i) % every) return;
      root.append(svg('text', { class: 'tick', x: M.l + band * (i + 0.5), y: H - 10,
        'text-anchor': 'middle' }, axisLabel(s.day)));
    });
    el.append(root);
    return { root, band, plotH, plotW, y: (v) => M.t + plotH - (plotH * v) / yMax };
  }

  function legend(items) {
    return h('div', { class: 'legend' }, items.map(([label, color, line]) =>
      h('span', { class: 'legend-item' },
        svg('svg', { width: 14, height: 10, 'aria-hidden': 'true' },
          line ? svg('rect', { x: 0, y: 4, width: 14, height: 3, rx: 1.5, fill: color })
            : svg('rect', { x: 2, y: 0, width: 10, height: 10, rx: 2.5, fill: color })),
        label)));
  }

  function emptyChart(el, days) {
    el.append(h('div', { class: 'empty' }, `No executions in the last ${days} days.`));
  }

  function drawStacked(el, series, order, colors, days) {
    clear(el);
    const max = Math.max(0, ...series.map((s) => s.total));
    if (!max) { emptyChart(el, days); return; }
    el.append(legend(order.map((s) => [s, colors[s], false])));
    const yMax = niceScale(max, true);
    const f = frame(el, series, yMax, (v) => v.toLocaleString('en-US'));
    const width = Math.max(2, Math.min(42, f.band * 0.62));
    series.forEach((s, i) => {
      let base = 0;
      const x = M.l + f.band * i + (f.band - width) / 2;
      for (const status of order) {
        const n = s.statuses[status] || 0;
        if (!n) continue;
        const y1 = f.y(base + n);
        const y0 = f.y(base);
        f.root.append(svg('rect', { class: 'bar', x, y: y1, width, height: Math.max(1, y0 - y1),
          fill: colors[status], rx: 2, 'data-day': s.day, 'data-status': status, 'data-count': n },
        svg('title', {}, `${s.day} · ${status}: ${n}`)));
        base += n;
      }
    });
  }

  function drawLatency(el, series, days) {
    clear(el);
    const points = series.map((s) => ({ day: s.day,
      avg: s.avg ?? (s.counted ? s.weighted / s.counted : null), p95: s.p95 }));
    const max = Math.max(0, ...points.map((p) => Math.max(p.avg ?? 0, p.p95 ?? 0)));
    if (!points.some((p) => p.avg !== null || p.p95 !== null)) { emptyChart(el, days); return; }
    const lines = [['average', '#4f46e5', 'avg'], ['p95', '#f79009', 'p95']];
    el.append(legend(lines.map(([label, color]) => [label, color, true])));
    const yMax = niceScale((max || 1) * 1.15, false);
    const f = frame(el, series, yMax, msTick);
    for (const [label, color, key] of lines) {
      let d = '';
      let pen = false;
      points.forEach((p, i) => {
        const v = p[key];
        if (v === null) { pen = false; return; }
        const x = M.l + f.band * (i + 0.5);
        d += `${pen ? 'L' : 'M'}${x.toFixed(1)},${f.y(v).toFixed(1)}`;
        pen = true;
        f.root.append(svg('circle', { cx: x, cy: f.y(v), r: 3.5, fill: '#fff', stroke: color,
          'stroke-width': 2, 'data-series': key, 'data-day': p.day },
        svg('title', {}, `${p.day} · ${label}: ${duration(v)}`)));
      });
      if (d) f.root.insertBefore(svg('path', { class: 'line', d, stroke: color, 'data-series': key }),
        f.root.querySelector('circle'));
    }
  }

  // --- wiring --------------------------------------------------------------------------------
  function wire() {
    $('login-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const token = $('login-key').value.trim();
      const box = $('login-error');
      if (!token) {
        showLogin(new ApiError(0, 'KEY_REQUIRED', 'enter an API key', null));
        return;
      }
      $('login-submit').disabled = true;
      box.hidden = true;
      try {
        await login(token);
      } catch (err) {
        showLogin(err instanceof ApiError ? err : new ApiError(0, 'CONSOLE_ERROR', String(err), null));
      } finally {
        $('login-submit').disabled = false;
      }
    });
    $('logout').addEventListener('click', () => logout(null));
    for (const tab of document.querySelectorAll('.tab')) {
      // The timeline tab returns to the timeline as it was filtered.
      tab.addEventListener('click', () => {
        location.hash = tab.dataset.view === 'timeline' ? state.timeline.hash
          : `#${tab.dataset.view}`;
      });
    }
    window.addEventListener('hashchange', route);
    $('prompts-family').addEventListener('change', () => {
      location.hash = `#prompts/${encodeURIComponent($('prompts-family').value)}`;
    });
    $('prompts-refresh').addEventListener('click', () => loadPrompts(parseHash().arg));
    $('timeline-filters').addEventListener('submit', (ev) => { ev.preventDefault(); applyFilters(); });
    $('filter-clear').addEventListener('click', clearFilters);
    $('filter-range').addEventListener('change', applyRange);
    $('trace-timeline').addEventListener('click', () => {
      if (state.trace) showTrail(state.trace.id);
    });
    $('trace-refresh').addEventListener('click', () => {
      if (state.trace) openTrace(state.trace.id, true);
    });
    $('health-refresh').addEventListener('click', loadHealth);
    $('memory-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      $('memory-note').hidden = true;
      searchMemory();
    });
    $('memory-forget-me').addEventListener('click', () => forgetMemory({ what: 'me' }));
    $('memory-browse').addEventListener('click', () => {
      $('memory-note').hidden = true;
      browseMemory();
    });
    $('memory-more').addEventListener('click', () => browseMemory(true));
    $('memory-export').addEventListener('click', exportMemory);
    $('verify-run').addEventListener('click', runVerify);
    $('timeline-more').addEventListener('click', loadOlder);
    $('functions-refresh').addEventListener('click', loadFunctions);
    $('execute-run').addEventListener('click', runExecute);
    $('execute-cancel').addEventListener('click', closeExecute);
    $('executions-status').addEventListener('change', loadExecutions);
    $('executions-refresh').addEventListener('click', loadExecutions);
    $('metrics-days').addEventListener('change', loadMetrics);
    $('metrics-refresh').addEventListener('click', loadMetrics);
    $('ask-form').addEventListener('submit', (ev) => { ev.preventDefault(); ask(); });
    $('approvals-state').addEventListener('change', loadApprovals);
    $('approvals-refresh').addEventListener('click', loadApprovals);
    $('proposal-close').addEventListener('click', closeProposal);
    $('drawer-close').addEventListener('click', closeDetail);
    $('drawer-backdrop').addEventListener('click', () => { closeDetail(); closeProposal(); });
    document.addEventListener('keydown', (ev) => {
      if (ev.key !== 'Escape') return;
      if (state.detail) closeDetail();
      else if (state.proposal) closeProposal();
    });
    setInterval(refreshTimes, 10000);
  }

  async function boot() {
    wire();
    const saved = sessionStorage.getItem(KEY_STORE);
    if (!saved) {
      showLogin(null);
      return;
    }
    try {
      await login(saved);
    } catch (err) {
      showLogin(err instanceof ApiError ? err : null);
    }
  }

  // Exposed for tests of the pure helpers only (no state, no secrets).
  window.LogLineConsole = Object.freeze({ SseParser, humanBytes, visible, wellFormed,
    duration, traceTree });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
