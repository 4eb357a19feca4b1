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
  const VIEWS = ['timeline', 'approvals', 'functions', 'executions', 'metrics'];

  const state = {
    token: null,
    me: null,
    view: null,
    streams: [],
    timeline: { top: 0, next: null, filters: { entity_type: '', trace_id: '' }, stream: null },
    activity: null,
    functions: new Map(),
    executions: new Map(),
    pending: new Map(), // request id -> result element, for requests started here
    detail: null,
    types: new Set(),
    approvals: new Map(), // proposal id -> { item, card, summary, form, ... } in the inbox
    proposal: null, // the open request detail: { id }
  };

  const $ = (id) => document.getElementById(id);

  // --- text as a person may read it --------------------------------------------------------
  /** Invisible and direction-changing characters: C0 and C1 controls, DEL, soft hyphen,
   * U+061C, U+180E, zero-width and directional marks, line/paragraph separators, bidi
   * embeddings, overrides and isolates, word joiners, BOM, interlinear annotations. The same
   * set as stage0/display.py (a browser test compares them). */
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

  /** What a span is to the platform (as stage0/records.py decides it): `platform` (signed by
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
    state.pending.clear();
    state.types.clear();
    state.approvals.clear();
    clearTimeout(governanceTimer);
    closeProposal();
    sessionStorage.removeItem(KEY_STORE);
    $('filter-entity').value = '';
    $('filter-trace').value = '';
    closeDetail();
    for (const id of ['timeline-rows', 'function-rows', 'execution-rows', 'errors', 'entity-types',
      'metrics-tiles', 'chart-status', 'chart-latency', 'approvals-list', 'approvals-answer',
      'ask-log', 'approvals-flags', 'executions-flags', 'detail-record']) clear($(id));
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
    state.activity = new LiveStream('activity', {}, onActivity);
    state.streams = [state.activity];
    state.activity.start(tip);
    loadFunctions();
    loadExecutions();
    route();
  }

  // --- routing -----------------------------------------------------------------------------
  function route() {
    if (!state.me) return;
    const wanted = location.hash.replace(/^#/, '');
    const view = VIEWS.includes(wanted) ? wanted : 'timeline';
    const first = state.view === null;
    state.view = view;
    for (const section of document.querySelectorAll('section.view')) {
      section.hidden = section.dataset.view !== view;
    }
    for (const tab of document.querySelectorAll('.tab')) {
      tab.setAttribute('aria-selected', String(tab.dataset.view === view));
    }
    document.title = `${view[0].toUpperCase()}${view.slice(1)} · LogLine`;
    if (view === 'timeline' && (first || !state.timeline.stream)) loadTimeline();
    if (view === 'metrics') loadMetrics();
    if (view === 'approvals') loadApprovals();
  }

  // --- timeline ----------------------------------------------------------------------------
  function whatCell(span) {
    return h('div', { class: 'what' },
      authorBadge(span),
      h('span', { class: 'who-name' }, span.who),
      span.did ? h('span', { class: 'did' }, span.did) : null,
      h('span', { class: 'this', title: span.this }, span.this));
  }

  function traceCell(traceId) {
    if (!traceId) return h('span', { class: 'muted' }, '—');
    if (!wellFormed(traceId)) return unsafeId(traceId, 'uuid');
    return h('span', { class: 'id' },
      h('button', { class: 'link id-text', type: 'button', title: `show trace ${traceId}`,
        onclick: (ev) => {
          ev.stopPropagation();
          $('filter-trace').value = traceId;
          applyFilters();
        } }, traceId.length > 16 ? `${traceId.slice(0, 8)}…${traceId.slice(-4)}` : traceId),
      h('button', { class: 'copy', type: 'button', title: 'copy trace id',
        'aria-label': 'copy trace id', 'data-copy': traceId,
        onclick: (ev) => { ev.stopPropagation(); copy(traceId); } },
      copyIcon()));
  }

  function timelineRow(span, fresh) {
    rememberType(span.entity_type);
    return h('tr', { class: `clickable${fresh ? ' fresh' : ''}`, 'data-span-id': span.id,
      'data-seq': span.seq, 'data-position': span.position, 'data-entity-type': span.entity_type,
      'data-record': recordOf(span), 'data-tenant': span.tenant_id,
      onclick: () => openDetail(span.id, span.seq) },
    h('td', {}, timeEl(span.at)),
    h('td', {}, typeBadge(span.entity_type)),
    h('td', {}, whatCell(span)),
    h('td', {}, pill(span.status)),
    h('td', {}, traceCell(span.trace_id)),
    h('td', {}, idEl(span.id, { label: 'span id' })));
  }

  function rememberType(type) {
    if (!type || state.types.has(type)) return;
    state.types.add(type);
    const list = $('entity-types');
    clear(list);
    for (const t of [...state.types].sort()) list.append(h('option', { value: t }));
  }

  async function loadTimeline() {
    const tl = state.timeline;
    if (tl.stream) {
      tl.stream.stop();
      state.streams = state.streams.filter((s) => s !== tl.stream);
      tl.stream = null;
    }
    tl.filters = { entity_type: $('filter-entity').value.trim(),
      trace_id: $('filter-trace').value.trim() };
    const rows = $('timeline-rows');
    clear(rows);
    $('timeline-empty').hidden = true;
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
    $('timeline-empty').hidden = data.items.length > 0;
    const stream = new LiveStream('timeline', tl.filters, onTimelineSpan);
    tl.stream = stream;
    state.streams.push(stream);
    stream.start(tl.top);
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
    const rows = $('timeline-rows');
    rows.prepend(timelineRow(span, true));
    $('timeline-empty').hidden = true;
    while (rows.children.length > MAX_ROWS) rows.lastChild.remove();
    if (state.detail && state.detail.id === span.id) openDetail(span.id, span.seq, true);
  }

  function applyFilters() {
    if (location.hash !== '#timeline') location.hash = '#timeline';
    loadTimeline();
  }

  // --- activity (everything new: feeds functions, executions, pending requests) ---------------
  // The stream says *that* something changed; what the views count comes from the server's
  // views of platform records, never from a span taken at its word.
  function onActivity(span) {
    if (span.entity_type === 'function') scheduleLoad('functions', loadFunctions);
    else if (span.entity_type === 'execution') {
      scheduleLoad('executions', loadExecutions);
      if (state.view === 'metrics') scheduleMetrics();
    } else if (span.entity_type === 'request' && state.pending.has(span.id) &&
               isOwnRecord(span)) {
      updatePending(span);
    }
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

  function showRequest(out) {
    const result = $('execute-result');
    clear(result);
    const status = h('span', { id: 'execute-status' }, pill(out.status));
    const execution = h('span', { id: 'execute-execution', class: 'muted' },
      'waiting for a worker…');
    result.append(
      h('div', { class: 'result-line' }, h('span', {}, 'Request'),
        h('span', { id: 'execute-request-id', 'data-request-id': out.request_id },
          idEl(out.request_id, { short: false, label: 'request id' }))),
      h('div', { class: 'result-line' }, h('span', {}, 'Status'), status),
      h('div', { class: 'result-line' }, h('span', {}, 'Trace'), traceCell(out.trace_id)),
      h('div', { class: 'result-line' }, h('span', {}, 'Execution'), execution),
      h('div', { class: 'result-line' }, h('span', {}, ''),
        h('button', { class: 'link', type: 'button', onclick: () => openDetail(out.request_id) },
          'Open the request')));
    result.hidden = false;
    state.pending.set(out.request_id, { status, execution });
  }

  function updatePending(span) {
    const pending = state.pending.get(span.id);
    clear(pending.status);
    pending.status.append(pill(span.status));
    const executionId = span.metadata && span.metadata.execution_id;
    if (executionId) {
      clear(pending.execution);
      pending.execution.classList.remove('muted');
      pending.execution.append(h('button', { class: 'link mono', type: 'button',
        onclick: () => openDetail(executionId) }, executionId));
    } else if (tone(span.status) === 'bad') {
      clear(pending.execution);
      pending.execution.append((span.error && span.error.message) || span.status);
    }
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
    h('td', {}, traceCell(span.trace_id)),
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
    return h('div', { class: 'plan' },
      h('table', { class: 'grid plan-table' },
        h('caption', { class: 'sr-only' }, 'What the agent will do'),
        h('thead', {}, h('tr', {}, h('th', { class: 'col-op', scope: 'col' }, 'Operation'),
          h('th', { scope: 'col' }, 'Path'), h('th', { scope: 'col' }, 'Destination'),
          h('th', { class: 'col-size', scope: 'col' }, 'Size'))),
        h('tbody', {}, plan.map((op) => h('tr', { class: 'plan-op', 'data-op': op.op,
          'data-path': op.path, 'data-size': Number.isInteger(op.size) ? op.size : '' },
        h('td', {}, h('span', { class: 'op', 'data-op': op.op }, op.op)),
        h('td', {}, h('span', { class: 'mono', title: op.path }, op.path)),
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
    $('filter-entity').value = '';
    $('filter-trace').value = trace;
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
    renderMetrics(data.executions, days);
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

  function renderMetrics(rows, days) {
    const daysShown = dayList(days);
    const byDay = new Map(daysShown.map((d) => [d, { total: 0, statuses: {}, weighted: 0,
      counted: 0, p95: null }]));
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
      if (r.p95_ms !== null) worstP95 = Math.max(worstP95 ?? 0, r.p95_ms);
      const day = byDay.get(r.day);
      if (!day) continue;
      day.total += r.count;
      day.statuses[status] = (day.statuses[status] || 0) + r.count;
      if (r.avg_ms !== null) { day.weighted += r.avg_ms * r.count; day.counted += r.count; }
      if (r.p95_ms !== null) day.p95 = Math.max(day.p95 ?? 0, r.p95_ms);
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
      tile('p95 duration (worst day)', worstP95 === null ? '—' : duration(worstP95), 'p95'));

    const series = daysShown.map((d) => ({ day: d, ...byDay.get(d) }));
    drawStacked($('chart-status'), series, order, colors, days);
    drawLatency($('chart-latency'), series, days);
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
    const points = series.map((s) => ({ day: s.day, avg: s.counted ? s.weighted / s.counted : null,
      p95: s.p95 }));
    const max = Math.max(0, ...points.map((p) => Math.max(p.avg ?? 0, p.p95 ?? 0)));
    if (!points.some((p) => p.avg !== null || p.p95 !== null)) { emptyChart(el, days); return; }
    const lines = [['average', '#4f46e5', 'avg'], ['p95 (highest status)', '#f79009', 'p95']];
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
      tab.addEventListener('click', () => { location.hash = `#${tab.dataset.view}`; });
    }
    window.addEventListener('hashchange', route);
    $('timeline-filters').addEventListener('submit', (ev) => { ev.preventDefault(); applyFilters(); });
    $('filter-clear').addEventListener('click', () => {
      $('filter-entity').value = '';
      $('filter-trace').value = '';
      applyFilters();
    });
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
  window.LogLineConsole = Object.freeze({ SseParser, humanBytes, visible, wellFormed });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
