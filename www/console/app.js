/*
 * p11escrow console: one page, hash routes, the JSON API only (docs/console.md).
 *
 * Rules:
 * - Every value from the service (a certificate's subject, a reason, an audit
 *   detail) enters the page as text (el() makes text nodes; no innerHTML,
 *   insertAdjacentHTML, document.write or eval anywhere).
 * - The session is the HttpOnly cookie the service sets at login; this script
 *   never sees it.  It keeps only the session's CSRF token, in a variable, and
 *   sends it as X-CSRF-Token with every state-changing call.
 * - The console shows what the API allows: every rule is the service's, and
 *   its refusals are shown as it words them.
 */
'use strict';

(function () {
  const API = '/api/v1';
  const state = { csrf: null, name: null, roles: [] };
  const view = document.getElementById('view');
  const statusLine = document.getElementById('status');

  /* ---- DOM helpers: text only --------------------------------------------------------------------------- */

  /* el('tag', {attr: value, onclick: fn}, child...): strings and numbers become text nodes. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else if (k === 'text') e.textContent = String(v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function show(title, ...nodes) {
    view.replaceChildren(el('h1', { id: 'page-title' }, title), ...nodes);
    document.title = title + ' — p11escrow console';
  }

  function say(text, kind) {
    statusLine.textContent = text || '';
    statusLine.className = text ? 'msg' + (kind ? ' ' + kind : '') : '';
  }

  function field(label, input) {
    const id = input.id || 'f-' + Math.random().toString(36).slice(2);
    input.id = id;
    return el('div', { class: 'field' }, el('label', { for: id }, label), input);
  }

  function table(caption, headers, rows) {
    return el('div', { class: 'table-wrap' },
      el('table', {},
        el('caption', { class: 'visually-hidden' }, caption),
        el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: headers.length }, 'None.')))));
  }

  function cell(v, cls) {
    return el('td', { class: cls || null }, v instanceof Node ? v : v === null || v === undefined ? '' : String(v));
  }

  function tag(text, kind) {
    return el('span', { class: 'tag ' + (kind || '') }, text);
  }

  const has = (...roles) => roles.some((r) => state.roles.includes(r));

  /* ---- the API -------------------------------------------------------------------------------------------- */

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({ 'X-Requested-With': 'p11escrow-console', Accept: 'application/json' },
      extraHeaders || {});
    if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(API + path, {
        method, headers, credentials: 'same-origin', cache: 'no-store', redirect: 'error',
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (e) {
      throw new ApiError(0, 'the service cannot be reached', 'network');
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const msg = data && typeof data.error === 'string' ? data.error : 'HTTP ' + res.status;
      const err = new ApiError(res.status, msg, data && data.code);
      if (res.status === 401 && path !== '/session') {
        loggedOut('Your session has ended: log in again.');
        err.handled = true;
      }
      throw err;
    }
    return data;
  }

  const q = (params) => {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v) u.set(k, v);
    const s = u.toString();
    return s ? '?' + s : '';
  };

  /* Run an action, showing its error (the service's words) in the status line. */
  async function attempt(fn) {
    try {
      await fn();
    } catch (e) {
      if (e instanceof ApiError) {
        if (!e.handled) say(e.message + (e.code ? ' (' + e.code + ')' : ''), 'error');
      } else {
        say('error: ' + e.message, 'error');
      }
    }
  }

  /* ---- session -------------------------------------------------------------------------------------------- */

  function setUser(info) {
    state.name = info.name;
    state.roles = Array.isArray(info.roles) ? info.roles : [];
    if (info.csrf) state.csrf = info.csrf;
    document.getElementById('who-name').textContent = info.name + ' (' + state.roles.join(', ') + ')';
    document.getElementById('who').hidden = false;
    const nav = document.getElementById('nav');
    for (const li of nav.querySelectorAll('li')) {
      const want = li.dataset.roles;
      li.hidden = want ? !want.split(' ').some((r) => state.roles.includes(r)) : false;
    }
    nav.hidden = false;
  }

  function loggedOut(message) {
    state.csrf = null;
    state.name = null;
    state.roles = [];
    document.getElementById('who').hidden = true;
    document.getElementById('nav').hidden = true;
    if (location.hash !== '#/login') location.hash = '#/login';
    if (message) say(message);
  }

  /* UTF-8 name:password as base64, for the one Basic login. */
  function basic(name, password) {
    const bytes = new TextEncoder().encode(name + ':' + password);
    let bin = '';
    for (const b of bytes) bin += String.fromCharCode(b);
    return 'Basic ' + btoa(bin);
  }

  function pageLogin() {
    const name = el('input', { type: 'text', autocomplete: 'username', required: true, autocapitalize: 'none',
      spellcheck: 'false' });
    const password = el('input', { type: 'password', autocomplete: 'current-password', required: true });
    const form = el('form', { class: 'stack', id: 'login-form' },
      field('Account', name), field('Password', password),
      el('div', {}, el('button', { type: 'submit' }, 'Log in')));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      attempt(async () => {
        let info;
        try {
          info = await api('POST', '/session', { mode: 'cookie' }, { Authorization: basic(name.value, password.value) });
        } finally {
          password.value = '';
        }
        setUser(info);
        say('Logged in as ' + info.name + '.', 'ok');
        location.hash = has('cert-manager', 'auditor', 'admin') ? '#/search' : '#/requests';
      });
    });
    const certLogin = el('button', { type: 'button', class: 'secondary', id: 'cert-login' },
      'Log in with my client certificate');
    certLogin.addEventListener('click', () => attempt(async () => {
      const info = await api('POST', '/session', { mode: 'cookie' });
      setUser(info);
      say('Logged in as ' + info.name + ' with a client certificate.', 'ok');
      location.hash = '#/requests';
    }));
    show('Log in', form,
      el('p', {}, 'Or, where your account has a client certificate bound to it and your browser offers it:'),
      certLogin);
    name.focus();
  }

  async function logout() {
    await attempt(async () => {
      await api('DELETE', '/session');
    });
    loggedOut('Logged out.');
  }

  /* ---- pages ---------------------------------------------------------------------------------------------- */

  function recordLink(r) {
    return el('a', { href: '#/record/' + encodeURIComponent(r.serial) + '/' + encodeURIComponent(r.id) },
      r.subject || r.id);
  }

  function recordRows(records) {
    return records.map((r) => el('tr', {},
      cell(recordLink(r)), cell(r.serial, 'mono'), cell(r.email), cell(r.issuer), cell(r.created),
      cell(r.tampered ? tag('altered', 'bad') : tag('intact', 'good'))));
  }

  function pageSearch(params) {
    const serial = el('input', { type: 'text', name: 'serial', value: params.get('serial') || '', spellcheck: 'false' });
    const subject = el('input', { type: 'text', name: 'subject', value: params.get('subject') || '' });
    const email = el('input', { type: 'email', name: 'email', value: params.get('email') || '' });
    const results = el('section', { 'aria-labelledby': 'results-title' });
    const form = el('form', { class: 'inline', id: 'search-form', role: 'search' },
      field('Certificate serial (hex)', serial), field('Subject contains', subject), field('Email', email),
      el('button', { type: 'submit' }, 'Search'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      location.hash = '#/search' + q({ serial: serial.value.trim(), subject: subject.value.trim(),
        email: email.value.trim() });
    });
    show('Search archived keys', form, results);
    if (params.toString() === '') return;
    attempt(async () => {
      const data = await api('GET', '/records' + q({ serial: params.get('serial'), subject: params.get('subject'),
        email: params.get('email') }));
      results.replaceChildren(el('h2', { id: 'results-title' }, data.records.length + ' record(s)'),
        table('Archived keys', ['Subject', 'Serial', 'Email', 'Issuer', 'Archived', 'Integrity'],
          recordRows(data.records)));
    });
  }

  function stateTag(s) {
    const kind = { completed: 'good', released: 'good', denied: 'bad', cancelled: 'bad', expired: 'bad' }[s];
    return tag(s, kind || 'warn');
  }

  function requestRows(list) {
    return list.map((x) => el('tr', {},
      cell(el('a', { href: '#/recovery/' + x.id }, 'Request ' + x.id)), cell(stateTag(x.state)),
      cell(x.subject), cell(x.serial, 'mono'), cell(x.requester), cell(x.kra),
      cell(x.approvals + ' of ' + x.approvals_required), cell(x.reason), cell(x.created)));
  }
  const requestHeaders = ['Request', 'State', 'Subject', 'Serial', 'Requester', 'KRA', 'Approvals', 'Reason', 'Filed'];

  function pageRecord(serial, id) {
    show('Archived key');
    attempt(async () => {
      const data = await api('GET', '/records' + q({ serial }));
      const r = data.records.find((x) => x.id === id);
      if (!r) throw new ApiError(404, 'no record ' + id + ' with serial ' + serial);
      const details = el('dl', { class: 'details', id: 'record-details' },
        el('dt', {}, 'Subject'), el('dd', { id: 'record-subject' }, r.subject),
        el('dt', {}, 'Serial'), el('dd', { class: 'mono' }, r.serial),
        el('dt', {}, 'Email'), el('dd', {}, r.email),
        el('dt', {}, 'Issuer'), el('dd', {}, r.issuer),
        el('dt', {}, 'Issued by'), el('dd', {}, r.foreign ? 'another CA (imported)' : 'this CA'),
        el('dt', {}, 'Archived'), el('dd', {}, r.created),
        el('dt', {}, 'KRAs'), el('dd', {}, (r.kras || []).join(', ')),
        el('dt', {}, 'Record'), el('dd', { class: 'mono' }, r.id),
        el('dt', {}, 'Integrity'), el('dd', {}, r.tampered
          ? tag('altered in the database: every recovery step refuses it', 'bad') : tag('intact', 'good')));
      const all = await api('GET', '/recoveries');
      const history = all.recoveries.filter((x) => x.record === r.id);
      const nodes = [details];
      if (has('cert-manager')) {
        nodes.push(el('p', {}, el('a', { href: '#/request/' + encodeURIComponent(r.serial) + '/' +
          encodeURIComponent(r.id), id: 'file-request' }, 'Request recovery of this key')));
      }
      nodes.push(el('h2', {}, 'Recovery history'), table('Recovery requests of this key', requestHeaders,
        requestRows(history)));
      show('Archived key: ' + (r.subject || r.id), ...nodes);
    });
  }

  function pageRequestNew(serial, id) {
    show('Request recovery');
    attempt(async () => {
      const data = await api('GET', '/records' + q({ serial }));
      const r = data.records.find((x) => x.id === id);
      if (!r) throw new ApiError(404, 'no record ' + id + ' with serial ' + serial);
      const kras = await api('GET', '/kras');
      const usable = new Map(kras.kras.map((k) => [k.name, k]));
      const kra = el('select', { id: 'request-kra', required: true },
        (r.kras || []).map((n) => {
          const k = usable.get(n);
          const note = k ? ' (' + k.state + (k.expired ? ', certificate expired' : '') + ')' : '';
          return el('option', { value: n }, n + note);
        }));
      const reason = el('textarea', { id: 'request-reason', required: true, minlength: 3, maxlength: 1000 });
      const form = el('form', { class: 'stack', id: 'request-form' },
        el('p', {}, 'Key of ', el('strong', {}, r.subject), ', serial ', el('span', { class: 'mono' }, r.serial), '.'),
        field('KRA to recover with', kra), field('Reason (3 to 1000 characters; kept in the audit trail)', reason),
        el('div', {}, el('button', { type: 'submit' }, 'File the request')));
      form.addEventListener('submit', (ev) => {
        ev.preventDefault();
        attempt(async () => {
          const made = await api('POST', '/recoveries', { record: r.id, kra: kra.value, reason: reason.value });
          say('Recovery request ' + made.id + ' filed (' + made.state + ').' +
            (made.release_error ? ' The release failed: ' + made.release_error : ''), made.release_error ? 'error' : 'ok');
          location.hash = '#/recovery/' + made.id;
        });
      });
      show('Request recovery', form);
      reason.focus();
    });
  }

  const STEPS = ['pending', 'approved', 'released', 'completed'];

  function progress(x) {
    const ended = !STEPS.includes(x.state);
    const at = ended ? -1 : STEPS.indexOf(x.state);
    const items = STEPS.map((s, i) => el('li', {
      class: i < at ? 'done' : null, 'aria-current': i === at ? 'step' : null,
    }, s));
    if (ended) items.push(el('li', { class: 'ended', 'aria-current': 'step' }, x.state));
    return el('ol', { class: 'progress', id: 'progress', 'aria-label': 'Progress of the request' }, items);
  }

  function pageRecovery(id) {
    show('Recovery request ' + id);
    attempt(async () => {
      const x = await api('GET', '/recoveries/' + id);
      const details = el('dl', { class: 'details', id: 'recovery-details' },
        el('dt', {}, 'State'), el('dd', { id: 'recovery-state' }, x.state),
        el('dt', {}, 'Key of'), el('dd', {}, el('a', { href: '#/record/' + encodeURIComponent(x.serial) + '/' +
          encodeURIComponent(x.record) }, x.subject)),
        el('dt', {}, 'Serial'), el('dd', { class: 'mono' }, x.serial),
        el('dt', {}, 'Requester'), el('dd', {}, x.requester),
        el('dt', {}, 'KRA'), el('dd', {}, x.kra),
        el('dt', {}, 'Reason'), el('dd', { id: 'recovery-reason' }, x.reason),
        el('dt', {}, 'Approvals'), el('dd', { id: 'recovery-approvals' }, x.approvals + ' of ' + x.approvals_required),
        el('dt', {}, 'Filed'), el('dd', {}, x.created),
        el('dt', {}, 'Integrity'), el('dd', {}, x.tampered ? tag('record altered', 'bad') : tag('intact', 'good')));
      const nodes = [progress(x), details];
      const actions = el('div', { class: 'actions' });
      if (x.state === 'pending' && has('cert-manager') && x.requester !== state.name) {
        actions.appendChild(el('button', { type: 'button', id: 'approve', onclick: () => act(id, 'approve') },
          'Approve'));
      }
      if ((x.state === 'pending' || x.state === 'approved') && has('cert-manager', 'admin') &&
          (x.requester !== state.name || has('admin'))) {
        actions.appendChild(reasonAction(id, 'deny', 'Deny'));
      }
      if (['pending', 'approved', 'released'].includes(x.state) && (x.requester === state.name || has('admin'))) {
        actions.appendChild(reasonAction(id, 'cancel', 'Cancel the request'));
      }
      if (actions.childNodes.length) nodes.push(actions);
      if (x.state === 'released') {
        nodes.push(el('p', { class: 'msg' }, 'Released to KRA ', el('strong', {}, x.kra),
          '. The KRA completes it with the card, at the workstation: ',
          el('code', {}, 'p11escrow recovery complete ' + x.id + ' --server URL --token URI --out FILE')));
      }
      nodes.push(el('p', {}, el('button', { type: 'button', class: 'secondary', id: 'refresh',
        onclick: () => route() }, 'Refresh')));
      show('Recovery request ' + id, ...nodes);
    });
  }

  function reasonAction(id, verb, label) {
    const reason = el('input', { type: 'text', id: verb + '-reason', required: true, minlength: 3, maxlength: 1000 });
    const form = el('form', { class: 'inline', id: verb + '-form' }, field('Reason to ' + verb, reason),
      el('button', { type: 'submit', class: 'danger', id: verb }, label));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      act(id, verb, { reason: reason.value });
    });
    return form;
  }

  function act(id, verb, body) {
    attempt(async () => {
      const x = await api('POST', '/recoveries/' + id + '/' + verb, body);
      say('Request ' + id + ': ' + verb + ' done; it is now ' + (x.state || 'updated') + '.' +
        (x.release_error ? ' The release failed: ' + x.release_error : ''), x.release_error ? 'error' : 'ok');
      route();
    });
  }

  function pageApprovals() {
    show('My approvals');
    attempt(async () => {
      const data = await api('GET', '/recoveries' + q({ state: 'pending' }));
      const mine = data.recoveries.filter((x) => x.requester !== state.name);
      const rows = mine.map((x) => el('tr', {},
        cell(el('a', { href: '#/recovery/' + x.id }, 'Request ' + x.id)), cell(x.subject), cell(x.serial, 'mono'),
        cell(x.requester), cell(x.reason), cell(x.approvals + ' of ' + x.approvals_required),
        cell(el('button', { type: 'button', 'data-approve': x.id, onclick: () => act(x.id, 'approve') },
          'Approve request ' + x.id))));
      show('My approvals',
        el('p', {}, 'Pending requests filed by others. Open one to deny it with a reason.'),
        table('Pending requests', ['Request', 'Subject', 'Serial', 'Requester', 'Reason', 'Approvals', 'Action'], rows));
    });
  }

  function pageRequests(params) {
    const sel = el('select', { id: 'state-filter' }, ['', 'pending', 'approved', 'released', 'completed', 'denied',
      'cancelled', 'expired'].map((s) => el('option', { value: s, selected: (params.get('state') || '') === s }, s || 'any')));
    const form = el('form', { class: 'inline' }, field('State', sel), el('button', { type: 'submit' }, 'Show'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      location.hash = '#/requests' + q({ state: sel.value });
    });
    show('Recovery requests', form);
    attempt(async () => {
      const data = await api('GET', '/recoveries' + q({ state: params.get('state') }));
      show('Recovery requests', form, table('Recovery requests', requestHeaders, requestRows(data.recoveries)));
    });
  }

  function pageAudit(params) {
    const names = ['since', 'until', 'actor', 'action', 'object', 'serial', 'limit'];
    const inputs = {};
    for (const n of names) {
      inputs[n] = el('input', { type: 'text', name: n, value: params.get(n) || '', spellcheck: 'false',
        placeholder: n === 'since' || n === 'until' ? '2026-12-05 10:00' : n === 'limit' ? '1000' : null });
    }
    const form = el('form', { class: 'inline', id: 'audit-form' },
      names.map((n) => field(n[0].toUpperCase() + n.slice(1), inputs[n])), el('button', { type: 'submit' }, 'Filter'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = {};
      for (const n of names) p[n] = inputs[n].value.trim();
      location.hash = '#/audit' + q(p);
    });
    const chain = el('section', { id: 'chain', 'aria-labelledby': 'chain-title' },
      el('h2', { id: 'chain-title' }, 'Chain'), el('p', {}, 'Verifying…'));
    const events = el('section', { 'aria-labelledby': 'events-title' });
    show('Audit trail', chain, el('h2', {}, 'Events'), form, events);
    attempt(async () => {
      const p = {};
      for (const n of names) p[n] = params.get(n);
      const data = await api('GET', '/audit' + q(p));
      events.replaceChildren(el('p', { id: 'events-title' }, data.events.length + ' event(s), oldest first'),
        table('Audit events', ['#', 'Time', 'Actor', 'Role', 'Action', 'Object', 'Outcome', 'Details'],
          data.events.map((e) => el('tr', {}, cell(e.id), cell(e.time), cell(e.actor), cell(e.role), cell(e.action),
            cell(e.object), cell(e.outcome === 'ok' ? tag('ok', 'good') : tag(e.outcome, 'bad')), cell(e.details)))));
    });
    attempt(async () => {
      const v = await api('GET', '/audit/verify');
      const cps = await api('GET', '/audit' + q({ action: 'audit.checkpoint', limit: '10000' }));
      const newest = cps.events.filter((e) => e.outcome === 'ok').pop();
      chain.replaceChildren(el('h2', { id: 'chain-title' }, 'Chain'),
        el('dl', { class: 'details' },
          el('dt', {}, 'Verification'), el('dd', { id: 'chain-status' }, v.intact
            ? tag('intact: every event and checkpoint verified', 'good')
            : tag('BROKEN at event ' + v.first_bad + ': ' + v.problem, 'bad')),
          el('dt', {}, 'Events'), el('dd', {}, v.events),
          el('dt', {}, 'Checkpoints'), el('dd', {}, v.checkpoints),
          el('dt', {}, 'Newest signed event'), el('dd', {}, v.last_signed || 'none'),
          el('dt', {}, 'Newest checkpoint'), el('dd', { id: 'newest-checkpoint' }, newest
            ? newest.time + ': signs ' + newest.object + ' (recorded as event ' + newest.id + ')' : 'none yet')));
    });
  }

  function pageAdmin() {
    show('Policy and accounts');
    attempt(async () => {
      const pol = await api('GET', '/policy');
      const acc = await api('GET', '/accounts');
      show('Policy and accounts',
        el('p', {}, 'Read only here: change them with p11escrow policy set and p11escrow account.'),
        el('h2', {}, 'Policy'),
        table('Policy', ['Key', 'Value', 'Set by', 'Set at'], pol.policy.map((p) => el('tr', {},
          cell(p.key, 'mono'), cell(p.value, 'mono'), cell(p.updated_by === null ? 'default' : p.updated_by),
          cell(p.updated_at)))),
        el('h2', {}, 'Accounts'),
        table('Accounts', ['Name', 'Roles', 'KRA', 'State', 'Scope'], acc.accounts.map((a) => el('tr', {},
          cell(a.name), cell((a.roles || []).join(', ')), cell(a.kra), cell(a.disabled ? tag('disabled', 'bad') : 'enabled'),
          cell(Array.isArray(a.scope) ? a.scope.join(', ') : a.scope)))));
    });
  }

  /* ---- routing -------------------------------------------------------------------------------------------- */

  function markNav(path) {
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.getAttribute('href') === '#' + path) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  function route() {
    const h = location.hash.replace(/^#/, '') || '/';
    const [path, query] = h.split('?');
    const params = new URLSearchParams(query || '');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    markNav('/' + (parts[0] || ''));
    if (!state.name && parts[0] !== 'login') {
      location.hash = '#/login';
      return;
    }
    switch (parts[0]) {
      case 'login': return pageLogin();
      case 'search': return pageSearch(params);
      case 'record': return pageRecord(parts[1], parts[2]);
      case 'request': return pageRequestNew(parts[1], parts[2]);
      case 'recovery': return /^[1-9][0-9]{0,17}$/.test(parts[1] || '') ? pageRecovery(parts[1]) : pageRequests(params);
      case 'approvals': return pageApprovals();
      case 'requests': return pageRequests(params);
      case 'audit': return pageAudit(params);
      case 'admin': return pageAdmin();
      default:
        location.hash = has('cert-manager', 'auditor', 'admin') ? '#/search' : '#/requests';
    }
  }

  /* A new page: the focus goes to its content (a page may move it on, e.g. to its first field). */
  window.addEventListener('hashchange', () => {
    say('');
    document.getElementById('main').focus();
    route();
  });
  document.getElementById('logout').addEventListener('click', logout);

  /* A reload: the cookie may still hold a session (GET /session gives its CSRF token again). */
  (async function start() {
    try {
      setUser(await api('GET', '/session'));
    } catch (e) {
      state.name = null;
    }
    route();
  })();
})();
